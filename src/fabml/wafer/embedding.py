"""Turn wafer-map tensors into embeddings: the learned encoder and its D4 orbit.

The model-free baselines (PCA, raw pixels, Wu 2015 features) live in :mod:`fabml.wafer.baselines` and
follow the same :data:`EmbedFn` contract; ``PCABaseline`` is re-exported here for older imports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fabml.data.wafer_dataset import select_channels
from fabml.wafer.augment import d4_transform
from fabml.wafer.baselines import PCABaseline  # noqa: F401  (re-exported: its home was this module)

__all__ = ["EmbedFn", "PCABaseline", "d4_averaged", "embed_d4_orbits", "embed_tensors", "encoder_embed_fn"]

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


def encoder_embed_fn(encoder: nn.Module, outline_channel: bool, device: torch.device | str = "cpu") -> EmbedFn:
    """Wrap an encoder as ``x [B,2,S,S] -> L2-normalised embeddings [B,D]`` (eval mode, no grad)."""
    encoder = encoder.to(device).eval()

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        z = encoder(select_channels(x.to(device), outline_channel))
        return nn.functional.normalize(z.float(), dim=1).cpu()

    return embed


def d4_averaged(embed: EmbedFn) -> EmbedFn:
    """Test-time D4 averaging: the mean of the 8 orbit embeddings, re-normalised ([B,D])."""

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = sum(embed(d4_transform(x, k)) for k in range(8))
        return nn.functional.normalize(total, dim=1)

    return averaged


def embed_tensors(embed: EmbedFn, tensors: torch.Tensor, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """Embed ``tensors [N,2,S,S]`` (uint8 or float) in batches; returns float32 ``[N,D]``."""
    chunks = []
    starts = range(0, len(tensors), batch_size)
    if progress:  # a bar on a terminal only; nothing at all when stderr goes to a file
        from fabml.console import track

        starts = track(starts, "embedding", len(starts))
    for start in starts:
        chunks.append(embed(tensors[start : start + batch_size].float()).numpy())
    return np.concatenate(chunks).astype(np.float32)


def embed_d4_orbits(embed: EmbedFn, tensors: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Embed every member of each map's D4 orbit: returns ``[N,8,D]`` (member k = ``d4_transform(x, k)``)."""
    per_k = [embed_tensors(lambda x, k=k: embed(d4_transform(x, k)), tensors, batch_size) for k in range(8)]
    return np.stack(per_k, axis=1)
