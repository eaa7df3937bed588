"""The anomaly job's configuration (saved as ``config.yaml`` beside every run).

``model`` is a mapping: ``name`` picks the model, every other key is a field of that
model's config dataclass (``image_size`` and ``in_chans`` come from ``data``).
``train`` holds overrides of :class:`~fabml.engine.trainer.TrainConfig`; unset fields
take the model's published defaults (``default_train`` of its method), then
TrainConfig's own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from fabml.anomaly.threshold import GradeConfig
from fabml.config import apply_overrides, from_dict, load_config
from fabml.data.anomaly_data import AnomalyDataConfig
from fabml.errors import ConfigError


@dataclass
class CalibrationConfig:
    """How the image and pixel thresholds are set from held-out normal training images.

    method: ``auto`` (F1-max against real defective images from ``defect_dir`` when given, else
    against synthetic anomalies when ``synthetic`` is on, else the ``quantile`` of normal scores)
    | ``f1`` | ``quantile``.
    min_normals / min_pass_rate / min_catch_rate: calibration warns when fewer held-out normals
    than ``min_normals`` set the threshold, when it passes less than ``min_pass_rate`` of them, or
    when it flags less than ``min_catch_rate`` of the defective (or synthetic-anomaly) images.
    """

    method: str = "auto"
    quantile: float = 0.99  # image scores: share of held-out normals below the threshold
    pixel_quantile: float = 0.999  # pixel scores, quantile fallback
    synthetic: bool = True  # paste Perlin-noise anomalies onto the held-out normals to calibrate
    synthetic_texture: str = "images"  # images | noise
    defect_dir: str = ""  # optional folder of real defective images, not in the test set: F1-max image threshold
    seed: int = 0
    min_normals: int = 20  # warn below this many held-out normals (raise data.val_fraction)
    min_pass_rate: float = 0.9  # warn when the threshold passes a smaller share of held-out good images
    min_catch_rate: float = 0.5  # warn when it flags a smaller share of the defective / synthetic images

    def __post_init__(self) -> None:
        if isinstance(self.min_normals, bool) or not isinstance(self.min_normals, int) or self.min_normals < 1:
            raise ConfigError(f"calibration.min_normals={self.min_normals!r} must be a whole number >= 1, e.g. 20")
        for name in ("min_pass_rate", "min_catch_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"calibration.{name}={value!r} must be a share in [0, 1], e.g. 0.9")


@dataclass
class AnomalyConfig:
    """Everything an anomaly run needs."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "patchcore"})
    data: AnomalyDataConfig = field(default_factory=AnomalyDataConfig)
    train: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    grades: GradeConfig = field(default_factory=GradeConfig)
    batch_size: int = 16  # feature extraction / inference batch
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0


def _command_line_overrides(overrides: Sequence[str] | None, data: str | None, image_size: int | None) -> list[str]:
    """``--data`` and ``--image-size`` as ``--set`` overrides placed before the user's own (which win)."""
    extra = list(overrides or [])
    if data is not None:
        extra.insert(0, f"data.root={data}")
    if image_size is not None:
        extra.insert(0, f"data.image_size=[{image_size},{image_size}]")
    return extra


def anomaly_config(config: str | Path | None = None, overrides: Sequence[str] | None = None, model: str | None = None,
                   data: str | None = None, image_size: int | None = None) -> AnomalyConfig:
    """The config of one run: defaults <- YAML file ``config`` <- ``data``/``image_size`` <- ``overrides``.

    ``model`` (``fabml anomaly fit --model``) picks the model; model settings in the file are kept
    only when they were written for that model (or name none), since another model's fields
    (a PatchCore ``coreset_ratio`` given to PaDiM) would be refused.
    """
    cfg = load_config(AnomalyConfig, config, _command_line_overrides(overrides, data, image_size))
    if model is not None:
        named = cfg.model.get("name")
        cfg.model = {**cfg.model, "name": model} if named in (None, "", model) else {"name": model}
    return cfg


def parse_models(models: str) -> list[str]:
    """``"patchcore, padim"`` -> ``["patchcore", "padim"]`` (empty names dropped); none left is a ConfigError."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--models {models!r} names no model; give comma-separated names, e.g. patchcore,padim")
    return names


def compare_configs(models: Sequence[str], config: str | Path | None = None, overrides: Sequence[str] | None = None,
                    data: str | None = None, image_size: int | None = None
                    ) -> tuple[AnomalyConfig, dict[str, dict[str, Any]]]:
    """The shared config of ``fabml anomaly compare`` and each model's own settings.

    The YAML file may hold, beside the usual sections, ``per_model: {NAME: {model: {...}, train: {...}}}``;
    that block is taken out before the rest is read as an :class:`AnomalyConfig`. Returns the shared
    config and ``{name: overrides}`` for every name of ``models`` in order (``{}`` for a model with no block).
    """
    raw: Any = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise ConfigError(f"config file {path} is not valid YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config} must hold a mapping of settings at the top level")
    per_model = raw.pop("per_model", None) or {}
    if not isinstance(per_model, dict) or not all(isinstance(v, dict) for v in per_model.values()):
        raise ConfigError(f"per_model in {config} must map model names to {{model: {{...}}, train: {{...}}}} blocks")
    for name, block in per_model.items():
        unknown = sorted(set(block) - {"model", "train"})
        if unknown:
            raise ConfigError(f"per_model.{name} in {config} has {', '.join(unknown)}; only model and train are per model")
    base = from_dict(AnomalyConfig, apply_overrides(raw, _command_line_overrides(overrides, data, image_size)))
    return base, {name: dict(per_model.get(name, {})) for name in models}
