"""Rectangular cut-paste faults of known severity, for 1-channel inspection maps (HDMAP).

A fault is a rectangle cut from the image and pasted elsewhere in the same image with its
intensity raised in proportion to a severity ``s`` drawn uniformly in ``(0, severity_max]``::

    faulty[dst] = clip(image[src] + s * scale, 0, 1)        (images in [0, 1])

so the paste is additive and the result stays in the valid range. ``polarity`` chooses the sign:
``bright`` (the seed's, ``+ s * scale``), ``dark`` (``- s * scale``) or ``both`` (each faulty image
bright or dark with equal odds; real defects such as blowholes and cracks are darker than their
surroundings, so a model that has only seen brighter faults can miss them). Pixels outside the pasted
rectangles are returned unchanged. Patch geometry (all patches of one image share it):

- width ``w``: uniform in ``patch_width_range`` pixels at the reference size
  (``reference_size``, 256), scaled by ``W / reference_size`` for an image of width ``W``;
- ratio ``r = w / h`` (**width over height**, the horizontal side over the vertical one): uniform in
  ``patch_ratio_range``. ``r > 1`` is a landscape patch, wider than tall (the default (2.0, 4.0), the
  seed's "landscape": HDMAP faults are bands much wider than tall); ``r < 1`` portrait, e.g.
  (0.25, 0.5); ``r = 1`` (``(1.0, 1.0)``) square. Height ``h = round(w / r)``;
- when a portrait patch would be taller than the image, the width is drawn from the part of the
  range that fits (``w <= H * r``), so the ratio stays in range and the patch inside the image.

``patch_count`` rectangles (each with its own source and destination) are pasted with the same
size, ratio and severity. ``probability`` is the share of images that get a fault; the others
come back unchanged with an empty mask and severity 0. All randomness comes from the
``torch.Generator`` passed in (on the CPU), so a seeded generator per training step makes a
resumed run draw the same faults (see :class:`~fabml.engine.step_generator.StepGenerator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fabml.errors import ConfigError, DataError

POLARITIES = ("bright", "dark", "both")


@dataclass
class CutPasteFaultConfig:
    """Settings of :class:`CutPasteFaults` (see the module doc for the geometry).

    severity_max: upper end of the severity range (0, severity_max] (seed 10.0). scale: intensity
    added per unit of severity, as a fraction of the [0, 1] range (0.05: severity 10 adds 0.5).
    patch_width_range: (low, high) patch width in pixels at ``reference_size`` (seed (20, 80) at 256).
    patch_ratio_range: (low, high) of width / height (landscape (2.0, 4.0), portrait (0.25, 0.5),
    square (1.0, 1.0)). patch_count: rectangles per faulty image (1; 2 and 3 in the ablation).
    probability: share of images that get a fault (0.5). polarity: ``bright`` (seed) | ``dark`` | ``both``.
    """

    severity_max: float = 10.0
    scale: float = 0.05
    patch_width_range: tuple[float, float] = (20.0, 80.0)
    patch_ratio_range: tuple[float, float] = (2.0, 4.0)
    patch_count: int = 1
    probability: float = 0.5
    reference_size: int = 256
    polarity: str = "bright"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ConfigError naming the first invalid setting."""
        w_lo, w_hi = self.patch_width_range
        r_lo, r_hi = self.patch_ratio_range
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"faults.probability={self.probability} must be in [0, 1]")
        if not self.severity_max > 0:
            raise ConfigError(f"faults.severity_max={self.severity_max} must be > 0 (seed 10.0)")
        if not self.scale > 0:
            raise ConfigError(f"faults.scale={self.scale} must be > 0 (intensity added per unit of severity)")
        if self.reference_size < 1:
            raise ConfigError(f"faults.reference_size={self.reference_size} must be >= 1 (seed 256)")
        if not 0.0 < w_lo <= w_hi:
            raise ConfigError(f"faults.patch_width_range={tuple(self.patch_width_range)} must satisfy 0 < low <= high")
        if w_hi > self.reference_size:
            raise ConfigError(
                f"faults.patch_width_range={tuple(self.patch_width_range)} is wider than the "
                f"{self.reference_size}-pixel reference image; use widths <= faults.reference_size"
            )
        if not 0.0 < r_lo <= r_hi:
            raise ConfigError(
                f"faults.patch_ratio_range={tuple(self.patch_ratio_range)} must be positive with low <= high "
                "(width / height: landscape (2.0, 4.0), portrait (0.25, 0.5), square (1.0, 1.0))"
            )
        if self.polarity not in POLARITIES:
            raise ConfigError(f"faults.polarity={self.polarity!r} is unknown; choose one of: {', '.join(POLARITIES)}")
        if self.patch_count < 1:
            raise ConfigError(f"faults.patch_count={self.patch_count} must be >= 1")


class FaultBatch(NamedTuple):
    """What :class:`CutPasteFaults` returns for a batch of ``B`` images ``[B, C, H, W]``.

    images: ``[B, C, H, W]`` faulty images in [0, 1]; masks: ``[B, 1, H, W]`` {0, 1} where a patch
    was pasted; severity_map: ``[B, 1, H, W]`` the image's severity inside the mask, 0 outside;
    severity: ``[B]`` the image severity label (0 for an image left normal).
    """

    images: torch.Tensor
    masks: torch.Tensor
    severity_map: torch.Tensor
    severity: torch.Tensor


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=generator))


class CutPasteFaults:
    """Paste rectangular faults of known severity into a share of the images (see the module doc).

    >>> faults = CutPasteFaults(CutPasteFaultConfig(probability=1.0))  # doctest: +SKIP
    >>> out = faults(images, torch.Generator().manual_seed(0))  # doctest: +SKIP
    """

    def __init__(self, config: CutPasteFaultConfig | None = None) -> None:
        self.config = config or CutPasteFaultConfig()
        self.config.validate()

    def patch_size(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """One ``(h, w)`` in pixels for an image ``height x width``: ratio then width, both inside the image."""
        cfg = self.config
        factor = width / cfg.reference_size
        w_lo, w_hi = cfg.patch_width_range[0] * factor, cfg.patch_width_range[1] * factor
        ratio = _uniform(cfg.patch_ratio_range[0], cfg.patch_ratio_range[1], generator)
        w_hi = min(w_hi, width, height * ratio)  # the patch fits: w <= W and h = w / r <= H
        if w_hi < max(1.0, w_lo) - 1e-9:
            raise ConfigError(
                f"faults.patch_width_range={tuple(cfg.patch_width_range)} with patch_ratio_range="
                f"{tuple(cfg.patch_ratio_range)} does not fit an image of {height}x{width} pixels; "
                "lower the width range or use a wider ratio"
            )
        w = _uniform(max(1.0, w_lo), max(1.0, w_lo, w_hi), generator)
        w_px = min(width, max(1, int(round(w))))
        h_px = min(height, max(1, int(round(w_px / ratio))))
        return h_px, w_px

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> FaultBatch:
        """Faults for ``images`` ``[B, C, H, W]`` float in [0, 1]; deterministic given ``generator``."""
        cfg = self.config
        if images.ndim != 4 or not images.is_floating_point():
            raise DataError(
                f"CutPasteFaults expects float images [B, C, H, W], got {tuple(images.shape)} {images.dtype}"
            )
        b, _, height, width = images.shape
        faulty = images.clone()
        masks = torch.zeros(b, 1, height, width, dtype=images.dtype, device=images.device)
        severity = torch.zeros(b, dtype=images.dtype, device=images.device)
        chosen = (torch.rand(b, generator=generator) < cfg.probability).tolist()
        for i in range(b):
            if not chosen[i]:
                continue
            s = cfg.severity_max * (1.0 - _uniform(0.0, 1.0, generator))  # in (0, severity_max]
            h, w = self.patch_size(height, width, generator)
            # "both" draws its coin only then, so bright-only runs keep the seed's exact random stream
            dark = cfg.polarity == "dark" or (cfg.polarity == "both" and _uniform(0.0, 1.0, generator) < 0.5)
            shift = -s * cfg.scale if dark else s * cfg.scale
            for _ in range(cfg.patch_count):
                sy, sx = _randint(0, height - h, generator), _randint(0, width - w, generator)
                dy, dx = _randint(0, height - h, generator), _randint(0, width - w, generator)
                patch = images[i, :, sy:sy + h, sx:sx + w]
                faulty[i, :, dy:dy + h, dx:dx + w] = (patch + shift).clamp(0.0, 1.0)
                masks[i, 0, dy:dy + h, dx:dx + w] = 1.0
            severity[i] = s
        return FaultBatch(faulty, masks, masks * severity.view(b, 1, 1, 1), severity)

