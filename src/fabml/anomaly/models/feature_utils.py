"""Helpers shared by the feature-statistics models (PatchCore, PaDiM).

- :func:`concat_feature_maps`: bring multi-layer backbone maps to the first (finest) layer's
  grid and stack them along channels, as both papers do.
- :func:`flatten_patches`: ``[B, D, h, w]`` maps -> ``[B*h*w, D]`` patch embeddings.
- :func:`resize_buffers_for_load`: let ``load_state_dict`` accept fitted statistics whose size
  differs from the model's current (empty or other-sized) buffers.
- :func:`require_fitted`: the one-line error for using a model before ``fit``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.nn import functional as F

from fabml.errors import TrainingError


def concat_feature_maps(features: Sequence[torch.Tensor], mode: str = "bilinear") -> torch.Tensor:
    """Concatenate ``[B, C_i, h_i, w_i]`` maps on the grid of the first map.

    Deeper (coarser) maps are resized to ``(h_0, w_0)`` with ``mode`` (``bilinear`` with
    ``align_corners=False``, or ``nearest``). Returns ``[B, sum C_i, h_0, w_0]``.
    """
    size = features[0].shape[-2:]
    maps = [features[0]]
    for feat in features[1:]:
        if mode == "nearest":
            maps.append(F.interpolate(feat, size=size, mode="nearest"))
        else:
            maps.append(F.interpolate(feat, size=size, mode=mode, align_corners=False))
    return torch.cat(maps, dim=1)


def flatten_patches(embedding: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w]`` -> ``[B*h*w, D]``, rows ordered image by image, then row-major positions."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def resize_buffers_for_load(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, names: Iterable[str]
) -> None:
    """Replace each buffer in ``names`` by an empty tensor shaped like its entry in ``state_dict``.

    Call from ``_load_from_state_dict`` before the default copy, so a model built with an empty
    (unfitted) or differently sized memory bank loads any fitted one.
    """
    for name in names:
        key = prefix + name
        if key in state_dict:
            current = getattr(module, name)
            incoming = state_dict[key]
            if tuple(current.shape) != tuple(incoming.shape):
                setattr(module, name, torch.empty(incoming.shape, dtype=current.dtype, device=current.device))


def require_fitted(model: torch.nn.Module) -> None:
    """Raise ``TrainingError`` unless ``model.fitted`` (not checked while tracing/exporting)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    if not getattr(model, "fitted"):
        raise TrainingError(f"{type(model).__name__} is not fitted: run fit first (fabml anomaly fit)")
