"""Scoring loops: a fitted model over a data loader, raw outputs gathered on the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from fabml.console import track
from fabml.errors import TrainingError


@dataclass
class ScoredSet:
    """Raw model outputs for a set of images, in loader order.

    scores: ``[N]`` raw image scores; maps: ``[N, H, W]`` float32 raw pixel scores (or None when
    not kept); labels: ``[N]`` 0/1; masks: ``[N, H, W]`` uint8 {0,1}; indices: ``[N]`` dataset indices;
    severities: ``[N]`` predicted fault severities of a model with a severity head (``pred_severity``), else None.
    """

    scores: np.ndarray
    maps: np.ndarray | None
    labels: np.ndarray
    masks: np.ndarray
    indices: np.ndarray
    severities: np.ndarray | None = None


def track_batches(loader: Iterable, description: str, total: int | None = None) -> Iterable:
    """``loader`` with a transient progress bar on a terminal; silent (no blank lines) when stderr is a file."""
    return track(loader, description, total)


@torch.no_grad()
def score_batches(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    keep_maps: bool = True,
    description: str = "scoring",
) -> ScoredSet:
    """Run ``model`` (eval mode) over every batch; NaN outputs raise a one-line TrainingError."""
    model.eval()
    scores, maps, labels, masks, indices, severities = [], [], [], [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in track_batches(loader, description, total):
        out = model(batch["image"].to(device))
        score = out.pred_score.float().cpu()
        if not torch.isfinite(score).all():
            raise TrainingError(
                f"{type(model).__name__} produced non-finite anomaly scores; the fit diverged: refit with a lower "
                "train.lr or check the training images"
            )
        scores.append(score.numpy())
        severity = getattr(out, "pred_severity", None)
        if severity is not None:
            severities.append(severity.float().cpu().numpy())
        if keep_maps:
            maps.append(out.anomaly_map[:, 0].float().cpu().numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"][:, 0].numpy().astype(np.uint8))
        indices.append(batch["index"].numpy())
    if not scores:
        raise TrainingError("nothing to score: the image set is empty")
    return ScoredSet(
        scores=np.concatenate(scores),
        maps=np.concatenate(maps) if keep_maps else None,
        labels=np.concatenate(labels),
        masks=np.concatenate(masks),
        indices=np.concatenate(indices),
        severities=np.concatenate(severities) if severities else None,
    )
