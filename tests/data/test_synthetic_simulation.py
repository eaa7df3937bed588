"""The synthetic advection–diffusion family: files, shapes, physics sanity, determinism, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fabml.data.synthetic_simulation import PARAMETERS, make_synthetic_simulation, render_image, solve_case
from fabml.errors import ConfigError


def test_files_and_shapes(tmp_path: Path) -> None:
    start = time.perf_counter()
    sim = make_synthetic_simulation(tmp_path, n_cases=12, time_steps=8, nodes=32, variables=2, image_size=24, seed=1)
    assert time.perf_counter() - start < 2.0
    fields = np.load(sim.fields)
    assert fields.shape == (12, 8, 32, 2) and fields.dtype == np.float32 and sim.n_cases == 12
    table = pd.read_csv(sim.params_csv)
    assert list(table.columns) == ["case_id", *PARAMETERS]
    assert table["case_id"].tolist() == list(range(12))
    for name, (lo, hi) in PARAMETERS.items():
        assert table[name].between(lo, hi).all()
    names = sorted(p.name for p in sim.images_dir.iterdir())
    assert names[0] == "param_000.png" and len(names) == 12
    img = Image.open(sim.images_dir / "param_011.png")
    assert img.size == (24, 24) and img.mode == "L"


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_synthetic_simulation(tmp_path / "a", n_cases=4, time_steps=4, nodes=16, seed=5)
    b = make_synthetic_simulation(tmp_path / "b", n_cases=4, time_steps=4, nodes=16, seed=5)
    c = make_synthetic_simulation(tmp_path / "c", n_cases=4, time_steps=4, nodes=16, seed=6)
    np.testing.assert_array_equal(np.load(a.fields), np.load(b.fields))
    assert not np.array_equal(np.load(a.fields), np.load(c.fields))
    assert (a.images_dir / "param_002.png").read_bytes() == (b.images_dir / "param_002.png").read_bytes()


def test_solution_is_bounded_monotone_and_driven_by_the_boundary() -> None:
    params = {"boundary_temperature": 1.2, "velocity": 0.5, "conductivity": 0.02, "bump_position": 0.5,
              "bump_contrast": 2.0}
    u = solve_case(params, time_steps=10, nodes=64)
    assert u.min() >= -1e-12 and u.max() <= 1.2 + 1e-9  # maximum principle of the implicit upwind scheme
    assert np.all(np.diff(u[:, 10]) >= -1e-12)  # heats up over time from u = 0
    assert np.all(np.diff(u[-1]) <= 1e-12)  # decreasing from the hot left end to the cold right end
    faster = solve_case({**params, "velocity": 1.0}, time_steps=10, nodes=64)
    assert faster[-1, 32] > u[-1, 32]  # faster flow carries heat further
    fine = solve_case(params, time_steps=10, nodes=128)
    np.testing.assert_allclose(fine[-1, 1::2][::4], u[-1][::4], atol=0.03)  # converges with refinement


def test_image_shows_the_parameters() -> None:
    base = {"boundary_temperature": 1.0, "velocity": 0.5, "conductivity": 0.02, "bump_position": 0.5,
            "bump_contrast": 0.0}
    img = render_image(base, 32).astype(float)
    hot = render_image({**base, "boundary_temperature": 1.5}, 32).astype(float)
    bump = render_image({**base, "bump_contrast": 3.0}, 32).astype(float)
    fast = render_image({**base, "velocity": 1.0}, 32).astype(float)
    assert hot[:20].sum() > img[:20].sum()  # brighter band
    assert (bump[:20, 16] > 0).sum() > (img[:20, 16] > 0).sum()  # thicker in the middle
    assert (fast[27] > 0).sum() > (img[27] > 0).sum()  # longer flow bar


def test_bad_sizes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_cases"):
        make_synthetic_simulation(tmp_path, n_cases=0)
