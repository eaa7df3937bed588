"""Rigid alignment of a test image onto its reference (golden template): translation + small rotation.

Convention (pixels, x = column to the right, y = row downwards, pixel ``(r, c)`` covers
``[c, c + 1) x [r, r + 1)`` so its centre is ``(c + 0.5, r + 0.5)``; the image centre is
``ctr = (W / 2, H / 2)``). A :class:`RigidTransform` ``(dx, dy, angle_deg)`` maps a point of the
reference to the same scene point in the test image::

    p_test = R(angle) (p_ref - ctr) + ctr + (dx, dy),   R(a) = [[cos a, -sin a], [sin a, cos a]]

so a positive angle turns the content clockwise on screen (y points down). The aligned image is
``aligned(p) = test(T p)``: the test image resampled on the reference's pixel grid.

Method (:func:`estimate_transform`), numpy + scipy only:

1. Both images (channel mean if ``[C, H, W]``) are high-passed (minus a Gaussian blur of
   ``sigma = highpass`` px, which removes gain/offset and smooth illumination gradients),
   lightly smoothed (``sigma = 1`` px against sensor noise) and multiplied by a Hann window.
2. Rotation: the test image is turned back by each candidate angle (steps of ``angle_step``
   degrees over ``[-max_angle, max_angle]``, then a fine search at ``angle_step / 5`` around the
   best one and a parabola through the three best fine scores); the score of an angle is the
   height of the phase-correlation peak with the reference. Images larger than ``COARSE_SIDE``
   (128 px) are searched on copies block-averaged down to about that side (step 4 then fits the
   angle at full resolution). After turning back by the right angle only a translation
   ``t' = R(-angle) t`` is left.
3. Translation: phase correlation (normalised cross-power spectrum, weighted by a Gaussian
   low-pass), integer peak, then a sub-pixel peak by a matrix-multiply upsampled DFT around it
   (factor ``upsample``, i.e. 1/20 px by default; Guizar-Sicairos et al., Opt. Lett. 2008).
4. Refinement (``refine=True``): a few Gauss-Newton (Lucas-Kanade) steps on the band-passed,
   std-normalised images fit (dx, dy, angle) directly, with Cauchy weights so that defects do not
   pull the fit; a correction larger than 1 px / 0.5 degree is rejected (the step-3 estimate is kept).
5. The test image is warped once (cubic spline, ``scipy.ndimage.map_coordinates``) and the
   residual misalignment (:func:`residual_shift`) is the root-mean-square pixel displacement of the
   rigid transform still found between the aligned image and the reference (step 3, then step 4
   fitting shift and angle, up to 2 px / 2 degrees), so a leftover turn counts as well.

Range: translations up to about a quarter of the image side (phase correlation is periodic;
beyond ``H / 2`` it wraps), rotations within ``max_angle`` (default 2 degrees; a larger value
costs proportionally more time). Accuracy measured on 24 generated 128 x 128 board images
(:mod:`fabml.data.template_pairs`: gain/offset, gradient, noise sigma 3 grey levels, shifts up to
3 px, rotations up to 1 degree, defects present): translation error <= 0.009 px (mean 0.004),
rotation error <= 0.006 degree (mean 0.002); without refinement 0.07 px and 0.17 degree. Known
shifts by ``scipy.ndimage.shift`` (integer and sub-pixel, up to 5 px) and turns by
``scipy.ndimage.rotate`` (up to 1.8 degrees) are recovered to 0.01 px and 0.005 degree. ``tests/data/test_alignment.py``
asserts looser tolerances. About 0.19 s per 128 x 128 pair and 0.33 s per 256 x 256 pair on one core
(images larger than ``COARSE_SIDE`` search the angle on a block-averaged copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fabml.errors import DataError

COARSE_SIDE = 128  # px: the angle search runs on images block-averaged down to about this side


@dataclass(frozen=True)
class RigidTransform:
    """Reference -> test mapping ``p_test = R(angle_deg)(p_ref - ctr) + ctr + (dx, dy)`` (pixels,
    degrees; ``ctr`` = image centre ``(W / 2, H / 2)``; see the module docstring)."""

    dx: float = 0.0
    dy: float = 0.0
    angle_deg: float = 0.0

    def apply(self, x: np.ndarray, y: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Test-image coordinates ``(x', y')`` of the reference points ``(x, y)`` (continuous
        pixels, any equal shapes) in images of ``size`` = (H, W)."""
        h, w = size
        a = math.radians(self.angle_deg)
        cx, cy = w / 2.0, h / 2.0
        u, v = np.asarray(x, np.float64) - cx, np.asarray(y, np.float64) - cy
        return (math.cos(a) * u - math.sin(a) * v + cx + self.dx,
                math.sin(a) * u + math.cos(a) * v + cy + self.dy)

    def inverse(self) -> RigidTransform:
        """The test -> reference transform in the same convention."""
        a = math.radians(-self.angle_deg)
        dx = -(math.cos(a) * self.dx - math.sin(a) * self.dy)
        dy = -(math.sin(a) * self.dx + math.cos(a) * self.dy)
        return RigidTransform(dx, dy, -self.angle_deg)


@dataclass
class Alignment:
    """Result of :func:`align`.

    ``aligned``: the test image on the reference grid, float64, same shape as the input
    (``[H, W]`` or ``[C, H, W]``); ``valid``: bool ``[H, W]``, True where the aligned pixel was
    sampled inside the test image (outside, the nearest edge pixel is repeated); ``transform``:
    the estimated reference -> test :class:`RigidTransform`; ``residual_px``: root-mean-square
    displacement in pixels of the transform still found between ``aligned`` and the reference; ``peak``: the
    phase-correlation peak height in [0, 1] (low values, e.g. < 0.05, mean the pair hardly matches).
    """

    aligned: np.ndarray
    valid: np.ndarray
    transform: RigidTransform
    residual_px: float
    peak: float


def _gray(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=0)
    if a.ndim != 2 or min(a.shape) < 8:
        raise DataError(f"{name} image has shape {tuple(np.shape(image))}; alignment needs [H, W] or [C, H, W] "
                        "with H, W >= 8")
    if not np.isfinite(a).all():
        raise DataError(f"{name} image holds NaN or infinite values; clean it before alignment")
    return a


def _prepare(gray: np.ndarray, highpass: float) -> np.ndarray:
    """High-passed, lightly smoothed, Hann-windowed copy of ``gray`` ``[H, W]``."""
    band = ndimage.gaussian_filter(gray, 1.0) - ndimage.gaussian_filter(gray, highpass)
    h, w = gray.shape
    return band * np.outer(np.hanning(h), np.hanning(w))


def _cross_power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-power spectrum ``A conj(B) / |A conj(B)|`` (whose inverse FFT peaks at the
    shift of ``a`` relative to ``b``), weighted by a Gaussian low-pass (sigma = 1/4 of Nyquist)."""
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-12 * np.abs(cross).max() + 1e-30
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    return cross * np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.125 ** 2))


def _upsampled_dft(cross: np.ndarray, size: int, factor: int, offset: tuple[float, float]) -> np.ndarray:
    """Inverse DFT of ``cross`` ``[H, W]`` on a ``size x size`` grid of step ``1 / factor`` px
    starting at (row, col) = ``offset`` (matrix-multiply DFT; Guizar-Sicairos et al. 2008)."""
    h, w = cross.shape
    rows = offset[0] + np.arange(size) / factor
    cols = offset[1] + np.arange(size) / factor
    kr = np.fft.fftfreq(h)
    kc = np.fft.fftfreq(w)
    er = np.exp(2j * np.pi * rows[:, None] * kr[None, :])
    ec = np.exp(2j * np.pi * kc[:, None] * cols[None, :])
    return (er @ cross @ ec).real / (h * w)


def phase_correlate(moving: np.ndarray, fixed: np.ndarray, upsample: int = 20) -> tuple[float, float, float]:
    """Shift ``(dx, dy)`` in pixels such that ``moving(p) ~ fixed(p - (dx, dy))`` and the peak height.

    Both are prepared ``[H, W]`` arrays (see :func:`_prepare`); the sub-pixel peak is found to
    ``1 / upsample`` px by an upsampled DFT on a 3 x 3 px neighbourhood of the integer peak.
    """
    cross = _cross_power(moving, fixed)
    corr = np.fft.ifft2(cross).real
    h, w = corr.shape
    r, c = np.unravel_index(int(np.argmax(corr)), corr.shape)
    r = r - h if r > h // 2 else r
    c = c - w if c > w // 2 else c
    size = 3 * upsample + 1
    fine = _upsampled_dft(cross, size, upsample, (r - 1.5, c - 1.5))
    fr, fc = np.unravel_index(int(np.argmax(fine)), fine.shape)
    peak = float(fine[fr, fc] / (np.abs(cross).sum() / (h * w) + 1e-30))
    return c - 1.5 + fc / upsample, r - 1.5 + fr / upsample, peak


def _rotate(prepared_test: np.ndarray, angle_deg: float) -> np.ndarray:
    """``prepared_test`` turned back by ``angle_deg`` about the centre: out(q) = in(R(angle)(q - ctr) + ctr)."""
    h, w = prepared_test.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x, y = RigidTransform(0.0, 0.0, angle_deg).apply(xx, yy, (h, w))
    return ndimage.map_coordinates(prepared_test, [y - 0.5, x - 0.5], order=1, mode="constant")


def _angle_score(prep_test: np.ndarray, prep_ref: np.ndarray, angle: float) -> float:
    return phase_correlate(_rotate(prep_test, angle), prep_ref, upsample=4)[2]


def _shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """``gray`` ``[H, W]`` averaged over ``factor x factor`` blocks (edges cropped to whole blocks)."""
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _search_angle(t: np.ndarray, ref: np.ndarray, max_angle: float, angle_step: float, highpass: float) -> float:
    """The rotation (degrees) whose turned-back test image best phase-correlates with the reference:
    coarse steps, then a fine search at ``angle_step / 5`` and a parabola through the best three. Images
    larger than ``COARSE_SIDE`` px are searched block-averaged down to about that size (the Lucas-Kanade
    refinement then fits the angle at full resolution)."""
    factor = max(1, int(round(max(t.shape) / COARSE_SIDE)))
    if factor > 1:
        t, ref, highpass = _shrink(t, factor), _shrink(ref, factor), max(2.0, highpass / factor)
    pt, pr = _prepare(t, highpass), _prepare(ref, highpass)
    n = max(1, int(math.ceil(max_angle / angle_step)))
    coarse = np.linspace(-max_angle, max_angle, 2 * n + 1)
    best = float(coarse[int(np.argmax([_angle_score(pt, pr, a) for a in coarse]))])
    step = (coarse[1] - coarse[0]) / 5.0
    fine = best + step * np.arange(-5, 6)
    scores = np.array([_angle_score(pt, pr, a) for a in fine])
    k = int(np.clip(np.argmax(scores), 1, len(fine) - 2))
    s0, s1, s2 = scores[k - 1:k + 2]
    denom = s0 - 2 * s1 + s2
    delta = 0.5 * (s0 - s2) / denom if denom < 0 else 0.0
    return float(fine[k] + np.clip(delta, -1, 1) * step)


def estimate_transform(test: np.ndarray, reference: np.ndarray, max_angle: float = 2.0, angle_step: float = 0.25,
                       highpass: float = 6.0, upsample: int = 20, refine: bool = True) -> tuple[RigidTransform, float]:
    """The reference -> test :class:`RigidTransform` and its phase-correlation peak height.

    ``test``, ``reference``: ``[H, W]`` or ``[C, H, W]`` arrays of the same H, W (any dtype/range).
    ``max_angle`` (degrees) bounds the rotation search; ``max_angle = 0`` searches translation only.
    """
    t, ref = _gray(test, "test"), _gray(reference, "reference")
    if t.shape != ref.shape:
        raise DataError(f"test image is {t.shape[0]}x{t.shape[1]} but its reference is {ref.shape[0]}x{ref.shape[1]}; "
                        "pair images of the same size (resize both to the same image_size)")
    if max_angle < 0 or angle_step <= 0:
        raise DataError(f"alignment needs max_angle >= 0 and angle_step > 0, got {max_angle} and {angle_step}")
    pt, pr = _prepare(t, highpass), _prepare(ref, highpass)
    angle = _search_angle(t, ref, max_angle, angle_step, highpass) if max_angle > 0 else 0.0
    # after turning the test image back by `angle` only the translation t' = R(-angle) t is left
    sx, sy, peak = phase_correlate(_rotate(pt, angle), pr, upsample)
    a = math.radians(angle)
    dx, dy = math.cos(a) * sx - math.sin(a) * sy, math.sin(a) * sx + math.cos(a) * sy
    transform = RigidTransform(float(dx), float(dy), angle)
    if refine:
        transform = _refine(t, ref, transform, highpass, rotate=max_angle > 0)
    return transform, peak


def _band(gray: np.ndarray, highpass: float) -> np.ndarray:
    return ndimage.gaussian_filter(gray, 1.0) - ndimage.gaussian_filter(gray, highpass)


def _refine(test: np.ndarray, ref: np.ndarray, transform: RigidTransform, highpass: float, rotate: bool,
            iterations: int = 6, max_shift: float = 1.0, max_turn: float = 0.5) -> RigidTransform:
    """Gauss-Newton (Lucas-Kanade) refinement of ``transform`` on band-passed, std-normalised images,
    with Cauchy weights against outliers (defects); at most a ``max_shift`` px / ``max_turn`` degree
    correction in total, else the starting estimate is kept."""
    h, w = ref.shape
    bt, br = _band(test, highpass), _band(ref, highpass)
    m = max(4, int(math.ceil(highpass)))
    inner = np.zeros((h, w), bool)
    inner[m:h - m, m:w - m] = True
    br = br / (br[inner].std() + 1e-12)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    start, current = transform, transform
    for _ in range(iterations):
        warped, valid = warp_to_reference(bt, current)
        use = inner & valid
        if use.sum() < 64:
            return start
        warped = warped / (warped[use].std() + 1e-12)
        gy, gx = np.gradient(warped)
        x, y = current.apply(xx, yy, (h, w))
        u, v = x - current.dx - w / 2.0, y - current.dy - h / 2.0  # R(angle)(p - ctr)
        cols = [gx[use], gy[use]] + ([(gy * u - gx * v)[use]] if rotate else [])
        jac = np.stack(cols, axis=1)
        err = (br - warped)[use]
        scale = 3.0 * (np.median(np.abs(err)) + 1e-12)
        wgt = 1.0 / (1.0 + (err / scale) ** 2)
        delta = np.linalg.lstsq(jac * wgt[:, None], err * wgt, rcond=None)[0]
        d_angle = math.degrees(delta[2]) if rotate else 0.0
        current = RigidTransform(current.dx + float(delta[0]), current.dy + float(delta[1]), current.angle_deg + d_angle)
        if abs(delta[0]) + abs(delta[1]) < 1e-3 and abs(d_angle) < 1e-4:
            break
    if math.hypot(current.dx - start.dx, current.dy - start.dy) > max_shift \
            or abs(current.angle_deg - start.angle_deg) > max_turn:
        return start
    return current


def warp_to_reference(test: np.ndarray, transform: RigidTransform, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(aligned, valid)``: ``test`` (``[H, W]`` or ``[C, H, W]``) resampled on the reference grid,
    ``aligned(p) = test(transform.apply(p))`` (spline of ``order``, edge pixels repeated outside),
    float64 of the input's shape, and bool ``[H, W]`` valid = sampled inside the test image."""
    a = np.asarray(test, dtype=np.float64)
    h, w = a.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x, y = transform.apply(xx, yy, (h, w))
    coords = [y - 0.5, x - 0.5]
    valid = (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    if a.ndim == 2:
        return ndimage.map_coordinates(a, coords, order=order, mode="nearest"), valid
    out = np.stack([ndimage.map_coordinates(ch, coords, order=order, mode="nearest") for ch in a])
    return out, valid


def align(test: np.ndarray, reference: np.ndarray, max_angle: float = 2.0, angle_step: float = 0.25,
          highpass: float = 6.0) -> Alignment:
    """Estimate the transform of ``test`` relative to ``reference``, warp ``test`` onto the
    reference grid and measure the misalignment left (see :class:`Alignment`; shapes
    ``[H, W]`` or ``[C, H, W]``, same H, W)."""
    transform, peak = estimate_transform(test, reference, max_angle, angle_step, highpass)
    aligned, valid = warp_to_reference(test, transform)
    residual = residual_shift(aligned, reference, highpass)
    return Alignment(aligned, valid, transform, residual, peak)


def residual_shift(aligned: np.ndarray, reference: np.ndarray, highpass: float = 6.0) -> float:
    """Misalignment left between ``aligned`` and ``reference`` (``[H, W]`` or ``[C, H, W]``), in pixels:
    the root-mean-square displacement over all pixels of the rigid transform still found between them
    (phase-correlation shift, then the Lucas-Kanade refinement fitting shift and angle, up to 2 px / 2 degrees;
    no angle search, since what is left after alignment is small), ``sqrt(|t|^2 + angle^2 * mean |p - ctr|^2)``, so a
    leftover rotation counts as well as a shift."""
    t, ref = _gray(aligned, "aligned"), _gray(reference, "reference")
    sx, sy, _ = phase_correlate(_prepare(t, highpass), _prepare(ref, highpass))
    res = _refine(t, ref, RigidTransform(sx, sy, 0.0), highpass, rotate=True, iterations=10, max_shift=2.0, max_turn=2.0)
    h, w = np.shape(aligned)[-2:]
    mean_r2 = (w * w + h * h) / 12.0  # mean |p - ctr|^2 over the image rectangle
    return float(math.sqrt(res.dx ** 2 + res.dy ** 2 + math.radians(res.angle_deg) ** 2 * mean_r2))
