"""ONNX export of a trained retrieval model with resizing and scaling inside the graph.

The graph takes ``image``: float32 ``[B, 3, H, W]`` with raw RGB values in [0, 255] at any height and
width, resizes it to the trained size ``S x S`` (bilinear, no antialiasing), scales it to [0, 1] and
returns ``embedding`` ``[B, D]``, L2-normalised (the model's own mean/std normalisation is inside it).
Search the run's index (``RUN/index``) with these vectors. For the same vectors as ``fabml retrieval
predict``, feed images already resized to ``S x S`` (predict resizes with Pillow's antialiased filter).

The export is checked against the torch model on sample images (:mod:`fabml.onnx_export`); the figures
are written to ``<name>.parity.json`` beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fabml.onnx_export import export_checked, parity_path, write_parity


class DeployEmbedding(nn.Module):
    """Resize to ``image_size`` + scale to [0, 1] + ``model.embed``, as one module (eval only)."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_size = int(image_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model.embed(x / 255.0)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: max_diff = max over samples and dimensions of
    ``|embedding_onnx - embedding_torch|`` (unit vectors, so unitless); parity: the JSON file with it."""

    path: Path
    max_diff: float
    n_images: int
    tolerance: float
    parity: Path


def export_onnx(model: nn.Module, image_size: int, path: str | Path, samples: torch.Tensor,
                tolerance: float = 1e-4) -> ExportReport:
    """Write the ONNX file of ``model`` (a RetrievalModel) and compare it with torch on ``samples``
    ``[N, 3, H, W]`` in [0, 255]; a difference above ``tolerance`` is an error and nothing is written."""
    path = Path(path)
    deploy = DeployEmbedding(model.cpu(), image_size).eval()
    diffs = export_checked(deploy, samples, path, "image", ["embedding"],
                           {"image": {0: "batch", 2: "height", 3: "width"}, "embedding": {0: "batch"}},
                           what="the retrieval model", tolerance=tolerance)
    report = ExportReport(path, diffs["embedding"], int(len(samples)), float(tolerance), parity_path(path))
    write_parity(path, {"model": getattr(getattr(model, "config", None), "backbone", "retrieval"),
                        "image_size": int(image_size), "n_images": report.n_images,
                        "max_embedding_diff": report.max_diff, "tolerance": report.tolerance})
    return report
