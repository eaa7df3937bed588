"""Rigid alignment of a test image onto its reference: known shifts and turns are recovered, the
residual is small, and aligning a generated pair brings it close to its golden image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from fabml.data.alignment import RigidTransform, align, estimate_transform, warp_to_reference
from fabml.data.template_pairs import generate_template_pairs
from fabml.errors import DataError


@pytest.fixture(scope="module")
def golden() -> np.ndarray:
    data = generate_template_pairs(n_layouts=1, n_good=1, n_defect=0, size=128, seed=7)
    return data.goldens["layout_000"].astype(np.float64)


@pytest.mark.parametrize("dx, dy", [(3, -2), (-5, 4), (0.5, -0.25), (1.3, 2.7), (-2.6, 0.4)])
def test_recovers_known_shift(golden: np.ndarray, dx: float, dy: float) -> None:
    rng = np.random.default_rng(0)
    test = ndimage.shift(golden, (dy, dx), order=3, mode="reflect") + rng.normal(0, 3, golden.shape)
    result = align(test, golden)
    assert result.transform.dx == pytest.approx(dx, abs=0.05)
    assert result.transform.dy == pytest.approx(dy, abs=0.05)
    assert abs(result.transform.angle_deg) < 0.03
    assert result.residual_px < 0.1 and result.peak > 0.5


@pytest.mark.parametrize("angle", [0.3, -0.7, 1.8])
def test_recovers_known_rotation(golden: np.ndarray, angle: float) -> None:
    rng = np.random.default_rng(1)
    # scipy turns the content counter-clockwise on screen for a positive angle: -angle in our convention
    test = ndimage.rotate(golden, angle, reshape=False, order=3, mode="reflect") + rng.normal(0, 3, golden.shape)
    result = align(test, golden)
    assert result.transform.angle_deg == pytest.approx(-angle, abs=0.03)
    assert math.hypot(result.transform.dx, result.transform.dy) < 0.05
    assert result.residual_px < 0.1


def test_generated_pairs_recovered_and_closer_to_golden() -> None:
    data = generate_template_pairs(n_layouts=2, n_good=2, n_defect=2, size=96, seed=11)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    inner = np.zeros((96, 96), bool)
    inner[6:-6, 6:-6] = True

    def light_residual(image: np.ndarray, golden: np.ndarray, use: np.ndarray) -> float:
        design = np.stack([golden, np.ones_like(golden), xx, yy], axis=-1)
        coef = np.linalg.lstsq(design[use], image[use], rcond=None)[0]
        return float(np.abs(image - design @ coef)[use].mean())

    for s in data.samples:
        golden = data.goldens[s.layout].astype(np.float64)
        result = align(s.image, golden, max_angle=1.5)
        t, e = s.transform, result.transform
        assert math.hypot(e.dx - t.dx, e.dy - t.dy) < 0.1, s.name
        assert abs(e.angle_deg - t.angle_deg) < 0.03, s.name
        assert result.residual_px < 0.15, s.name
        use = inner & result.valid
        before = light_residual(s.image.astype(np.float64), golden, use)
        after = light_residual(result.aligned, golden, use)
        assert after < 0.5 * before, (s.name, before, after)


def test_channels_valid_mask_and_translation_only(golden: np.ndarray) -> None:
    test = ndimage.shift(golden, (0, 3), order=3, mode="nearest")
    result = align(np.stack([test, 0.5 * test + 10]), golden, max_angle=0)
    assert result.aligned.shape == (2, 128, 128) and result.transform.angle_deg == 0.0
    assert result.transform.dx == pytest.approx(3, abs=0.05)
    assert not result.valid[:, -2:].any() and result.valid[:, :-4].all()
    assert np.abs(result.aligned[0][8:-8, 8:-8] - golden[8:-8, 8:-8]).mean() < 2.0


def test_transform_inverse_and_warp_round_trip(golden: np.ndarray) -> None:
    t = RigidTransform(1.5, -0.75, 0.6)
    x, y = np.array([3.0, 64.0, 120.5]), np.array([7.0, 64.0, 99.25])
    xt, yt = t.apply(x, y, (128, 128))
    xb, yb = t.inverse().apply(xt, yt, (128, 128))
    assert np.allclose(xb, x) and np.allclose(yb, y)
    moved, _ = warp_to_reference(golden, t.inverse())  # golden seen through t
    estimated, _ = estimate_transform(moved, golden)
    assert estimated.dx == pytest.approx(1.5, abs=0.05) and estimated.angle_deg == pytest.approx(0.6, abs=0.03)


def test_errors(golden: np.ndarray) -> None:
    with pytest.raises(DataError, match="same size"):
        align(golden[:100], golden)
    bad = golden.copy()
    bad[3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        align(bad, golden)
    with pytest.raises(DataError, match=r"\[H, W\] or \[C, H, W\]"):
        align(golden[0], golden[0])
    with pytest.raises(DataError, match="max_angle"):
        estimate_transform(golden, golden, max_angle=-1)


def test_residual_flags_a_turn_beyond_the_search_range(golden: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    test = ndimage.rotate(golden, 3.0, reshape=False, order=3, mode="reflect") + rng.normal(0, 3, golden.shape)
    within = align(test, golden, max_angle=3.5)
    beyond = align(test, golden, max_angle=2.0)  # the search cannot reach -3 degrees
    assert within.transform.angle_deg == pytest.approx(-3.0, abs=0.03) and within.residual_px < 0.1
    # 0.75 degree left over: RMS displacement 0.75 * pi / 180 * sqrt((128^2 + 128^2) / 12) = 0.68 px
    assert beyond.residual_px > 0.4
