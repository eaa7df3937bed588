"""The dihedral group D4 (4 rotations, 4 reflections) on the last two dims of a tensor.

Shared by the jobs and the metrics (wafer augmentation, retrieval pseudo ground truth,
invariance figures), so that :mod:`fabml.metrics` needs no job. Element ``k``: ``k < 4`` is
``rot90`` by ``k``; ``k >= 4`` is a horizontal flip followed by ``rot90`` by ``k - 4``.
"""

from __future__ import annotations

import torch

from fabml.errors import ConfigError, DataError


def _check_k(k: int) -> None:
    if not 0 <= int(k) < 8:
        raise ConfigError(f"D4 element k={k} must be in 0..7")


def d4_transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply D4 element ``k`` to the last two dims of ``x [...,H,W]`` (any dtype)."""
    _check_k(k)
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def d4_inverse(k: int) -> int:
    """The element undoing ``k``: ``d4_transform(d4_transform(x, k), d4_inverse(k)) == x``."""
    _check_k(k)
    return (4 - k) % 4 if k < 4 else k  # every reflection is its own inverse


def d4_compose(a: int, b: int) -> int:
    """The element ``c`` with ``d4_transform(d4_transform(x, b), a) == d4_transform(x, c)`` (b first).

    Writing ``k = 4 f + r`` as ``R^r F^f`` and using ``F R = R^-1 F``:
    ``R^ra F^fa R^rb F^fb = R^(ra + (-1)^fa rb) F^(fa xor fb)``.
    """
    _check_k(a)
    _check_k(b)
    fa, ra = divmod(a, 4)
    fb, rb = divmod(b, 4)
    r = (ra + (-rb if fa else rb)) % 4
    return 4 * (fa ^ fb) + r


def d4_orbit(x: torch.Tensor) -> torch.Tensor:
    """All 8 transforms of square maps: ``[B,C,S,S] -> [8,B,C,S,S]`` (member k = ``d4_transform(x, k)``)."""
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"d4_orbit needs square maps, got shape {tuple(x.shape)}")
    return torch.stack([d4_transform(x, k) for k in range(8)])


def d4_apply(x: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Apply a D4 element per sample: ``x [B,C,S,S]``, ``ks [B]`` int in 0..7 -> ``[B,C,S,S]``."""
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"per-sample D4 needs square maps, got shape {tuple(x.shape)}")
    ks = ks.to(x.device)
    out = torch.empty_like(x)
    for k in range(8):
        sel = (ks == k).nonzero(as_tuple=True)[0]
        if sel.numel():
            out[sel] = d4_transform(x[sel], k)
    return out
