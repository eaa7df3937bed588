"""Synthetic wafer-map generator: determinism, balance, codings, family geometry, metadata, speed."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import numpy as np
import pytest

from fabml.data.synthetic_wafer import FAMILIES, MIXED_FAMILIES, draw_wafer, generate_wafer_maps, mixed_families
from fabml.data.wafer_io import load_wafer_maps
from fabml.errors import ConfigError


def _polar(dies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = dies.shape
    y = (np.arange(rows) + 0.5) / rows * 2 - 1
    x = (np.arange(cols) + 0.5) / cols * 2 - 1
    r = np.hypot(*np.meshgrid(y, x, indexing="ij"))
    return r[dies == 2], r[dies > 0]


def test_deterministic_given_seed():
    a, b = generate_wafer_maps(40, seed=11), generate_wafer_maps(40, seed=11)
    assert all(np.array_equal(x.dies, y.dies) and x.meta == y.meta for x, y in zip(a, b))
    c = generate_wafer_maps(40, seed=12)
    assert any(x.dies.shape != y.dies.shape or not np.array_equal(x.dies, y.dies) for x, y in zip(a, c))
    via_source = load_wafer_maps("synthetic:40:11")
    assert all(np.array_equal(x.dies, y.dies) for x, y in zip(a, via_source))
    first = load_wafer_maps("synthetic:40:11", limit=5)  # a limit cuts, it does not regenerate
    assert len(first) == 5 and all(x.meta == y.meta and np.array_equal(x.dies, y.dies) for x, y in zip(a, first))


def test_balanced_labels_shapes_and_coding():
    maps = generate_wafer_maps(95, seed=0, grid_range=(25, 40))
    counts = Counter(m.label for m in maps)
    assert set(counts) == set(FAMILIES) and max(counts.values()) - min(counts.values()) <= 1
    for m in maps:
        assert m.dies.dtype == np.uint8 and set(np.unique(m.dies)) <= {0, 1, 2}
        assert all(25 <= s <= 40 for s in m.dies.shape)
        assert m.dies[:, 0].any() and m.dies[0, :].any()  # the wafer fills its grid, as on real maps
    assert any(m.dies.shape[0] != m.dies.shape[1] for m in maps)
    subset = generate_wafer_maps(10, families=("Donut", "Scratch"))
    assert Counter(m.label for m in subset) == {"Donut": 5, "Scratch": 5}


def test_metadata():
    maps = generate_wafer_maps(60, seed=1, start_date="2026-01-01", days=30)
    assert [m.meta["id"] for m in maps[:2]] == ["syn-00001", "syn-00002"]
    assert len({m.meta["id"] for m in maps}) == 60
    lots = Counter(m.meta["lot"] for m in maps)
    assert maps[0].meta["lot"] == "LOT-01" and max(lots.values()) <= 25 and len(lots) >= 3
    dates = [dt.date.fromisoformat(m.meta["date"]) for m in maps]
    assert dates == sorted(dates) and dates[0] == dt.date(2026, 1, 1) and dates[-1] < dt.date(2026, 1, 31)
    assert all(m.meta["source"] == "synthetic:60:1" for m in maps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_family_geometry_without_noise(seed):
    rng = np.random.default_rng(seed)

    def fail_radii(family: str) -> tuple[np.ndarray, float]:
        dies = draw_wafer(family, 40, 42, 0.0, rng)
        fail_r, wafer_r = _polar(dies)
        return fail_r, len(fail_r) / len(wafer_r)

    assert fail_radii("None")[1] == 0.0
    center, share = fail_radii("Center")
    assert 0 < share < 0.4 and np.median(center) < 0.35
    ring, share = fail_radii("Edge-Ring")
    assert np.quantile(ring, 0.1) > 0.8 and share > 0.05
    donut, _ = fail_radii("Donut")
    assert 0.2 < np.median(donut) < 0.7
    assert fail_radii("Near-full")[1] > 0.6
    assert 0.15 < fail_radii("Random")[1] < 0.7
    scratch, share = fail_radii("Scratch")
    assert len(scratch) >= 4 and share < 0.1


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown wafer families"):
        generate_wafer_maps(5, families=("Center", "Blob"))
    with pytest.raises(ConfigError, match="grid_range"):
        generate_wafer_maps(5, grid_range=(40, 30))
    with pytest.raises(ConfigError, match="noise"):
        generate_wafer_maps(5, noise=(0.2, 0.1))
    with pytest.raises(ConfigError, match=">= 1"):
        generate_wafer_maps(0)
    with pytest.raises(ConfigError, match="start_date"):
        generate_wafer_maps(5, start_date="01/02/2026")
    with pytest.raises(ConfigError, match="unknown wafer families"):
        generate_wafer_maps(5, families=("Center+Blob",))
    with pytest.raises(ConfigError, match="label separator"):
        generate_wafer_maps(5, label_separator=",")


def test_fast_enough():
    start = time.perf_counter()
    generate_wafer_maps(1000, seed=3)
    assert time.perf_counter() - start < 5.0  # the target is 2,000 maps in 5 s; 1,000 leaves room on a busy CPU


def test_mixture_families():
    assert len(MIXED_FAMILIES) == 25  # 13 pairs + 12 triples: the mixture types of MixedWM38
    sizes = Counter(len(f.split("+")) for f in MIXED_FAMILIES)
    assert sizes == {2: 13, 3: 12}
    assert "Center+Scratch" in MIXED_FAMILIES and "Donut+Edge-Loc+Scratch" in MIXED_FAMILIES
    assert not any({"Center", "Donut"} <= set(f.split("+")) for f in MIXED_FAMILIES)
    assert not any({"Edge-Loc", "Edge-Ring"} <= set(f.split("+")) for f in MIXED_FAMILIES)
    assert mixed_families(sizes=(2,), patterns=("Scratch", "Loc"), separator="|") == ("Loc|Scratch",)


def test_overlaid_families_carry_every_pattern_and_a_joined_label():
    rng = np.random.default_rng(4)
    fail_r, _ = _polar(draw_wafer("Edge-Ring+Center", 40, 42, 0.0, rng))
    assert (fail_r < 0.35).sum() >= 5 and (fail_r > 0.85).sum() >= 20  # the centre blob and the ring
    families = ("Center", "Scratch+Center", "Donut+Edge-Loc+Scratch", "None")
    maps = generate_wafer_maps(40, seed=2, families=families, grid_range=(25, 30))
    assert Counter(m.label for m in maps) == {"Center": 10, "Center+Scratch": 10, "Donut+Edge-Loc+Scratch": 10, "None": 10}
    mixed = [m for m in maps if m.label == "Donut+Edge-Loc+Scratch"]
    single = [m for m in maps if m.label == "Center"]
    assert np.mean([(m.dies == 2).mean() for m in mixed]) > np.mean([(m.dies == 2).mean() for m in single])
    piped = generate_wafer_maps(8, seed=2, families=("Scratch|Center",), label_separator="|")
    assert {m.label for m in piped} == {"Center|Scratch"}


def test_synthetic_mixed_source():
    maps = load_wafer_maps("synthetic-mixed:68:5")
    labels = Counter(m.label for m in maps)
    assert set(labels) == set(FAMILIES) | set(MIXED_FAMILIES) and max(labels.values()) == 2
    single = load_wafer_maps("synthetic:20:5")  # the plain source is unchanged
    assert all(np.array_equal(a.dies, b.dies) for a, b in zip(single, generate_wafer_maps(20, seed=5)))
    with pytest.raises(ConfigError, match="synthetic-mixed:N"):
        load_wafer_maps("synthetic-mixed:x")
