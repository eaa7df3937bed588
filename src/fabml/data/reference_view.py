"""A reference (golden template) brought onto its test image's pixel grid, for a pixel-by-pixel comparison.

:func:`reference_on_image` aligns the reference onto the test image with
:func:`fabml.data.alignment.align` (translation + rotation; the reference is the moving image, so
the comparison, the anomaly map and any mask or box stay in the test image's own pixels), then
matches its light to the test image per channel by a robust least-squares fit over the pixels the
warp covers::

    ref'(x, y) = a · ref_aligned(x, y) + b + c · x / S + d · y / S     (S = max(H, W))

(gain, offset and a linear gradient; three rounds of Cauchy reweighting, so a defect does not
pull the fit). Pixels the warp could not fill (outside the reference) take the test image's
value, so they compare as equal instead of as a false defect at the border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fabml.data.alignment import RigidTransform, align


@dataclass(frozen=True)
class ReferenceView:
    """``reference``: uint8 ``[C, H, W]`` aligned, light-matched reference on the test image's grid;
    ``offset``: the test image's rigid offset relative to its reference (reference -> test
    :class:`RigidTransform`, the convention of ``pairs.csv`` of :mod:`fabml.data.template_pairs`);
    ``residual_px``: misalignment left after the warp (rms pixels); ``peak``: phase-correlation peak
    (< 0.05: the pair hardly matches); ``coverage``: share of test pixels the reference covers."""

    reference: np.ndarray
    offset: RigidTransform
    residual_px: float
    peak: float
    coverage: float


def _inverse(t: RigidTransform) -> RigidTransform:
    """The inverse rigid transform: ``p = R(a)(q - c) + c + t``  <=>  ``q = R(-a)(p - c) + c - R(-a) t``."""
    a = math.radians(-t.angle_deg)
    return RigidTransform(-(math.cos(a) * t.dx - math.sin(a) * t.dy), -(math.sin(a) * t.dx + math.cos(a) * t.dy),
                          -t.angle_deg)


def match_light(reference: np.ndarray, image: np.ndarray, valid: np.ndarray, rounds: int = 3) -> np.ndarray:
    """``reference`` ``[H, W]`` (float) with gain, offset and linear gradient fitted to ``image`` ``[H, W]``
    over ``valid`` pixels (module docstring)."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    design = np.stack([reference[valid], np.ones(int(valid.sum())), xx[valid], yy[valid]], axis=1)
    target = image[valid]
    weights = np.ones(len(target))
    coef = np.array([1.0, 0.0, 0.0, 0.0])
    for _ in range(rounds + 1):
        coef = np.linalg.lstsq(design * weights[:, None], target * weights, rcond=None)[0]
        resid = target - design @ coef
        scale = 3.0 * float(np.median(np.abs(resid))) + 1e-6
        weights = 1.0 / (1.0 + (resid / scale) ** 2)
    return coef[0] * reference + coef[1] + coef[2] * xx + coef[3] * yy


def reference_on_image(image: np.ndarray, reference: np.ndarray, max_angle: float = 2.0) -> ReferenceView:
    """``reference`` brought onto ``image`` (both uint8 ``[C, H, W]`` of one size; module docstring)."""
    img = np.asarray(image, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    result = align(ref, img, max_angle=max_angle)  # the reference moves onto the test image's grid
    aligned = result.aligned.reshape(img.shape)
    valid = result.valid
    out = np.empty_like(img)
    for c in range(img.shape[0]):
        matched = match_light(aligned[c], img[c], valid) if valid.sum() > 16 else aligned[c]
        out[c] = np.where(valid, matched, img[c])
    return ReferenceView(np.clip(np.rint(out), 0, 255).astype(np.uint8), _inverse(result.transform),
                         float(result.residual_px), float(result.peak), float(valid.mean()))
