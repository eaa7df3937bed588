"""Relative L2 per case / variable / time step and the coverage of a predicted spread, against values
worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fabml.errors import DataError
from fabml.metrics.regression import (
    column_means,
    coverage,
    spread_ratios,
    spread_scale,
    relative_l2,
    relative_l2_per_step,
    relative_l2_per_variable,
    summarise,
)


def _fields() -> tuple[np.ndarray, np.ndarray]:
    """Two cases [2, T=2, M=2, V=2]. Case 0: true all ones (||true|| = sqrt(8)), pred off by +1 in one
    entry (t=0, m=0, v=0): rel L2 = 1 / sqrt(8). Case 1: true = 3 at (t=1, m=1, v=1), else 0 (||true|| = 3);
    pred = 4 at (t=1, m=1, v=1) and 2 at (t=0, m=0, v=0): error norm sqrt(1 + 4) = sqrt(5), rel = sqrt(5)/3."""
    true = np.zeros((2, 2, 2, 2), dtype=np.float32)
    pred = np.zeros_like(true)
    true[0] = 1.0
    pred[0] = 1.0
    pred[0, 0, 0, 0] = 2.0
    true[1, 1, 1, 1] = 3.0
    pred[1, 1, 1, 1] = 4.0
    pred[1, 0, 0, 0] = 2.0
    return pred, true


def test_relative_l2_per_case_matches_hand_values() -> None:
    pred, true = _fields()
    np.testing.assert_allclose(relative_l2(pred, true), [1 / math.sqrt(8), math.sqrt(5) / 3])
    # tensors give the same numbers, and a perfect prediction is 0
    np.testing.assert_allclose(relative_l2(torch.from_numpy(pred), torch.from_numpy(true)),
                               [1 / math.sqrt(8), math.sqrt(5) / 3])
    assert relative_l2(true, true).tolist() == [0.0, 0.0]


def test_relative_l2_per_variable_and_per_step() -> None:
    pred, true = _fields()
    per_var = relative_l2_per_variable(pred, true)
    assert per_var.shape == (2, 2)
    # case 0, v=0: true ones over (t, m) -> norm 2, error 1 -> 0.5; v=1: exact -> 0
    # case 1, v=0: true all zero -> undefined (NaN); v=1: error 1 over norm 3
    np.testing.assert_allclose(per_var[0], [0.5, 0.0])
    assert math.isnan(per_var[1, 0])
    assert per_var[1, 1] == pytest.approx(1 / 3)
    per_step = relative_l2_per_step(pred, true)
    assert per_step.shape == (2, 2)
    # case 0, t=0: norm over (m, v) = 2, error 1 -> 0.5; t=1: 0
    # case 1, t=0: true zero -> NaN; t=1: error 1 over 3
    np.testing.assert_allclose(per_step[0], [0.5, 0.0])
    assert math.isnan(per_step[1, 0]) and per_step[1, 1] == pytest.approx(1 / 3)
    # means over cases skip the undefined values
    assert column_means(per_step) == pytest.approx([0.5, 1 / 6])


def test_three_axis_fields_are_one_variable() -> None:
    pred, true = _fields()
    p3, t3 = pred[..., 1], true[..., 1]  # [2, 2, 2]
    np.testing.assert_allclose(relative_l2_per_variable(p3, t3)[:, 0], [0.0, 1 / 3])
    np.testing.assert_allclose(relative_l2_per_step(p3, t3), [[0.0, 0.0], [np.nan, 1 / 3]])


def test_summarise_reports_undefined_values() -> None:
    stats = summarise([0.1, 0.3, np.nan, 0.2])
    assert stats["n"] == 4 and stats["n_undefined"] == 1
    assert stats["mean"] == pytest.approx(0.2) and stats["median"] == pytest.approx(0.2)
    assert stats["min"] == pytest.approx(0.1) and stats["max"] == pytest.approx(0.3)
    assert summarise([np.nan])["mean"] is None


def test_coverage_counts_entries_inside_the_band() -> None:
    true = np.array([0.0, 1.0, 2.0, 3.0])
    mean = np.array([0.0, 0.0, 0.0, 0.0])
    std = np.array([0.0, 1.0, 0.5, 1.0])
    # sigma 2: |0-0| <= 0 yes; 1 <= 2 yes; 2 <= 1 no; 3 <= 2 no -> 0.5
    assert coverage(true, mean, std, sigma=2.0) == 0.5
    # sigma 3: also 3 <= 3 -> 0.75
    assert coverage(true, mean, std, sigma=3.0) == 0.75
    # a calibrated Gaussian spread covers about 95.4% at two sigma
    rng = np.random.default_rng(0)
    noise = rng.normal(size=200_000)
    assert coverage(noise, np.zeros_like(noise), np.ones_like(noise), 2.0) == pytest.approx(0.954, abs=0.003)


def test_bad_inputs_are_one_line_errors() -> None:
    pred, true = _fields()
    with pytest.raises(DataError, match="must match"):
        relative_l2(pred[:1], true)
    bad = pred.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        relative_l2(bad, true)
    with pytest.raises(DataError, match="one shape"):
        coverage(true, pred, np.ones(3))
    with pytest.raises(DataError, match="negative"):
        coverage(true, pred, -np.ones_like(true))


def test_spread_scale_is_the_quantile_of_the_ratios_that_covers_the_target() -> None:
    true = np.array([0.0, 1.0, 2.0, 3.0])
    mean = np.zeros(4)
    std = np.array([1.0, 1.0, 1.0, 0.0])
    r = spread_ratios(true, mean, std, sigma=1.0)
    np.testing.assert_array_equal(r, [0.0, 1.0, 2.0, np.inf])  # std 0 with an error: no factor covers it
    assert spread_scale(r, 0.5) == 1.0 and spread_scale(r, 0.75) == 2.0
    assert coverage(true, mean, std * spread_scale(r, 0.75), 1.0) == 0.75
    with pytest.raises(DataError, match="the spread is 0 where the error is not"):
        spread_scale(r, 0.9)
    with pytest.raises(DataError, match="target coverage"):
        spread_scale(r, 1.0)


def test_spread_scale_recovers_the_factor_of_a_too_narrow_gaussian_spread() -> None:
    rng = np.random.default_rng(0)
    err = rng.normal(size=200_000)
    std = np.full_like(err, 0.25)  # four times too narrow
    k = spread_scale(spread_ratios(err, np.zeros_like(err), std, 2.0), math.erf(2 / math.sqrt(2)))
    assert k == pytest.approx(4.0, rel=0.02)
