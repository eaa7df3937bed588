"""PaDiM training: per-position mean and covariance from streaming sums (memory independent of N).

For each position ``i`` and shifted embeddings ``y = x - c_i`` (``c_i`` = the first batch's
mean, which keeps the sums well conditioned), ``fit`` accumulates

    n,  S1_i = sum y,  S2_i = sum y y^T

Each batch's products ``y^T y`` (``[P, d, d]``, one batched matmul) and sums are computed in
float32 and added into float32 partial sums, which are added into float64 running sums every
``FLUSH_IMAGES`` images: a partial sum holds few terms (<= 256 images), so its float32 rounding
is ~1e-6 relative, and the float64 totals keep the error from growing with the number of images.
(Adding every batch into the float64 sums directly cost more than the products: ~1 s per batch
of 16 at P = 4096, d = 100 on a busy 2-core CPU.) Then
    mu_i = c_i + S1_i / n,   Sigma_i = (S2_i - S1_i S1_i^T / n) / (n - 1) + eps·I

(the unbiased covariance, as ``numpy.cov``), then inverts each ``Sigma_i``. Peak memory:
``8·P·d·(d + 2)`` bytes for the sums (P = h·w positions, d = n_features; 4096 × 100 × 102 × 8
≈ 334 MB at 256 px with stride 4), ``4·P·d·(d + 1)`` bytes for the float32 partial sums (167 MB)
plus one batch of embeddings; the inversion runs over
blocks of positions so it adds at most one block.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Iterable

import torch

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.methods.patchcore import batch_images
from fabml.anomaly.models.padim import Padim
from fabml.errors import DataError

INVERT_BLOCK = 512  # positions inverted at once
FLUSH_IMAGES = 256  # images summed in float32 before the partial sums go into the float64 totals


class GaussianSums:
    """Streaming per-position first and second moments of ``[B, d, h, w]`` embeddings.

    Per-batch arithmetic in float32, running totals in float64 (module docstring).
    """

    def __init__(self, flush_images: int = FLUSH_IMAGES) -> None:
        self.count = 0
        self.flush_images = flush_images
        self.shift: torch.Tensor | None = None  # [P, d] float32
        self.sum: torch.Tensor | None = None  # [P, d] float64
        self.sum_outer: torch.Tensor | None = None  # [P, d, d] float64
        self._part: torch.Tensor | None = None  # [P, d] float32, since the last flush
        self._part_outer: torch.Tensor | None = None  # [P, d, d] float32
        self._pending = 0

    def add(self, embedding: torch.Tensor) -> None:
        """Accumulate one batch ``[B, d, h, w]``."""
        # contiguous: the batched products below are >10x slower on the permuted strides
        x = embedding.detach().float().flatten(2).permute(2, 0, 1).contiguous()  # [P, B, d] float32
        if self.shift is None:
            self.shift = x.mean(dim=1)
            positions, dim = self.shift.shape
            self.sum = torch.zeros(positions, dim, dtype=torch.float64, device=x.device)
            self.sum_outer = torch.zeros(positions, dim, dim, dtype=torch.float64, device=x.device)
            self._part = torch.zeros(positions, dim, device=x.device)
            self._part_outer = torch.zeros(positions, dim, dim, device=x.device)
        assert self._part is not None and self._part_outer is not None
        y = x - self.shift.unsqueeze(1)
        self._part.add_(y.sum(dim=1))
        self._part_outer.baddbmm_(y.transpose(1, 2), y)  # float32 batch products
        self.count += x.shape[1]
        self._pending += x.shape[1]
        if self._pending >= self.flush_images:
            self.flush()

    def flush(self) -> None:
        """Add the float32 partial sums into the float64 totals and reset them."""
        if not self._pending:
            return
        assert self.sum is not None and self.sum_outer is not None
        assert self._part is not None and self._part_outer is not None
        self.sum.add_(self._part)
        self.sum_outer.add_(self._part_outer)
        self._part.zero_()
        self._part_outer.zero_()
        self._pending = 0

    def covariance(self, eps: float, positions: slice = slice(None)) -> torch.Tensor:
        """Unbiased covariance plus ``eps·I``, ``[p, d, d]`` float64, of the positions in ``positions``."""
        self.flush()
        assert self.sum is not None and self.sum_outer is not None
        n = self.count
        s1 = self.sum[positions]
        outer = (s1 / n).unsqueeze(2) * s1.unsqueeze(1)  # S1 S1^T / n
        eye = torch.eye(s1.shape[1], dtype=torch.float64, device=s1.device)
        return (self.sum_outer[positions] - outer) / (n - 1) + eps * eye

    def gaussian(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[d, P]`` and inverse covariance ``[P, d, d]`` (float32) with ``eps`` on the diagonal."""
        self.flush()
        assert self.shift is not None and self.sum is not None and self.sum_outer is not None
        n = self.count
        mean_shift = self.sum / n  # [P, d]
        positions, dim = mean_shift.shape
        eye = torch.eye(dim, dtype=torch.float64, device=mean_shift.device)
        inv = torch.empty(positions, dim, dim, dtype=torch.float32, device=mean_shift.device)
        for start in range(0, positions, INVERT_BLOCK):
            sl = slice(start, start + INVERT_BLOCK)
            cov = self.covariance(eps, sl)
            # cov is SPD (eps > 0): Sigma^-1 = L^-T L^-1 with L = chol(Sigma), faster than linalg.inv
            chol_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye.expand_as(cov), upper=False)
            inv[sl] = (chol_inv.transpose(1, 2) @ chol_inv).float()
        return (self.shift.double() + mean_shift).t().float(), inv


@ANOMALY_METHODS.register("padim")
class PadimMethod(AnomalyMethod):
    """Fits a :class:`Padim` model: one pass over the normal images, no gradients."""

    memory_bank: ClassVar[bool] = True
    default_train: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 32, "drop_last": False}
    model: Padim

    @torch.no_grad()
    def fit(self, loader: Iterable[Any]) -> dict[str, float]:
        """Fit the per-position Gaussians on every batch of ``loader`` (normal images ``[B, C, H, W]``).

        Returns ``n_images``, ``positions`` (P), ``n_features`` (d) and ``fit_seconds``.
        """
        start = time.perf_counter()
        model = self.model
        model.eval()
        device = model.channel_index.device
        sums = GaussianSums()
        for batch in loader:
            images = batch_images(batch).to(device)
            model.check_input(images)
            sums.add(model.embed(images))
        if sums.count < 2:
            raise DataError(
                f"PaDiM fit needs at least 2 normal images for a covariance, got {sums.count}; "
                "add images to the normal image folder"
            )
        mean, inv_covariance = sums.gaussian(model.config.eps)
        model.set_gaussian(mean, inv_covariance)
        return {
            "n_images": sums.count,
            "positions": int(mean.shape[1]),
            "n_features": int(mean.shape[0]),
            "fit_seconds": time.perf_counter() - start,
        }
