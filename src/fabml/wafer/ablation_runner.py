"""``fabml wafer ablation``: one training run per combination of augmentation presets and a settings grid,
each evaluated the same way, in one table.

Two kinds of axis, combined: ``presets`` (the on/off switches of :meth:`fabml.wafer.augment.AugmentConfig.preset`,
the seed's augmentation ablation) and ``axes`` (any setting, :mod:`fabml.config_grid`: ``--grid data.size=32,64
--grid model.attention=false,true``). Runs are trained and evaluated one after the other in this process (the
wafer trainer holds no state between runs); every run is selected on ``val_data`` when it is given and measured
on ``test``, so choose a setting on a validation set passed as ``test``, never on the split you report.
Writes ``OUT/<run>/`` (a preset's name when the presets are the only axis, else ``run_00``, ``run_01``...) and
``OUT/ablation.{json,md}``: per run its settings, every metric of ``fabml wafer evaluate`` for the encoder
(raw and, with ``eval.tta_d4``, D4-averaged) and the training time and throughput.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from fabml.config_grid import Axes, grid_configs, settings_label
from fabml.wafer.augment import AugmentConfig
from fabml.wafer.config import WaferConfig
from fabml.wafer.evaluation import metrics_markdown

AUGMENT_OPS = ("d4", "crop", "rotate", "die_noise", "erase")
DEFAULT_PRESETS = ("d4", "d4_crop", "d4_crop_noise", "full")
"""The presets run when neither presets nor a grid are given (the seed's augmentation ablation)."""
TABLE_KEYS = ("knn_macro_acc", "knn_accuracy", "defect_precision@5", "defect_map", "d4_same_cluster_rate",
              "silhouette", "n_clusters", "largest_cluster_share", "shape_match@5", "outline_match@5",
              "train_seconds", "samples_per_second", "epochs")


def with_preset(cfg: WaferConfig, preset: str) -> WaferConfig:
    """``cfg`` with the augmentation on/off switches of ``preset`` (ranges and rates unchanged); an unknown preset
    is :meth:`AugmentConfig.preset`'s ConfigError."""
    switches = AugmentConfig.preset(preset)
    return replace(cfg, augment=replace(cfg.augment, **{op: getattr(switches, op) for op in AUGMENT_OPS}))


def ablation_runs(cfg: WaferConfig, presets: Sequence[str] | None, axes: Axes) -> list[tuple[str, dict, WaferConfig]]:
    """``(folder name, settings, config)`` of every run: presets (slowest) x grid combinations.

    ``presets`` None: :data:`DEFAULT_PRESETS` when there is no grid, else the config's own augmentation."""
    if presets is None:
        presets = () if axes else DEFAULT_PRESETS
    combos = grid_configs(WaferConfig, cfg, axes)
    runs = []
    for preset in presets or [None]:
        for settings, run_cfg in combos:
            if preset is not None:
                settings, run_cfg = {"augment.preset": preset, **settings}, with_preset(run_cfg, preset)
            runs.append((settings, run_cfg))
    only_presets = not axes and bool(presets)
    return [(s["augment.preset"] if only_presets else f"run_{i:02d}", s, c) for i, (s, c) in enumerate(runs)]


def ablation(
    cfg: WaferConfig, data: str | list[str], reference: str | list[str], test: str | list[str], out: Path,
    presets: Sequence[str] | None = None, val_data: str | list[str] | None = None, axes: Axes | None = None,
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every run of :func:`ablation_runs`; returns ``{label: figures}`` (label: the preset's
    name when presets are the only axis, else the run's settings; `` (D4-averaged)`` marks the averaged encoder)."""
    from fabml.wafer.pipeline import _jsonable, evaluate, train

    out = Path(out)
    axes = list(axes or [])
    runs = ablation_runs(cfg, presets, axes)
    results: dict[str, dict[str, Any]] = {}
    for folder, settings, run_cfg in runs:
        t0 = time.perf_counter()
        train(run_cfg, data, out / folder, fresh=True, val_data=val_data)
        seconds = time.perf_counter() - t0
        log = pd.read_csv(out / folder / "metrics.csv")
        evaluated = evaluate(out / folder, reference, test, baseline=False, tta_d4=run_cfg.eval.tta_d4)
        for method, figures in evaluated.items():
            # presets alone keep their names as labels (d4, d4_crop, ...); a grid run is named by its settings
            label = (settings_label(settings) if axes else folder) + (" (D4-averaged)" if method.endswith("_tta_d4") else "")
            results[label] = {"run": folder, **settings, **figures, "train_seconds": seconds,
                              "samples_per_second": float(log["samples_per_s"].median()), "epochs": int(log["epoch"].max())}
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "ablation.md").write_text(metrics_markdown(results, TABLE_KEYS))
    return results
