"""Wafer-map augmentations on batched tensors ``[B,C,S,S]`` (channel 0 = failed die, 1 = wafer).

Every geometric op moves both channels of a sample together; every random parameter is drawn per
sample, vectorised over the batch, from the torch RNG of the tensor's device (so restoring the
trainer's RNG state makes a resumed run exact) or from ``generator`` when one is given.

The D4 group (8 rotations/flips, :mod:`fabml.data.d4`) is indexed by ``k``: ``k < 4`` is
``rot90`` by ``k``; ``k >= 4`` is a horizontal flip followed by ``rot90`` by ``k - 4``.

Against the outline/die-grid shortcut (a map's outline and die pitch identify it on their own):
the random resized crop changes the apparent die pitch and outline size, the small rotation and
bilinear resampling blur the die grid, and die noise makes individual dies unreliable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fabml.data.d4 import d4_apply, d4_compose, d4_inverse, d4_orbit, d4_transform  # noqa: F401  (public here too)
from fabml.errors import ConfigError, DataError


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0,1) of ``shape`` (float32) on ``like``'s device, from ``generator`` or the device's global RNG."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A D4 element drawn independently and uniformly for each sample of ``x [B,C,S,S]``."""
    ks = (_rand((x.shape[0],), x, generator) * 8).long().clamp_(max=7)
    return d4_apply(x, ks)


# ---------------------------------------------------------------- configuration

AUGMENT_PRESETS = ("none", "d4", "d4_crop", "d4_crop_noise", "full")


@dataclass
class AugmentConfig:
    """Augmentation settings (YAML section ``augment``); each op can be switched off.

    d4: a random rotation by 90k degrees and/or flip per sample.
    crop, crop_scale, crop_ratio: random resized crop; area fraction and aspect ratio (w/h) ranges.
    rotate, rotate_degrees: a small rotation drawn from U(-deg, +deg).
    die_noise, die_noise_rate: fraction of on-wafer dies whose state flips (good <-> failed).
    erase, erase_p, erase_scale, erase_ratio: with probability ``erase_p`` zero a rectangle (both
        channels) whose area fraction is drawn from ``erase_scale`` and aspect ratio from ``erase_ratio``.

    Ablation presets (:meth:`preset`): ``none`` (identity), ``d4``, ``d4_crop``, ``d4_crop_noise``
    and ``full`` (all five ops = the defaults).
    """

    d4: bool = True
    crop: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.0 / 0.9)
    rotate: bool = True
    rotate_degrees: float = 5.0
    die_noise: bool = True
    die_noise_rate: float = 0.01
    erase: bool = True
    erase_p: float = 0.1
    erase_scale: tuple[float, float] = (0.02, 0.1)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """The ablation preset ``name`` (one of :data:`AUGMENT_PRESETS`), other settings at their defaults."""
        ops = {
            "none": (),
            "d4": ("d4",),
            "d4_crop": ("d4", "crop"),
            "d4_crop_noise": ("d4", "crop", "die_noise"),
            "full": ("d4", "crop", "rotate", "die_noise", "erase"),
        }
        if name not in ops:
            raise ConfigError(f"augment preset {name!r} is unknown; use one of {list(AUGMENT_PRESETS)}")
        return cls(**{op: op in ops[name] for op in ("d4", "crop", "rotate", "die_noise", "erase")})

    def validate(self) -> None:
        """Raise ConfigError naming the setting when a value is out of range."""
        for name in ("crop_scale", "crop_ratio", "erase_scale", "erase_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"augment.{name}={[lo, hi]} must satisfy 0 < low <= high")
        if self.crop_scale[1] > 1 or self.erase_scale[1] > 1:
            raise ConfigError("augment.crop_scale and augment.erase_scale are area fractions and must be <= 1")
        for name in ("die_noise_rate", "erase_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}={getattr(self, name)} must be in [0, 1]")
        if not 0 <= self.rotate_degrees <= 180:
            raise ConfigError(f"augment.rotate_degrees={self.rotate_degrees} must be in [0, 180]")

    def enabled(self) -> list[str]:
        """Names of the ops switched on, in the order they are applied."""
        return [op for op in ("die_noise", "d4", "crop", "rotate", "erase") if getattr(self, op)]


# ---------------------------------------------------------------- the ops


def _uniform(lo: float, hi: float, n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * _rand((n,), like, generator)


def die_noise(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip the failed state (good <-> failed) of each on-wafer pixel with probability ``rate``.

    ``x [B,2,S,S]``; only pixels with wafer channel 1 change, and only in the fail channel. Noise
    acts on the resized grid: a pixel is a die when the map has about S dies a side, part of one
    when a smaller map was enlarged (isolated single-pixel fails, which the encoder learns to ignore).
    """
    flip = (_rand((x.shape[0], 1, *x.shape[-2:]), x, generator) < rate) & (x[:, 1:2] > 0.5)
    fail = torch.where(flip, 1 - x[:, :1], x[:, :1])
    return torch.cat([fail, x[:, 1:]], dim=1)


def crop_rotate(
    x: torch.Tensor,
    scale: tuple[float, float] | None,
    ratio: tuple[float, float],
    degrees: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop (``scale`` None = no crop) and rotation in one resampling, per sample.

    Output pixel ``u`` (normalised coords) reads input ``t + R(angle) diag(w, h) u``: a crop of
    width ``w`` and height ``h`` (fractions of the map, area ``w h`` from ``scale``) centred at ``t``
    (inside the map), rotated by ``angle``. Sampling is bilinear: a one-die-wide scratch,
    resampled at a slightly different scale and angle, stays a connected line of partial values,
    where nearest sampling drops or doubles pixels along it and breaks it up. The wafer channel
    is re-binarised at 0.5 so that it stays a 0/1 mask. Off-map pixels read 0 (no die).
    """
    b = x.shape[0]
    if scale is not None:
        area = _uniform(scale[0], scale[1], b, x, generator)
        log_r = _uniform(math.log(ratio[0]), math.log(ratio[1]), b, x, generator)
        w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
        h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
        # (1 - 1/S) keeps the outermost sample on or inside the outermost pixel centre.
        edge = 1 - 1 / x.shape[-1]
        tx = (2 * _rand((b,), x, generator) - 1) * (1 - w) * edge
        ty = (2 * _rand((b,), x, generator) - 1) * (1 - h) * edge
    else:
        w = h = torch.ones(b, device=x.device)
        tx = ty = torch.zeros(b, device=x.device)
    angle = _uniform(-degrees, degrees, b, x, generator) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([w * cos, -h * sin, tx], dim=1), torch.stack([w * sin, h * cos, ty], dim=1)], dim=1
    )  # [B,2,3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    wafer = (out[:, 1:2] >= 0.5).to(out.dtype)
    return torch.cat([out[:, :1], wafer], dim=1)


def random_erase(
    x: torch.Tensor,
    p: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``p`` per sample, set a random rectangle (inside the map) to 0 in every channel."""
    b, _, hgt, wid = x.shape
    apply = _rand((b,), x, generator) < p
    area = _uniform(scale[0], scale[1], b, x, generator) * hgt * wid
    log_r = _uniform(math.log(ratio[0]), math.log(ratio[1]), b, x, generator)
    eh = torch.sqrt(area / log_r.exp()).round().clamp(1, hgt)
    ew = torch.sqrt(area * log_r.exp()).round().clamp(1, wid)
    y0 = (_rand((b,), x, generator) * (hgt - eh + 1)).floor()
    x0 = (_rand((b,), x, generator) * (wid - ew + 1)).floor()
    ys = torch.arange(hgt, device=x.device)[None, :, None]
    xs = torch.arange(wid, device=x.device)[None, None, :]
    y0, x0, eh, ew = (t[:, None, None] for t in (y0, x0, eh, ew))
    inside = (ys >= y0) & (ys < y0 + eh) & (xs >= x0) & (xs < x0 + ew)
    mask = inside & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0)


class WaferAugment:
    """Callable augmentation ``x [B,2,S,S] float in [0,1] -> [B,2,S,S] float in [0,1]``.

    Order: die noise (on the exact 0/1 die grid) -> D4 -> crop + rotation (one resampling) -> erase.
    Runs in float32 with autocast disabled, whatever the caller's precision.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.cfg.validate()

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[-1] != x.shape[-2]:
            raise DataError(f"augmentations expect square 2-channel maps [B,2,S,S] (fail, wafer), got {tuple(x.shape)}")
        cfg = self.cfg
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if cfg.die_noise and cfg.die_noise_rate > 0:
                x = die_noise(x, cfg.die_noise_rate, generator)
            if cfg.d4:
                x = random_d4(x, generator)
            if cfg.crop or (cfg.rotate and cfg.rotate_degrees > 0):
                scale = tuple(cfg.crop_scale) if cfg.crop else None
                degrees = cfg.rotate_degrees if cfg.rotate else 0.0
                x = crop_rotate(x, scale, tuple(cfg.crop_ratio), degrees, generator)
            if cfg.erase and cfg.erase_p > 0:
                x = random_erase(x, cfg.erase_p, tuple(cfg.erase_scale), tuple(cfg.erase_ratio), generator)
        return x
