"""ONNX export of a fitted run with pre-processing, scoring and normalisation inside the graph.

The graph takes ``image``: float32 ``[B, C, H, W]`` with raw pixel values in [0, 255] at any
height and width (resized inside to the fitted size, bilinear), and returns
``score`` ``[B]`` (normalised: threshold = 0.5), ``anomaly_map`` ``[B, 1, h, w]`` (normalised,
at the fitted size) and ``raw_score`` ``[B]``. The export is checked against the torch model on
sample images; a difference above ``tolerance`` is an error. The check's figures are written beside
the model as ``<name>.parity.json`` (see :func:`parity_path`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.runs import FittedModel
from fabml.anomaly.threshold import ScoreNormalizer
from fabml.errors import ConfigError, TrainingError

OPSET = 17


class DeployModel(nn.Module):
    """Fitted model + resize + scaling + score normalisation, as one module (eval only)."""

    def __init__(self, model: nn.Module, normalizer: ScoreNormalizer, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        for name in ("image_threshold", "image_min", "image_max", "pixel_threshold", "pixel_min", "pixel_max"):
            self.register_buffer(name, torch.tensor(float(getattr(normalizer, name))), persistent=False)

    @staticmethod
    def _normalise(x: torch.Tensor, threshold: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        span = torch.clamp(high - low, min=1e-12)
        return torch.clamp((x - threshold) / span + 0.5, 0.0, 1.0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False) / 255.0
        raw_score, raw_map = self.model(x)
        score = self._normalise(raw_score, self.image_threshold, self.image_min, self.image_max)
        amap = self._normalise(raw_map, self.pixel_threshold, self.pixel_min, self.pixel_max)
        return score, amap, raw_score


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matched torch.

    max_score_diff: max over the sample images of ``|score_onnx - score_torch|`` (normalised score, unitless);
    max_map_diff: the same for the normalised anomaly map (max over pixels too); parity: the JSON file
    holding these figures.
    """

    path: Path
    max_score_diff: float
    max_map_diff: float
    n_images: int
    tolerance: float = 1e-4
    parity: Path | None = None


def parity_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.parity.json``: the torch/ONNX parity report written beside the model."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.parity.json")


def export_onnx(fitted: FittedModel, path: str | Path, samples: torch.Tensor, tolerance: float = 1e-4) -> ExportReport:
    """Write the ONNX file and compare its outputs with torch on ``samples`` ``[N, C, H, W]`` in [0, 255]."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs the 'export' extra: pip install 'fabml[export]' (onnx, onnxruntime)") from None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deploy = DeployModel(fitted.model.cpu(), fitted.normalizer, fitted.image_size).eval()
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            deploy, (samples[:1].float(),), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["score", "anomaly_map", "raw_score"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "score": {0: "batch"},
                          "anomaly_map": {0: "batch"}, "raw_score": {0: "batch"}},
        )
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    score_diff, map_diff = 0.0, 0.0
    with torch.no_grad():
        for image in samples.float():
            batch = image[None]
            ref_score, ref_map, _ = deploy(batch)
            got_score, got_map, _ = session.run(None, {"image": batch.numpy()})
            score_diff = max(score_diff, float(np.abs(got_score - ref_score.numpy()).max()))
            map_diff = max(map_diff, float(np.abs(got_map - ref_map.numpy()).max()))
    if max(score_diff, map_diff) > tolerance:
        tmp.unlink(missing_ok=True)
        raise TrainingError(
            f"the ONNX export of {fitted.name} disagrees with the torch model (max score difference {score_diff:.2e}, "
            f"map difference {map_diff:.2e} > {tolerance:g}); the file was not written"
        )
    tmp.replace(path)
    report = ExportReport(path, score_diff, map_diff, int(len(samples)), float(tolerance), parity_path(path))
    report.parity.write_text(json.dumps({
        "onnx": str(path), "model": fitted.name, "opset": OPSET, "n_images": report.n_images,
        "max_score_diff": score_diff, "max_map_diff": map_diff, "tolerance": report.tolerance,
    }, indent=2))
    return report
