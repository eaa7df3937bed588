"""The ablation runner: train every combination of a settings grid on one split, one table and one figure.

``fabml anomaly ablation --model draem_severity --grid severity_input_mode=discriminative_only,multi_modal
--grid faults.probability=0.3,0.5`` fits every combination (here 2 x 2) on the same split (the split depends
only on ``data``), each in its own spawned process through :func:`fabml.anomaly.compare.run_in_child`, and
measures for each:

- detection on the real test set: image AUROC, pixel AUROC, AUPRO (as ``compare``);
- severity on held-out synthetic faults of known severity (models with a severity head): ``n_faults``
  faults made by :class:`~fabml.anomaly.cutpaste_faults.CutPasteFaults` (the run's own fault settings,
  every image faulty) on the normal images of the test split, seeded by ``fault_seed``; the mean absolute
  error and Spearman's rank correlation (:func:`scipy.stats.spearmanr`) between predicted and true severity;
  the same on the held-out calibration normals (``val_severity_mae``, ``val_severity_spearman``: choose a
  setting on these, not on the test split);
- severity on the real defects: Spearman's correlation between the predicted severity and the proxy
  "masked area x mean contrast" of each defective test image with a mask (:func:`evaluate_real_severity`);
  reported without a target, as real severities are unknown;
- training time (``fit_seconds``).

A grid axis is ``KEY=V1,V2,...`` with each value read as YAML (``[64, 64]`` stays one value: commas inside
brackets do not split). KEY is any setting: a dotted path that starts with a section of the anomaly config
(``train.lr``, ``data.image_size``, ``model.severity_weight``, ``seed``) is used as written; any other key is a
model setting (``severity_input_mode`` = ``model.severity_input_mode``, ``faults.probability`` =
``model.faults.probability``). Writes ``ablation.json``, ``ablation.csv``, ``ablation.md`` and
``ablation.png`` in the output folder, and one run folder per combination (``run_00``, ``run_01``, ...).
"""

from __future__ import annotations

import functools
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from fabml import config_grid
from fabml.anomaly.compare import run_in_child
from fabml.anomaly.config import AnomalyConfig
from fabml.config_grid import split_values  # noqa: F401  (public here too)
from fabml.console import table_lines
from fabml.errors import ConfigError

METRICS = ("image_auroc", "pixel_auroc", "aupro", "severity_mae", "severity_spearman", "val_severity_spearman",
           "real_severity_spearman", "fit_seconds")
SECTIONS = {f.name for f in fields(AnomalyConfig)}


def config_key(key: str) -> str:
    """The full dotted path of a grid key: as written when it starts with a config section, else under ``model.``."""
    key = key.strip()
    return key if key.split(".")[0] in SECTIONS else f"model.{key}"


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["severity_input_mode=a,b", "faults.probability=0.3,0.5"]`` -> ``[(full key, [values]), ...]``
    (:func:`fabml.config_grid.parse_grid` with :func:`config_key`; at least one axis, never ``model.name``)."""
    axes = config_grid.parse_grid(specs, config_key, example="faults.probability=0.3,0.5")
    if any(key == "model.name" for key, _ in axes):
        raise ConfigError("--grid model.name: the ablation runs one model; use `fabml anomaly compare` for several")
    if not axes:
        raise ConfigError("the ablation needs at least one --grid KEY=V1,V2,... axis")
    return axes


def grid_configs(base: AnomalyConfig, axes: list[tuple[str, list[Any]]]) -> list[tuple[dict[str, Any], AnomalyConfig]]:
    """Every combination of the axes (the first axis varies slowest) as ``(settings, config)``; a bad value
    is a ConfigError naming the setting, before anything is trained."""
    combos = config_grid.grid_configs(AnomalyConfig, base, axes)
    for _, cfg in combos:
        _check_model_settings(cfg)
    return combos


def _check_model_settings(cfg: AnomalyConfig) -> None:
    """Build the model config (not the model) so an unknown or invalid model setting fails now."""
    from fabml.anomaly.models.registry import model_config

    settings = {k: v for k, v in cfg.model.items() if k != "name"}
    model_config(str(cfg.model.get("name", "")), {**settings, "image_size": list(cfg.data.image_size),
                                                  "in_chans": cfg.data.channels or 1})


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two [N] arrays; NaN when either is constant or N < 2."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _load_severity_run(run_dir: str | Path) -> tuple[Any, Any, torch.device] | None:
    """(fitted run, its split, device) of a run whose model has a severity head; None without one."""
    from fabml.anomaly.pipeline import SPLIT_FILE
    from fabml.anomaly.runs import load_fitted
    from fabml.data.anomaly_data import read_split
    from fabml.engine.hardware import resolve_device

    device = resolve_device("auto")
    fitted = load_fitted(run_dir, device)
    if not getattr(fitted.model, "has_severity", False):
        return None
    return fitted, read_split(Path(run_dir) / SPLIT_FILE), device


def evaluate_severity(run_dir: str | Path, n_faults: int = 500, seed: int = 0, batch_size: int = 16,
                      part: str = "test") -> dict[str, Any]:
    """Severity MAE and Spearman correlation on ``n_faults`` held-out synthetic faults of known severity.

    The faults are pasted by the run's own :class:`CutPasteFaults` settings (probability 1) on the normal images
    of its ``part`` of the split: ``"test"`` (the held-out calibration normals when the test split has none) or
    ``"val"`` (the calibration normals: for choosing settings without touching the test split), cycling;
    a generator seeded with ``seed`` (on the CPU) makes the set the same for every run of an ablation and on any
    device; the model runs on the best device available. Returns
    ``severity_mae`` (severity units), ``severity_spearman`` (NaN when either side is constant) and
    ``severity_n``; ``{}`` for a model without a severity head.
    """
    _check_faults(n_faults, part)
    run = _load_severity_run(run_dir)
    return {} if run is None else _synthetic_severity(*run, n_faults, seed, batch_size, part)


def _check_faults(n_faults: int, part: str) -> None:
    if n_faults < 2:
        raise ConfigError(f"n_faults={n_faults}: the severity evaluation needs at least 2 faults")
    if part not in ("test", "val"):
        raise ConfigError(f"part={part!r}: the severity evaluation uses the 'test' or the 'val' normals")


def held_out_fault_batches(split: Any, image_size: tuple[int, int], channels: int, faults: Any, n_faults: int,
                           seed: int = 0, batch_size: int = 16, part: str = "test") -> Iterator[Any]:
    """The held-out synthetic faults of :func:`evaluate_severity`, batch by batch (:class:`FaultBatch`).

    ``faults``: the run's :class:`~fabml.anomaly.cutpaste_faults.CutPasteFaultConfig` (used with probability 1,
    every image faulty); pasted on the normals of the split's ``part`` (``"test"``: the test normals, or the
    calibration normals when the test split has none; ``"val"``: the calibration normals) at ``image_size``
    ``(H, W)`` and ``channels``, cycling over them; one CPU generator seeded with ``seed`` draws them, so the
    same arguments give the same ``n_faults`` images and severities (used by the learned head's evaluation and
    by the model-free baseline of :mod:`fabml.anomaly.severity_baseline`).
    """
    from fabml.anomaly.cutpaste_faults import CutPasteFaults
    from fabml.data.anomaly_data import AnomalyImageDataset

    normals = ([r for r in split.test if r.label == 0] if part == "test" else []) or list(split.val)
    dataset = AnomalyImageDataset(normals, image_size, channels)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    paste = CutPasteFaults(replace(faults, probability=1.0))
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_faults, batch_size):
        index = torch.arange(start, min(n_faults, start + batch_size)) % len(images)
        yield paste(images[index], generator)


def _synthetic_severity(fitted: Any, split: Any, device: torch.device, n_faults: int, seed: int, batch_size: int,
                        part: str) -> dict[str, Any]:
    """:func:`evaluate_severity` on a loaded run."""
    model = fitted.model
    true, pred = [], []
    with torch.no_grad():
        for batch in held_out_fault_batches(split, fitted.image_size, fitted.channels, model.config.faults,
                                            n_faults, seed, batch_size, part):
            true.append(batch.severity.numpy())
            pred.append(model(batch.images.to(device)).pred_severity.float().cpu().numpy())
    t, p = np.concatenate(true), np.concatenate(pred)
    return {"severity_mae": float(np.abs(p - t).mean()), "severity_spearman": _spearman(t, p),
            "severity_n": int(len(t))}


def defect_proxy(image: torch.Tensor, mask: torch.Tensor) -> float:
    """``area x contrast`` of one defect: image ``[C, H, W]`` in [0, 1], mask ``[1, H, W]`` (> 0.5 inside).

    ``area = |M| / (H W)``, ``contrast = |mean(gray[M]) - mean(gray[~M])|`` with ``gray`` the channel mean;
    NaN when the mask is empty or covers the whole image.
    """
    inside = mask[0] > 0.5
    if not inside.any() or inside.all():
        return float("nan")
    gray = image.mean(dim=0)
    return float(inside.float().mean() * (gray[inside].mean() - gray[~inside].mean()).abs())


def evaluate_real_severity(run_dir: str | Path, batch_size: int = 16) -> dict[str, Any]:
    """Spearman correlation between predicted severity and a visible-size proxy on the real defects.

    For each defective test image with a non-empty mask ``M`` (at the model's input size), the proxy is
    ``area x contrast``: ``area = |M| / (H W)`` (a fraction) and ``contrast = |mean(x[M]) - mean(x[~M])|`` (the
    image's intensities in [0, 1], averaged over channels). Real severities are unknown, so this only says
    whether larger, more visible defects are ranked as more severe. Returns ``real_severity_spearman`` (NaN
    with fewer than 2 such images) and ``real_severity_n``; ``{}`` for a model without a severity head.
    """
    run = _load_severity_run(run_dir)
    return {} if run is None else _real_severity(*run, batch_size)


def real_defect_batches(split: Any, image_size: tuple[int, int], channels: int,
                        batch_size: int = 16) -> Iterator[tuple[torch.Tensor, list[float]]]:
    """The real defects of :func:`evaluate_real_severity`: ``(images [B, C, H, W], proxies [B])`` per batch, for
    each defective test image with a mask (proxy :func:`defect_proxy`, NaN for an empty mask)."""
    from fabml.data.anomaly_data import AnomalyImageDataset

    defects = [r for r in split.test if r.label == 1 and r.mask_path]
    dataset = AnomalyImageDataset(defects, image_size, channels)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        yield torch.stack([item["image"] for item in items]), [defect_proxy(it["image"], it["mask"]) for it in items]


def _real_severity(fitted: Any, split: Any, device: torch.device, batch_size: int) -> dict[str, Any]:
    """:func:`evaluate_real_severity` on a loaded run."""
    proxy, pred = [], []
    with torch.no_grad():
        for images, proxies in real_defect_batches(split, fitted.image_size, fitted.channels, batch_size):
            proxy += proxies
            pred.append(fitted.model(images.to(device)).pred_severity.float().cpu().numpy())
    x, p = np.asarray(proxy), np.concatenate(pred) if pred else np.zeros(0)
    keep = np.isfinite(x)
    return {"real_severity_spearman": _spearman(x[keep], p[keep]), "real_severity_n": int(keep.sum())}


def measure_severity(run_dir: str | Path, n_faults: int = 500, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Every severity figure of one run, the model loaded once: synthetic faults on the test normals
    (``severity_*``) and on the calibration normals (``val_severity_*``), and the real-defect proxy correlation;
    ``{}`` without a head."""
    _check_faults(n_faults, "test")
    run = _load_severity_run(run_dir)
    if run is None:
        return {}
    test = _synthetic_severity(*run, n_faults, seed, batch_size, "test")
    val = _synthetic_severity(*run, n_faults, seed, batch_size, "val")
    return {**test, **{f"val_{k}": v for k, v in val.items()}, **_real_severity(*run, batch_size)}


def run_label(settings: dict[str, Any]) -> str:
    """``{"model.severity_input_mode": "x", "train.lr": 0.1}`` -> ``"severity_input_mode=x train.lr=0.1"``."""
    return " ".join(f"{key.removeprefix('model.')}={value}" for key, value in settings.items())


def ablation(base: AnomalyConfig, axes: list[tuple[str, list[Any]]], out_dir: str | Path, n_faults: int = 500,
             fault_seed: int = 0, figures: bool = False) -> list[dict[str, Any]]:
    """Fit and measure every combination of ``axes`` on ``base`` (see the module doc); returns the rows.

    A failed combination's row holds ``error`` (and ``traceback``); the others go on. ``figures``: each run's
    evaluation also writes its own PNG figures (off by default: the ablation's figure is ``ablation.png``, and
    ``fabml anomaly evaluate --run OUT/run_NN`` draws them for any run later).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    combos = grid_configs(base, axes)
    measure = functools.partial(measure_severity, n_faults=n_faults, seed=fault_seed)
    rows: list[dict[str, Any]] = []
    for i, (settings, cfg) in enumerate(combos):
        name = f"run_{i:02d}"
        row = {"run": name, **settings, **run_in_child(cfg, out_dir / name, measure, figures)}
        rows.append(row)
        (out_dir / "ablation.json").write_text(json.dumps(rows, indent=2, default=str))
    write_outputs(rows, [k for k, _ in axes], out_dir, f"ablation of {base.model.get('name')}: {len(rows)} combinations")
    return rows


def table_rows(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the ablation table: run, each axis, then :data:`METRICS` (or ``failed: ...``)."""
    headers = ["run", *(k.removeprefix("model.") for k in keys), *METRICS]
    body = []
    for row in rows:
        cells = [row["run"], *(row.get(k) for k in keys)]
        body.append(cells + [f"failed: {row['error']}"] if "error" in row else cells + [row.get(m) for m in METRICS])
    return headers, body


def write_outputs(rows: list[dict[str, Any]], keys: list[str], out_dir: Path, title: str = "ablation") -> None:
    """ablation.json (every field), ablation.csv and ablation.md (the table), ablation.png (the figure)."""
    from fabml.viz.ablation import plot_ablation

    (out_dir / "ablation.json").write_text(json.dumps(rows, indent=2, default=str))
    headers, body = table_rows(rows, keys)
    flat = [{"run": r["run"], **{k.removeprefix("model."): r.get(k) for k in keys},
             **{m: r.get(m) for m in METRICS}, "error": r.get("error", "")} for r in rows]
    pd.DataFrame(flat).to_csv(out_dir / "ablation.csv", index=False)
    (out_dir / "ablation.md").write_text("\n".join(table_lines(headers, body)) + "\n")
    ok = [r for r in rows if "error" not in r]
    plot_ablation([run_label({k: r.get(k) for k in keys}) for r in ok],
                  {m: [_number(r.get(m)) for r in ok] for m in METRICS}, out_dir / "ablation.png", title)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
