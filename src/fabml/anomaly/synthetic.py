"""DRAEM-style synthetic anomalies: Perlin-noise masks filled with a foreign texture.

Used to train DRAEM (Zavrtanik et al., ICCV 2021) and to calibrate thresholds when no real
defect is available. No texture dataset is needed: the texture is another image of the batch
(shuffled, flipped and colour-jittered with three random DRAEM-like operations) or generated
smooth noise. The blend follows the DRAEM paper, with ``beta`` the opacity of the texture::

    augmented = image * (1 - M) + beta * texture * M + (1 - beta) * image * M

so pixels outside the mask ``M`` are left exactly as they were. All randomness comes from the
``torch.Generator`` passed in (on the CPU), so a seed gives the same anomalies on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from fabml.errors import ConfigError, DataError

TEXTURE_SOURCES = ("images", "noise")


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero 1st and 2nd derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise_2d(
    shape: tuple[int, int], res: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gradient (Perlin) noise ``[H, W]`` in [-1, 1] with ``res = (ry, rx)`` lattice cells per axis.

    A random unit gradient sits on each of the ``(ry + 1) x (rx + 1)`` lattice points; a pixel's
    value is the fade-weighted interpolation of its four corner dot products, scaled by sqrt(2)
    so that the range is [-1, 1]. When H (W) is not a multiple of ry (rx), the noise is made at
    the next multiple and cropped, so every cell spans a whole number of pixels.
    """
    (h, w), (ry, rx) = shape, res
    if min(h, w, ry, rx) < 1:
        raise ConfigError(f"perlin noise needs positive shape and res, got shape={shape}, res={res}")
    dy, dx = math.ceil(h / ry), math.ceil(w / rx)  # cell size in pixels
    angles = 2.0 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    gy, gx = torch.sin(angles), torch.cos(angles)  # unit gradient per lattice point
    iy, ix = torch.arange(h), torch.arange(w)
    cy, cx = iy // dy, ix // dx  # cell of each row / column
    fy = ((iy % dy).float() / dy)[:, None]  # position inside the cell, [H, 1]
    fx = ((ix % dx).float() / dx)[None, :]  # [1, W]

    def corner(oy: int, ox: int) -> torch.Tensor:
        """Dot product of each pixel's (oy, ox) corner gradient with its offset from that corner."""
        rows, cols = cy + oy, cx + ox  # two index_selects are much faster than one 2-D gather
        g_y = gy.index_select(0, rows).index_select(1, cols)  # [H, W]
        g_x = gx.index_select(0, rows).index_select(1, cols)
        return g_y * (fy - oy) + g_x * (fx - ox)

    u, v = _fade(fy), _fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), v)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), v)
    return math.sqrt(2.0) * torch.lerp(top, bottom, u)


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``[H, W]`` about its centre in pixel space (aspect-correct); outside is zero."""
    h, w = x.shape
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    return F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high, (1,), generator=generator))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def perlin_mask(
    shape: tuple[int, int], generator: torch.Generator | None = None, min_scale: int = 0, max_scale: int = 6,
    threshold: float = 0.5, rotate: bool = True,
) -> torch.Tensor:
    """Binary anomaly mask ``[H, W]`` in {0, 1}: thresholded Perlin noise, as in DRAEM.

    Each axis gets ``2**k`` cells with ``k`` drawn in ``[min_scale, max_scale)`` (DRAEM: 0..5),
    capped at the side length; the noise is rotated by a uniform angle in [-90, 90] degrees when
    ``rotate`` (corners uncovered by the rotation are zero) and thresholded at ``> threshold``.
    """
    if not 0 <= min_scale < max_scale:
        raise ConfigError(f"perlin scales need 0 <= min_scale < max_scale, got {min_scale}, {max_scale}")
    h, w = shape
    ky, kx = _randint(min_scale, max_scale, generator), _randint(min_scale, max_scale, generator)
    res = (min(2**ky, h), min(2**kx, w))
    noise = perlin_noise_2d((h, w), res, generator)
    if rotate:
        noise = _rotate(noise, _uniform(-90.0, 90.0, generator))
    return (noise > threshold).float()


@dataclass
class SyntheticAnomalyConfig:
    """How synthetic anomalies are drawn.

    probability: share of images that get an anomaly. beta_range: (low, high) of the texture
    opacity ``beta`` inside the mask (DRAEM paper: [0.1, 1.0]). texture_source: ``images`` (another
    image of the batch, jittered) or ``noise`` (generated smooth noise, jittered).
    min_area_fraction: a mask covering less of the image is redrawn, up to ``max_tries`` times;
    after that the image stays normal (label 0). perlin_*: see :func:`perlin_mask`.
    """

    probability: float = 0.5
    beta_range: tuple[float, float] = (0.1, 1.0)
    texture_source: str = "images"
    min_area_fraction: float = 0.002
    max_tries: int = 5
    perlin_min_scale: int = 0
    perlin_max_scale: int = 6
    perlin_threshold: float = 0.5
    rotate: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        lo, hi = self.beta_range
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"synthetic.probability={self.probability} must be in [0, 1]")
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"synthetic.beta_range={tuple(self.beta_range)} must satisfy 0 <= low <= high <= 1")
        if self.texture_source not in TEXTURE_SOURCES:
            raise ConfigError(
                f"synthetic.texture_source='{self.texture_source}' is unknown; "
                f"choose one of: {', '.join(TEXTURE_SOURCES)}"
            )
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ConfigError(f"synthetic.min_area_fraction={self.min_area_fraction} must be in [0, 1)")
        if self.max_tries < 1:
            raise ConfigError(f"synthetic.max_tries={self.max_tries} must be at least 1")
        if not 0 <= self.perlin_min_scale < self.perlin_max_scale:
            raise ConfigError(
                f"synthetic.perlin_min_scale={self.perlin_min_scale} must be >= 0 and "
                f"< perlin_max_scale={self.perlin_max_scale}"
            )


# --------------------------------------------------------------------------- texture jitter
# Each op maps a texture [C, H, W] in [0, 1] to [0, 1], drawing its parameters from the generator
# (the DRAEM paper picks 3 of: gamma, brightness/contrast, solarize, posterize, invert,
# autocontrast, equalize, hue — here channel shuffle stands in for hue on colour images).

Op = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _gamma(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x.clamp(0.0, 1.0).pow(_uniform(0.5, 2.0, g))


def _contrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2), keepdim=True)
    return ((x - mean) * _uniform(0.5, 1.5, g) + mean + _uniform(-0.2, 0.2, g)).clamp(0.0, 1.0)


def _solarize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    t = _uniform(0.125, 0.5, g)
    return torch.where(x > t, 1.0 - x, x)


def _posterize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    levels = 2 ** _randint(2, 6, g)
    return torch.floor(x * levels).clamp(max=levels - 1) / (levels - 1)


def _invert(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return 1.0 - x


def _autocontrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def _equalize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Histogram equalisation per channel on 256 grey levels."""
    q = (x.clamp(0.0, 1.0) * 255.0).round().long().flatten(1)  # [C, H*W]
    hist = torch.zeros(q.shape[0], 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(1) / q.shape[1]
    return cdf.gather(1, q).view_as(x).to(x.dtype)


def _channel_shuffle(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x[torch.randperm(x.shape[0], generator=g).to(x.device)]


_OPS: tuple[Op, ...] = (_gamma, _contrast, _solarize, _posterize, _invert, _autocontrast, _equalize)


def jitter_texture(x: torch.Tensor, generator: torch.Generator | None = None, n_ops: int = 3) -> torch.Tensor:
    """Random flips (and a 90-degree turn when square), then ``n_ops`` distinct colour ops."""
    if float(torch.rand((), generator=generator)) < 0.5:
        x = x.flip(-1)
    if float(torch.rand((), generator=generator)) < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2]:
        x = torch.rot90(x, _randint(0, 4, generator), dims=(-2, -1))
    ops = _OPS + ((_channel_shuffle,) if x.shape[0] == 3 else ())
    for i in torch.randperm(len(ops), generator=generator)[:n_ops].tolist():
        x = ops[i](x, generator)
    return x


def noise_texture(shape: tuple[int, int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random texture ``[C, H, W]`` in [0, 1]: two octaves of Perlin noise per channel,
    stretched to the full range."""
    c, h, w = shape
    layers = []
    for _ in range(c):
        k = _randint(1, 5, generator)
        coarse = perlin_noise_2d((h, w), (min(2**k, h), min(2**k, w)), generator)
        fine = perlin_noise_2d((h, w), (min(2 ** (k + 2), h), min(2 ** (k + 2), w)), generator)
        layers.append(coarse + 0.5 * fine)
    return _autocontrast(torch.stack(layers), generator)


def synthesize_anomalies(
    images: torch.Tensor, cfg: SyntheticAnomalyConfig | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste Perlin-shaped textures into a share of the images.

    images: ``[B, C, H, W]`` float in [0, 1]. Returns ``augmented`` ``[B, C, H, W]`` in [0, 1]
    (equal to ``images`` wherever the mask is 0), ``masks`` ``[B, 1, H, W]`` in {0, 1} and
    ``labels`` ``[B]`` float (1 where a mask was pasted). Deterministic given ``generator``.
    """
    cfg = cfg or SyntheticAnomalyConfig()
    cfg.validate()
    if images.ndim != 4 or not images.is_floating_point():
        raise DataError(
            f"synthesize_anomalies expects float images [B, C, H, W], got {tuple(images.shape)} {images.dtype}"
        )
    b, c, h, w = images.shape
    masks = torch.zeros(b, 1, h, w, dtype=images.dtype, device=images.device)
    labels = torch.zeros(b, dtype=images.dtype, device=images.device)
    augmented = images.clone()
    chosen = (torch.rand(b, generator=generator) < cfg.probability).tolist()
    order = torch.randperm(b, generator=generator).tolist()
    partner = {order[j]: order[(j + 1) % b] for j in range(b)}  # another image when b >= 2
    for i in range(b):
        if not chosen[i]:
            continue
        for _ in range(cfg.max_tries):
            mask = perlin_mask(
                (h, w), generator, cfg.perlin_min_scale, cfg.perlin_max_scale, cfg.perlin_threshold, cfg.rotate
            )
            if float(mask.mean()) >= max(cfg.min_area_fraction, 1e-12):
                break
        else:
            continue  # no mask large enough: the image stays normal
        if cfg.texture_source == "images":
            texture = images[partner[i]]
        else:
            texture = noise_texture((c, h, w), generator).to(images.device, images.dtype)
        texture = jitter_texture(texture, generator)
        beta = _uniform(cfg.beta_range[0], cfg.beta_range[1], generator)
        m = mask.to(images.device, images.dtype)[None]
        blended = images[i] * (1 - m) + beta * texture * m + (1 - beta) * images[i] * m
        augmented[i] = torch.where(m > 0, blended.clamp(0.0, 1.0), images[i])
        masks[i, 0] = m[0]
        labels[i] = 1.0
    return augmented, masks, labels
