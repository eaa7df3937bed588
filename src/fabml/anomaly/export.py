"""ONNX export of a fitted run with pre-processing, scoring and normalisation inside the graph.

The graph takes ``image``: float32 ``[B, C, H, W]`` with raw pixel values in [0, 255] at any
height and width (resized inside to the fitted size, bilinear), and returns
``score`` ``[B]`` (normalised: threshold = 0.5, in (0, 1), order kept), ``anomaly_map`` ``[B, 1, h, w]``
(normalised the same way, at the fitted size) and ``raw_score`` ``[B]``, plus ``severity`` ``[B]`` (the
predicted fault severity, unnormalised) for a model with a severity head (``draem_severity``). A reference-mode run
(``reference``) takes ``[B, 2C, H, W]``: the test image's channels, then those of its reference already aligned
and light-matched onto it (:func:`fabml.data.reference_view.reference_on_image`; the alignment is not in the
graph). The export
is checked against the torch model on sample images: the raw score, the normalised map and the severity must agree
within ``tolerance``, and the graph's normalised score must be the run's normaliser applied to the graph's own raw
score (:func:`normalisation_gap`); otherwise it is an error. The check's figures are written beside
the model as ``<name>.parity.json`` (see :func:`parity_path`). Export and check are
:mod:`fabml.onnx_export`, shared with the other jobs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.runs import FittedModel
from fabml.anomaly.threshold import ScoreNormalizer
from fabml.onnx_export import OPSET, export_checked, parity_path, write_parity  # noqa: F401  (public here too)


class DeployModel(nn.Module):
    """Fitted model + resize + scaling + score normalisation, as one module (eval only).

    The normalisation is :meth:`ScoreNormalizer.normalize_scores` / ``normalize_maps`` itself (the
    order-keeping softsign with the threshold at 0.5, :mod:`fabml.anomaly.threshold`), traced with its
    threshold and scale as graph constants, so ONNX and torch use one formula.
    """

    def __init__(self, model: nn.Module, normalizer: ScoreNormalizer, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.normalizer = normalizer

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False) / 255.0
        out = self.model(x)
        raw_score, raw_map = out.pred_score, out.anomaly_map
        score = self.normalizer.normalize_scores(raw_score)
        amap = self.normalizer.normalize_maps(raw_map)
        if getattr(self.model, "has_severity", False):
            return score, amap, raw_score, out.pred_severity
        return score, amap, raw_score


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matched torch.

    max_score_diff: max over the sample images of ``|score_onnx - score_torch|`` (normalised score, unitless);
    max_map_diff: the same for the normalised anomaly map (max over pixels too); max_severity_diff: the same for
    the predicted severity (severity units; None for a model without a severity head); parity: the JSON file
    holding these figures.
    """

    path: Path
    max_score_diff: float
    max_map_diff: float
    n_images: int
    tolerance: float = 1e-4
    parity: Path | None = None
    max_severity_diff: float | None = None


def normalisation_gap(outputs: dict[str, np.ndarray], normalizer: ScoreNormalizer) -> float:
    """``max |score - normalize_scores(raw_score)|`` of one batch of the ONNX graph's outputs (by output name):
    whether the graph's normalisation is the run's normaliser."""
    expected = normalizer.normalize_scores(torch.from_numpy(outputs["raw_score"])).numpy()
    return float(np.abs(outputs["score"] - expected).max())


def export_onnx(fitted: FittedModel, path: str | Path, samples: torch.Tensor, tolerance: float = 1e-4) -> ExportReport:
    """Write the ONNX file and compare its outputs with torch on ``samples`` ``[N, C, H, W]`` in [0, 255]."""
    path = Path(path)
    deploy = DeployModel(fitted.model.cpu(), fitted.normalizer, fitted.image_size).eval()
    severity = bool(getattr(fitted.model, "has_severity", False))
    outputs = ["score", "anomaly_map", "raw_score", *(["severity"] if severity else [])]
    # The model's raw score is compared with torch, and the graph's normalised score with the normaliser applied to
    # the graph's own raw score. Comparing the normalised scores of torch and ONNX directly would amplify float32
    # rounding by the normaliser's slope, 1 / (max - min) of the calibration scores: on a narrow calibration range a
    # 1-ulp raw difference (6e-8) became 2.6e-4 of normalised score, which says nothing about the export.
    checked = ["raw_score", "anomaly_map", *(["severity"] if severity else [])]
    diffs = export_checked(
        deploy, samples, path, "image", outputs,
        {"image": {0: "batch", 2: "height", 3: "width"}, **{name: {0: "batch"} for name in outputs}},
        what=fitted.name, tolerance=tolerance, checked=checked,
        self_checks={"score_normalisation": functools.partial(normalisation_gap, normalizer=fitted.normalizer)},
    )
    score_diff, map_diff = diffs["score"], diffs["anomaly_map"]
    report = ExportReport(path, score_diff, map_diff, int(len(samples)), float(tolerance), parity_path(path),
                          diffs.get("severity"))
    figures = {"model": fitted.name, "n_images": report.n_images, "max_score_diff": score_diff,
               "max_raw_score_diff": diffs["raw_score"], "max_score_normalisation_diff": diffs["score_normalisation"],
               "max_map_diff": map_diff, "tolerance": report.tolerance}
    if severity:
        figures["max_severity_diff"] = diffs["severity"]
    write_parity(path, figures)
    return report
