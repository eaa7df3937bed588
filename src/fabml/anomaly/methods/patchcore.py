"""PatchCore training: build the memory bank as a greedy k-center coreset, streaming over the data.

Greedy k-center (Gonzalez 1985; PatchCore Alg. 1): start from one patch, then repeatedly add
the patch farthest from the centres chosen so far, keeping each patch's distance to its nearest
centre and updating it with one matrix-vector product per added centre (O(N·k) time, O(N)
extra memory). Its covering radius ``r = max_x min_c ||x - c||`` is at most twice the optimal
k-center radius. Selection runs on features mapped by a fixed Gaussian random projection
(``projection_dim`` columns, entries N(0, 1/projection_dim)), which keeps pairwise distances
within a small factor with high probability (Johnson–Lindenstrauss) and makes each update
cheaper; the bank stores the *unprojected* features of the chosen patches.

Streaming: patches arrive batch by batch and are cut into consecutive chunks of
``coreset_chunk`` patches. Each chunk is reduced at once by greedy k-center to its quota
``k_i = ceil(r·N_1..i) - ceil(r·N_1..i-1)`` (so the quotas add up to exactly ``ceil(r·N)``)
and only the chosen rows are kept. Guarantee: every training patch lies within the greedy
radius of its own chunk, ``r_i <= 2·OPT_{k_i}(chunk_i)``, of a bank row; when all patches
fit in one chunk this is exactly the paper's global coreset. A final greedy pass over the
union would cost O(k²) distance updates (hours on a CPU at benchmark sizes) and is not
done: for i.i.d. normal images every chunk needs about the same share of centres.

Peak memory of ``fit`` (float32 bytes, D = embedding dim, p = projection dim, S =
``coreset_chunk``, n_b = patches per batch, M = ceil(r·N) bank rows):
``4·[(S + n_b)·D + S·(p + 2) + M·D]`` plus the backbone activations of one batch —
independent of the number of training images except through the bank itself.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Iterable

import torch

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.models.feature_utils import flatten_patches
from fabml.anomaly.models.patchcore import PatchCore
from fabml.errors import DataError


def coreset_size(n_patches: int, ratio: float) -> int:
    """Bank rows kept from ``n_patches`` patches: ``ceil(ratio · n)``, 0 for no patches."""
    if n_patches <= 0:
        return 0
    return max(1, min(n_patches, math.ceil(ratio * n_patches - 1e-9)))  # 1e-9: 0.1·30 is 3, not 4


def greedy_kcenter(features: torch.Tensor, k: int, first: int = 0) -> tuple[torch.Tensor, float]:
    """Indices ``[k]`` (int64) chosen by greedy farthest-point selection, and the covering radius.

    features: ``[N, d]`` points; k: centres to choose (``1 <= k <= N``); first: index of the
    first centre. The radius ``max_x min_c ||x - c||`` is in the units of ``features``.
    """
    n = features.shape[0]
    feats = features.float()
    sq = feats.pow(2).sum(dim=1)
    min_d2 = torch.full((n,), float("inf"), dtype=feats.dtype, device=feats.device)
    chosen = torch.empty(k, dtype=torch.long, device=feats.device)
    current = int(first)
    for i in range(k):
        chosen[i] = current
        d2 = torch.addmv(sq, feats, feats[current], alpha=-2.0).add_(sq[current]).clamp_min_(0.0)
        torch.minimum(min_d2, d2, out=min_d2)
        min_d2[current] = 0.0  # rounding must never make a chosen point look uncovered
        current = int(torch.argmax(min_d2))
    return chosen, float(min_d2.max().sqrt())


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Fixed Gaussian projection ``[dim_in, dim_out]`` (N(0, 1/dim_out)); None when it would not reduce."""
    if dim_out <= 0 or dim_out >= dim_in:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=gen) / math.sqrt(dim_out)


class StreamingCoreset:
    """Chunk-wise greedy k-center over a stream of ``[n, D]`` patch embeddings (module docstring).

    ``add`` rows as they come; ``finish`` returns the bank ``[ceil(ratio·N), D]`` float32.
    """

    def __init__(self, ratio: float, chunk: int, projection: torch.Tensor | None, seed: int = 0) -> None:
        self.ratio = ratio
        self.chunk = chunk
        self.projection = projection
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.n_seen = 0
        self.kept: list[torch.Tensor] = []
        self.radii: list[float] = []

    def add(self, rows: torch.Tensor) -> None:
        """Queue rows ``[n, D]``; every full chunk of ``chunk`` rows is reduced immediately."""
        self.pending.append(rows.detach().float())
        self.n_pending += rows.shape[0]
        while self.n_pending >= self.chunk:
            block = torch.cat(self.pending)
            self.pending = [block[self.chunk :]] if block.shape[0] > self.chunk else []
            self.n_pending = block.shape[0] - self.chunk
            self._reduce(block[: self.chunk])

    def _reduce(self, block: torch.Tensor) -> None:
        before = coreset_size(self.n_seen, self.ratio)
        self.n_seen += block.shape[0]
        quota = coreset_size(self.n_seen, self.ratio) - before
        if quota == 0:
            return
        if quota == block.shape[0]:  # ratio 1.0: keep everything
            self.kept.append(block.clone())
            self.radii.append(0.0)
            return
        proj = block if self.projection is None else block @ self.projection.to(block.device)
        first = int(torch.randint(block.shape[0], (1,), generator=self.generator))
        idx, radius = greedy_kcenter(proj, quota, first)
        self.kept.append(block[idx].clone())
        self.radii.append(radius)

    def finish(self) -> torch.Tensor:
        """Reduce the last partial chunk and return the bank ``[M, D]``."""
        if self.n_pending:
            block = torch.cat(self.pending)
            self.pending, self.n_pending = [], 0
            self._reduce(block)
        return torch.cat(self.kept)


def batch_images(batch: Any) -> torch.Tensor:
    """The ``image`` tensor of a batch dict (or the batch itself when it is a tensor)."""
    return batch["image"] if isinstance(batch, dict) else batch


@ANOMALY_METHODS.register("patchcore")
class PatchCoreMethod(AnomalyMethod):
    """Fits a :class:`PatchCore` model: one pass over the normal images, no gradients."""

    memory_bank: ClassVar[bool] = True
    default_train: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 32, "drop_last": False}
    model: PatchCore

    @torch.no_grad()
    def fit(self, loader: Iterable[Any]) -> dict[str, float]:
        """Build the memory bank from every batch of ``loader`` (normal images ``[B, C, H, W]`` in [0, 1]).

        Returns ``memory_bank_size`` (M), ``n_images``, ``n_patches``, ``coverage_radius`` (the
        largest chunk radius, projected feature units) and ``fit_seconds``.
        """
        start = time.perf_counter()
        model, cfg = self.model, self.model.config
        model.eval()
        device = model.memory_bank.device
        projection = random_projection(model.embedding_dim, cfg.projection_dim, cfg.seed)
        coreset = StreamingCoreset(cfg.coreset_ratio, cfg.coreset_chunk, projection, cfg.seed)
        n_images = 0
        for batch in loader:
            images = batch_images(batch).to(device)
            model.check_input(images)
            coreset.add(flatten_patches(model.embed(images)))
            n_images += images.shape[0]
        if n_images == 0:
            raise DataError("PatchCore fit got no images: the training loader is empty; check the normal image folder")
        model.set_memory_bank(coreset.finish())
        return {
            "memory_bank_size": int(model.memory_bank.shape[0]),
            "n_images": n_images,
            "n_patches": coreset.n_seen,
            "coverage_radius": max(coreset.radii) if coreset.radii else 0.0,
            "fit_seconds": time.perf_counter() - start,
        }
