"""Turn wafer-map tensors into embeddings: the learned encoder, its D4 orbit, and the PCA baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from fabml.data.wafer_dataset import select_channels
from fabml.wafer.augment import d4_transform

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


class PCABaseline:
    """Baseline embedding: PCA of the resized failed-die maps (no learning beyond PCA).

    ``fit`` on reference tensors ``[N,2,S,S]``; the result is an :data:`EmbedFn` like the encoder's,
    so the baseline goes through exactly the same evaluation. The embedding has ``min(dim, N, S*S)``
    dimensions (PCA has no more components than maps or pixels).
    """

    def __init__(self, dim: int = 128, seed: int = 0) -> None:
        self.dim = dim
        self.pca = PCA(n_components=dim, random_state=seed, svd_solver="randomized")

    @staticmethod
    def _flat(x: torch.Tensor) -> np.ndarray:
        return x[:, 0].reshape(len(x), -1).float().numpy()

    def fit(self, tensors: torch.Tensor) -> PCABaseline:
        flat = self._flat(tensors)
        self.pca.set_params(n_components=min(self.dim, *flat.shape))
        self.pca.fit(flat)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.from_numpy(self.pca.transform(self._flat(x)).astype(np.float32))
        return nn.functional.normalize(z, dim=1)
