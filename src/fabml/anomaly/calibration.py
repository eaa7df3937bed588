"""Thresholds from held-out normal training images, never from the test set.

The held-out normals give the distribution of normal scores. When ``calibration.synthetic``
is on, the same images with Perlin-noise anomalies pasted in (DRAEM's recipe) give the
anomalous side, and the thresholds are the F1-max points of image scores and pixel
scores; otherwise the thresholds are high quantiles of the normal scores.

Calibration then says what the chosen image threshold will do (:func:`threshold_check`): the
share of held-out good images it passes (score < threshold) and the share of the defective or
synthetic-anomaly images it catches (score >= threshold), and warns when those numbers cannot be
trusted (too few held-out normals) or predict trouble (too many good images fail, too many
defects pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from fabml import console
from fabml.anomaly.config import CalibrationConfig
from fabml.anomaly.inference import ScoredSet, score_batches
from fabml.anomaly.models.base import AnomalyModel
from fabml.anomaly.synthetic import SyntheticAnomalyConfig, synthesize_anomalies
from fabml.anomaly.threshold import (
    ScoreNormalizer,
    ThresholdResult,
    calibrate_pixel_threshold,
    calibrate_threshold,
)
from fabml.errors import DataError

DEFECT_SOURCES = ("real", "synthetic", "none")
_DEFECT_NOUN = {"real": "defective", "synthetic": "synthetic-anomaly"}


@dataclass
class Calibration:
    """The fitted normaliser and the lines that say how the thresholds were chosen.

    messages: the image and pixel threshold lines, then the pass- and catch-rate lines, then one
    ``warning: ...`` line per warning (:func:`threshold_check`). info: the numbers behind them
    (saved in model.pt and fit.json), among them ``good_pass_rate``, ``defect_catch_rate``,
    ``n_normals``, ``n_defects``, ``defect_source`` and ``warnings``.
    """

    normalizer: ScoreNormalizer
    messages: list[str]
    info: dict[str, Any]


class _SyntheticBatches:
    """The batches of ``loader`` with a synthetic anomaly pasted into every image.

    ``test_channels``: for pairs (reference mode, a test image's channels then its reference's),
    the anomaly goes into the first ``test_channels`` channels only: the test image, never its template.
    """

    def __init__(self, loader: DataLoader, cfg: CalibrationConfig, test_channels: int | None = None) -> None:
        self.loader = loader
        self.synthetic = SyntheticAnomalyConfig(probability=1.0, texture_source=cfg.synthetic_texture)
        self.seed = cfg.seed
        self.test_channels = test_channels

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        for batch in self.loader:
            image = batch["image"]
            c = self.test_channels or image.shape[1]
            images, masks, labels = synthesize_anomalies(image[:, :c], self.synthetic, generator)
            images = torch.cat([images, image[:, c:]], dim=1)
            yield {**batch, "image": images, "mask": masks, "label": labels.long()}


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def threshold_check(normal_scores: np.ndarray, defect_scores: np.ndarray | None, image: ThresholdResult,
                    defect_source: str, cfg: CalibrationConfig) -> tuple[dict[str, Any], list[str]]:
    """What the image threshold will do, measured on the calibration scores, and the warnings it earns.

    Args:
        normal_scores: ``[N]`` raw scores of the held-out normal (good) images.
        defect_scores: ``[M]`` raw scores of the defective (``defect_source='real'``) or synthetic-anomaly
            (``'synthetic'``) images, or None (``'none'``).
        image: the calibrated image threshold (raw units) and how it was chosen.
        cfg: ``min_normals``, ``min_pass_rate`` and ``min_catch_rate`` set when to warn.

    Returns ``(info, lines)``. info: ``good_pass_rate`` = share of normals with score < threshold,
    ``defect_catch_rate`` = share of defects with score >= threshold (None without defects), counts
    ``n_normals`` / ``n_defects``, ``defect_source`` and ``warnings`` (the warning texts). lines: one
    line per rate, then ``warning: <text>`` per warning. Warnings: fewer than ``min_normals`` normals;
    pass rate < ``min_pass_rate``; catch rate < ``min_catch_rate``.
    """
    if defect_source not in DEFECT_SOURCES:
        raise ValueError(f"defect_source must be one of {DEFECT_SOURCES}, got {defect_source!r}")
    if (defect_scores is None) != (defect_source == "none"):
        raise ValueError("defect_scores must be given exactly when defect_source is 'real' or 'synthetic'")
    normal = np.asarray(normal_scores, dtype=np.float64).ravel()
    if normal.size == 0:
        raise DataError("no held-out normal scores to measure the threshold on; hold out some normal training images")
    threshold = float(image.value)
    n_normals = int(normal.size)
    passed = int((normal < threshold).sum())
    pass_rate = passed / n_normals
    lines = [f"expected pass rate of good images: {_percent(pass_rate)} ({passed} of {n_normals} held-out normal "
             f"images score below the threshold {threshold:.4g})"]
    catch_rate: float | None = None
    n_defects = 0
    defects = None if defect_scores is None else np.asarray(defect_scores, dtype=np.float64).ravel()
    if defects is not None and defects.size:
        n_defects = int(defects.size)
        caught = int((defects >= threshold).sum())
        catch_rate = caught / n_defects
        lines.append(f"catch rate of {_DEFECT_NOUN[defect_source]} images: {_percent(catch_rate)} ({caught} of "
                     f"{n_defects} score at or above the threshold)")
    else:
        lines.append("catch rate of defective images: not measured (no defective or synthetic-anomaly images were "
                     "scored; give some with calibration.defect_dir=DIR)")

    warnings: list[str] = []
    if n_normals < cfg.min_normals:
        warnings.append(
            f"only {n_normals} held-out normal images set the threshold (fewer than calibration.min_normals="
            f"{cfg.min_normals}), so the pass and catch rates are rough; raise data.val_fraction or add normal images"
        )
    if pass_rate < cfg.min_pass_rate:
        head = (f"the threshold passes only {_percent(pass_rate)} of held-out good images (below "
                f"calibration.min_pass_rate={cfg.min_pass_rate:g})")
        if image.method == "quantile":
            warnings.append(f"{head}; raise calibration.quantile (now {cfg.quantile:g})")
        elif image.source == "synthetic":
            warnings.append(
                f"{head}: the synthetic anomalies may not resemble this data's defects; give real defective "
                "images with calibration.defect_dir=DIR, or set calibration.synthetic=false for a quantile "
                f"threshold (the calibration.quantile={cfg.quantile:g} of the good scores)"
            )
        else:
            warnings.append(
                f"{head}: the images in calibration.defect_dir score like good ones; check that the folder holds "
                "only defective images, or set calibration.method=quantile"
            )
    if catch_rate is not None and catch_rate < cfg.min_catch_rate:
        noun = _DEFECT_NOUN[defect_source]
        warnings.append(
            f"the threshold catches only {_percent(catch_rate)} of the {n_defects} {noun} images (below "
            f"calibration.min_catch_rate={cfg.min_catch_rate:g}): the model barely tells them from good images, "
            "so expect many defects to pass; try another model or more normal training images"
            + (", or real defective images with calibration.defect_dir=DIR" if defect_source == "synthetic" else "")
        )
    info: dict[str, Any] = {
        "good_pass_rate": float(pass_rate),
        "defect_catch_rate": None if catch_rate is None else float(catch_rate),
        "n_normals": n_normals,
        "n_defects": n_defects,
        "defect_source": defect_source,
        "warnings": warnings,
    }
    return info, lines + [f"warning: {text}" for text in warnings]


def calibrate(model: AnomalyModel, val_loader: DataLoader, cfg: CalibrationConfig, device: torch.device,
              defect_loader: DataLoader | None = None) -> Calibration:
    """Score the held-out normals (and their synthetic-anomaly copies) and fit the normaliser.

    ``defect_loader`` (real defective images kept out of the test set, ``calibration.defect_dir``)
    replaces the synthetic anomalies for the image threshold; the pixel threshold still uses the
    synthetic masks (or the quantile), since those images come without masks. The pass and catch
    rates (:func:`threshold_check`) are measured on the images behind the image threshold: the real
    defective images when given, else the synthetic ones; each warning is also printed to stderr.
    """
    normal = score_batches(model, val_loader, device, description="calibrating on held-out normals")
    synthetic: ScoredSet | None = None
    if cfg.synthetic and cfg.method != "quantile":
        test_channels = model.in_chans if getattr(model, "pair_input", False) else None
        synthetic = score_batches(model, _SyntheticBatches(val_loader, cfg, test_channels), device,
                                  description="synthetic anomalies")
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
    if defects is not None:
        check_info, lines = threshold_check(normal.scores, defects.scores, image, "real", cfg)
    elif synthetic is not None:
        check_info, lines = threshold_check(normal.scores, synthetic.scores, image, "synthetic", cfg)
    else:
        check_info, lines = threshold_check(normal.scores, None, image, "none", cfg)
    info.update(check_info)
    for text in check_info["warnings"]:
        console.err.print(f"warning: {text}")
    return Calibration(normalizer, [image.message, pixel.message, *lines], info)
