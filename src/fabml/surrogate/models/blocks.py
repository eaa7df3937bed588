"""Small building blocks shared by the surrogate's networks (no I/O, no training loop).

- :func:`group_norm`: GroupNorm with up to 8 groups that divide the channel count (batch-size
  independent, so batches of 1 and DDP shards normalise the same way).
- :class:`ResBlock2d`: pre-activation residual block ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``
  with a per-axis kernel (1 on an axis of size 1, else 3).
- :class:`SqueezeExcite`: channel gating ``x * sigmoid(W2 SiLU(W1 avgpool(x)))`` (Hu et al. 2018).
- :class:`DropPath`: stochastic depth (Huang et al. 2016): in training a residual branch is
  dropped for a whole sample with probability ``p`` and kept ones are scaled by ``1/(1-p)``.
- :func:`split_latents`: a head's ``[B, Z + S*L]`` output -> ``(z [B, Z], xs [B, S, L])``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with the largest group count <= ``max_groups`` dividing it."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def axis_kernel(size: int) -> tuple[int, int]:
    """``(kernel, padding)`` of a same-size conv along an axis of ``size`` positions: 3/1, or 1/0
    on an axis of size 1 (a 3-tap kernel there would only ever see zero padding)."""
    return (3, 1) if size > 1 else (1, 0)


class ResBlock2d(nn.Module):
    """Pre-activation residual block on ``[B, C, A, B']`` keeping shape; ``sizes`` = (A, B') picks
    the kernel per axis (see :func:`axis_kernel`). ``zero_init`` starts the branch's last conv at
    zero, so each block begins as the identity (faster, steadier early training)."""

    def __init__(self, channels: int, sizes: tuple[int, int], zero_init: bool = True) -> None:
        super().__init__()
        (ka, pa), (kb, pb) = axis_kernel(sizes[0]), axis_kernel(sizes[1])
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, (ka, kb), padding=(pa, pb))
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, (ka, kb), padding=(pa, pb))
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(h)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate on ``[B, C, H, W]`` with a ``C // reduction`` bottleneck."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class DropPath(nn.Module):
    """Stochastic depth on a residual branch ``[B, ...]``: identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p <= 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def split_latents(out: Tensor, latent_dim_end: int, stages: int, latent_dim: int) -> tuple[Tensor, Tensor]:
    """``[B, Z + S*L]`` -> ``(z [B, Z], xs [B, S, L])``."""
    z = out[:, :latent_dim_end]
    xs = out[:, latent_dim_end:].reshape(out.shape[0], stages, latent_dim)
    return z, xs
