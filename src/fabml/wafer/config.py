"""The wafer job's configuration: one dataclass per part, each declared beside its code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from fabml.config import apply_overrides, from_dict, load_config, to_dict
from fabml.data.wafer_dataset import WaferDataConfig
from fabml.engine.trainer import TrainConfig
from fabml.index import IndexConfig
from fabml.wafer.augment import AugmentConfig
from fabml.wafer.baselines import BaselineConfig
from fabml.wafer.clusters import ClusterConfig
from fabml.wafer.method import BYOLConfig
from fabml.wafer.model import EncoderConfig


@dataclass
class EvalConfig:
    """Evaluation settings (see :mod:`fabml.wafer.evaluation`)."""

    knn_k: int = 5
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    tta_d4: bool = False  # test-time D4 averaging of embeddings; reported separately from the raw encoder
    # PCA whitening of the learned embedding to this many directions, fitted without labels on the maps embedded
    # (evaluate: the reference maps); 0 = off (fabml.wafer.whitening)
    whiten_dim: int = 0
    d4_maps: int = 2000  # maps whose 8-member D4 orbit is embedded for the invariance figures
    embed_batch: int = 512
    # the label(s) of maps without a pattern, never a "defect" query: one name or a list ([None, Normal])
    no_pattern_label: str | list[str] = "None"
    label_separator: str = "+"  # joins the patterns of a mixed-pattern map (Center+Scratch) when maps are read
    val_every: int = 1  # epochs between validation kNN runs when a validation set is given (0 = never)
    val_limit: int = 3000  # validation maps used per validation run (0 = all)


@dataclass
class WaferConfig:
    """Everything a wafer run needs; saved as ``config.yaml`` in the run folder."""

    data: WaferDataConfig = field(default_factory=WaferDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


VAL_MONITOR = "val_knn_macro_acc"
"""The per-epoch figure that picks the best checkpoint when validation maps are given (higher is better)."""


def wafer_config(config: str | Path | None = None, overrides: Sequence[str] | None = None,
                 select_on_val: bool = False, base: str | Path | None = None) -> WaferConfig:
    """Defaults <- YAML ``base`` (a run's own config.yaml) <- YAML ``config`` <- ``overrides``.

    ``base`` is how the commands that work on an existing run (``embed``, ``cluster``, ``evaluate``) start from
    the run's settings: ``--config`` then only needs the settings it changes. With ``select_on_val``
    (``--val`` maps given) the best checkpoint is the one with the best validation kNN macro accuracy
    (``train.monitor``).
    """
    if base is None or not Path(base).is_file():
        cfg = load_config(WaferConfig, config, overrides or [])
    else:
        data = to_dict(load_config(WaferConfig, base))
        if config is not None:
            load_config(WaferConfig, config)  # one-line errors for a missing file, bad YAML or unknown settings
            _merge(data, _read_yaml(config))
        apply_overrides(data, overrides or [])
        cfg = from_dict(WaferConfig, data)
    if select_on_val:
        cfg.train.monitor, cfg.train.monitor_mode = VAL_MONITOR, "max"
    return cfg


def _read_yaml(path: str | Path) -> dict:
    """The settings a YAML file names (already checked by :func:`load_config`)."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def _merge(into: dict, update: dict) -> dict:
    """Deep-merge ``update`` into ``into`` (nested dicts merged, other values replaced)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into
