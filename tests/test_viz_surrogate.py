"""Tests for fabml.viz.surrogate: field comparison (1d and grid layouts), latent scatter, error per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabml.errors import DataError
from fabml.viz.surrogate import field_panels, plot_error_per_step, plot_field_comparison, plot_latent_scatter


def _png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_field_panels_follow_the_layout() -> None:
    field = np.arange(2 * 6 * 2, dtype=float).reshape(2, 6, 2)  # [T=2, M=6, V=2]
    panels = field_panels(field, "1d", None, -1)
    assert [p.shape for p in panels] == [(2, 6), (2, 6)]
    np.testing.assert_array_equal(panels[1], field[:, :, 1])
    grid = field_panels(field, "grid", [2, 3], 1)  # M = 2 x 3, row-major, last time step
    assert [p.shape for p in grid] == [(2, 3), (2, 3)]
    np.testing.assert_array_equal(grid[0], field[1, :, 0].reshape(2, 3))
    with pytest.raises(DataError, match="H\\*W = 6"):
        field_panels(field, "grid", [4, 4], 0)


def test_field_comparison_draws_one_row_per_case_and_variable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(3, 8, 32, 2))
    pred = true + 0.1 * rng.normal(size=true.shape)
    one = plot_field_comparison(true[:1], pred[:1], tmp_path / "one.png", ["best"], layout="1d")
    three = plot_field_comparison(true, pred, tmp_path / "three.png", ["best", "median", "worst"], layout="1d",
                                  variable_names=["u", "p"])
    (w1, h1), (w3, h3) = _png(one), _png(three)
    assert w1 == w3 and h3 > 2.5 * h1  # six rows against two
    square = plot_field_comparison(true[:, :, :16], pred[:, :, :16], tmp_path / "grid.png",
                                   ["a", "b", "c"], layout="grid", grid_shape=[4, 4])
    _png(square)
    with pytest.raises(DataError, match="labels"):
        plot_field_comparison(true, pred, tmp_path / "x.png", ["only one"])
    with pytest.raises(DataError, match="shape"):
        plot_field_comparison(true, pred[:, :4], tmp_path / "x.png", ["a", "b", "c"])


def test_latent_scatter_and_error_per_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(40, 2))
    values = rng.uniform(size=40)
    values[3] = np.nan  # drawn grey, not an error
    _png(plot_latent_scatter(xy, values, tmp_path / "scatter.png", "PCA of z", "rel L2"))
    with pytest.raises(DataError, match="40 points but 39"):
        plot_latent_scatter(xy, values[:39], tmp_path / "bad.png", "t", "v")
    per_step = rng.uniform(size=(10, 12))
    per_step[:, 0] = np.nan  # an all-zero initial step: undefined everywhere
    _png(plot_error_per_step(per_step, tmp_path / "steps.png", floor=per_step / 2))
    with pytest.raises(DataError, match="n cases, T steps"):
        plot_error_per_step(per_step[0], tmp_path / "bad.png")
