"""Thresholds from held-out normal training images, never from the test set.

The held-out normals give the distribution of normal scores. When ``calibration.synthetic``
is on, the same images with Perlin-noise anomalies pasted in (DRAEM's recipe) give the
anomalous side, and the thresholds are the F1-max points of image scores and pixel
scores; otherwise the thresholds are high quantiles of the normal scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from fabml.anomaly.config import CalibrationConfig
from fabml.anomaly.inference import ScoredSet, score_batches
from fabml.anomaly.models.base import AnomalyModel
from fabml.anomaly.synthetic import SyntheticAnomalyConfig, synthesize_anomalies
from fabml.anomaly.threshold import ScoreNormalizer, calibrate_pixel_threshold, calibrate_threshold


@dataclass
class Calibration:
    """The fitted normaliser and the lines that say how the thresholds were chosen."""

    normalizer: ScoreNormalizer
    messages: list[str]
    info: dict[str, Any]


class _SyntheticBatches:
    """The batches of ``loader`` with a synthetic anomaly pasted into every image."""

    def __init__(self, loader: DataLoader, cfg: CalibrationConfig) -> None:
        self.loader = loader
        self.synthetic = SyntheticAnomalyConfig(probability=1.0, texture_source=cfg.synthetic_texture)
        self.seed = cfg.seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        for batch in self.loader:
            images, masks, labels = synthesize_anomalies(batch["image"], self.synthetic, generator)
            yield {**batch, "image": images, "mask": masks, "label": labels.long()}


def calibrate(model: AnomalyModel, val_loader: DataLoader, cfg: CalibrationConfig, device: torch.device,
              defect_loader: DataLoader | None = None) -> Calibration:
    """Score the held-out normals (and their synthetic-anomaly copies) and fit the normaliser.

    ``defect_loader`` (real defective images kept out of the test set, ``calibration.defect_dir``)
    replaces the synthetic anomalies for the image threshold; the pixel threshold still uses the
    synthetic masks (or the quantile), since those images come without masks.
    """
    normal = score_batches(model, val_loader, device, description="calibrating on held-out normals")
    synthetic: ScoredSet | None = None
    if cfg.synthetic and cfg.method != "quantile":
        synthetic = score_batches(model, _SyntheticBatches(val_loader, cfg), device, description="synthetic anomalies")
    defects = score_batches(model, defect_loader, device, description="defective images") if defect_loader else None
    if defects is not None and cfg.method != "quantile":
        image = calibrate_threshold(normal.scores, defects.scores, method=cfg.method, quantile=cfg.quantile,
                                    source="defective")
    else:
        image = calibrate_threshold(normal.scores, synthetic.scores if synthetic is not None else None,
                                    method=cfg.method, quantile=cfg.quantile, source="synthetic")
    pixel = calibrate_pixel_threshold(
        normal.maps,
        synthetic.maps if synthetic is not None else None,
        synthetic.masks if synthetic is not None else None,
        quantile=cfg.pixel_quantile,
        source="synthetic",
    )
    extra = [scored for scored in (synthetic, defects) if scored is not None]
    all_scores = np.concatenate([normal.scores] + [scored.scores for scored in extra])
    all_maps = [normal.maps] + [scored.maps for scored in extra]
    normalizer = ScoreNormalizer(
        image_threshold=float(image.value),
        image_min=float(all_scores.min()),
        image_max=float(all_scores.max()),
        pixel_threshold=float(pixel.value),
        pixel_min=float(min(m.min() for m in all_maps)),
        pixel_max=float(max(m.max() for m in all_maps)),
    )
    info = {
        "image_threshold": image.value,
        "image_method": image.method,
        "pixel_threshold": pixel.value,
        "pixel_method": pixel.method,
        "n_normal": int(len(normal.scores)),
        "n_synthetic": int(len(synthetic.scores)) if synthetic is not None else 0,
        "n_defective": int(len(defects.scores)) if defects is not None else 0,
        "normal_score_mean": float(normal.scores.mean()),
        "synthetic_score_mean": float(synthetic.scores.mean()) if synthetic is not None else None,
    }
    return Calibration(normalizer, [image.message, pixel.message], info)
