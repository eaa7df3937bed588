"""The anomaly job's configuration (saved as ``config.yaml`` beside every run).

``model`` is a mapping: ``name`` picks the model, every other key is a field of that
model's config dataclass (``image_size`` and ``in_chans`` come from ``data``).
``train`` holds overrides of :class:`~fabml.engine.trainer.TrainConfig`; unset fields
take the model's published defaults (``default_train`` of its method), then
TrainConfig's own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fabml.anomaly.threshold import GradeConfig
from fabml.data.anomaly_data import AnomalyDataConfig


@dataclass
class CalibrationConfig:
    """How the image and pixel thresholds are set from held-out normal training images.

    method: ``auto`` (F1-max against real defective images from ``defect_dir`` when given, else
    against synthetic anomalies when ``synthetic`` is on, else the ``quantile`` of normal scores)
    | ``f1`` | ``quantile``.
    """

    method: str = "auto"
    quantile: float = 0.99  # image scores: share of held-out normals below the threshold
    pixel_quantile: float = 0.999  # pixel scores, quantile fallback
    synthetic: bool = True  # paste Perlin-noise anomalies onto the held-out normals to calibrate
    synthetic_texture: str = "images"  # images | noise
    defect_dir: str = ""  # optional folder of real defective images, not in the test set: F1-max image threshold
    seed: int = 0


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
