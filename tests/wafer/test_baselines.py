"""Model-free baselines: hand-computed Wu 2015 features, their D4 behaviour, one interface, `embed --method`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fabml.cli import app
from fabml.errors import ConfigError
from fabml.wafer.augment import d4_transform
from fabml.wafer.baselines import (
    BASELINES,
    BaselineConfig,
    Wu2015Baseline,
    build_baseline,
    largest_region_geometry,
    region_weights,
)


def _frame(size: int, n: int = 1) -> torch.Tensor:
    """``n`` all-wafer maps [n,2,size,size] without failed dies."""
    x = torch.zeros(n, 2, size, size)
    x[:, 1] = 1
    return x


def test_thirteen_regions_cover_the_frame_once():
    w = region_weights(10)  # 5 x 5 cells of 2 x 2 pixels
    np.testing.assert_allclose(w.sum(axis=0), 1.0)  # every pixel counted once (diagonal pixels half twice)
    np.testing.assert_allclose(w.sum(axis=1), [16] * 4 + [4] * 9)  # edge ring: 64 pixels in 4 sectors; inner cells


def test_centre_blob_and_edge_ring_densities_by_hand():
    wu = Wu2015Baseline(size=64)
    blob, ring, row = _frame(10), _frame(10), _frame(10)
    blob[0, 0, 4:6, 4:6] = 1  # exactly the centre cell (region 4 + 3*1 + 1 = 8)
    ring[0, 0] = 1
    ring[0, 0, 2:8, 2:8] = 0  # exactly the 16 outer cells
    row[0, 0, 0] = 1  # the top row: 8 top pixels + 2 corners shared half with left/right
    d_blob, d_ring, d_row = (wu.features(x)[0, :13] for x in (blob, ring, row))
    np.testing.assert_allclose(d_blob, np.eye(13)[8])
    np.testing.assert_allclose(d_ring, [1, 1, 1, 1] + [0] * 9)
    np.testing.assert_allclose(d_row[:4], [9 / 16, 0.5 / 16, 0, 0.5 / 16])
    assert not d_row[4:].any()


def test_density_is_failed_over_wafer_pixels():
    x = _frame(10)
    x[0, 1, :, 5:] = 0  # the right half is off the wafer
    x[0, 0, 4:6, 4] = 1  # 2 failed pixels in the centre cell, whose wafer part is 2 pixels
    density = Wu2015Baseline().features(x)[0, :13]
    assert density[8] == pytest.approx(1.0)
    assert density[9] == 0.0  # the inner-right cell lies off the wafer: 0, not a division by zero


def test_radon_part_shape_and_a_centre_die():
    x = _frame(9)
    x[0, 0, 4, 4] = 1  # the centre pixel projects onto r = 0 at every angle
    for points in (20, 8):
        f = Wu2015Baseline(radon_points=points).features(x)
        assert f.shape == (1, 13 + 2 * points + 6)
    f = Wu2015Baseline(radon_points=21).features(x)[0]
    mean, std = f[13:34], f[34:55]
    assert np.argmax(mean) == 10 and mean[10] == pytest.approx(1 / 9)  # the middle point, value 1 / s
    np.testing.assert_allclose(std, 0.0, atol=1e-12)  # the same projection at every angle


def test_geometry_of_the_largest_region_by_hand():
    fail = np.zeros((1, 20, 20), dtype=bool)
    fail[0, 2:5, 3:8] = True  # 3 x 5 rectangle
    fail[0, 15, 15] = True  # a smaller region is ignored
    area, perimeter, major, minor, ecc, solidity = largest_region_geometry(fail)[0]
    diag = 20 * np.sqrt(2)
    assert area == pytest.approx(15 / 400) and perimeter == pytest.approx(16 / diag)
    assert major == pytest.approx(4 * np.sqrt(2) / diag) and minor == pytest.approx(4 * np.sqrt(2 / 3) / diag)
    assert ecc == pytest.approx(np.sqrt(2 / 3)) and solidity == pytest.approx(1.0)
    np.testing.assert_array_equal(largest_region_geometry(np.zeros((2, 5, 5), dtype=bool)), 0.0)


def test_d4_transforms_keep_radon_and_geometry_and_permute_densities():
    """By design: the Radon profiles (a full turn of angles) and the geometry are D4-invariant; the region
    densities are position features that a D4 transform permutes (edge sectors and inner cells apart)."""
    g = torch.Generator().manual_seed(0)
    x = _frame(32, 4)
    x[:, 0] = (torch.rand(4, 32, 32, generator=g) > 0.9).float()
    x[0, 0, 3:9, 10:30] = 1  # an edge-ish block
    wu = Wu2015Baseline(size=64)
    f = wu.features(x)
    for k in range(8):
        fk = wu.features(d4_transform(x, k))
        np.testing.assert_allclose(fk[:, 13:], f[:, 13:], atol=1e-9)
        np.testing.assert_allclose(np.sort(fk[:, :4]), np.sort(f[:, :4]), atol=1e-12)
        np.testing.assert_allclose(np.sort(fk[:, 4:13]), np.sort(f[:, 4:13]), atol=1e-12)
    assert not np.allclose(wu.features(d4_transform(x, 1))[0, :4], f[0, :4])  # positions do move


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_fits_embeds_and_survives_pickling(name: str):
    g = torch.Generator().manual_seed(1)
    x = _frame(32, 12)
    x[:, 0] = (torch.rand(12, 32, 32, generator=g) > 0.8).float()
    cfg = BaselineConfig(pca_dim=5, raw_size=8)
    base = build_baseline(name, cfg).fit(x)
    emb = base.embed(x)
    assert emb.dtype == np.float32 and emb.shape == (12, {"pca": 5, "raw": 64, "wu2015": 59}[name])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(base(x[:3]).numpy(), emb[:3], atol=1e-6)  # the EmbedFn contract
    np.testing.assert_allclose(pickle.loads(pickle.dumps(base)).embed(x), emb, atol=1e-6)


def test_baseline_settings_are_checked():
    with pytest.raises(ConfigError, match="nosuch"):
        BaselineConfig(methods=["pca", "nosuch"])
    with pytest.raises(ConfigError, match="even"):
        BaselineConfig(radon_angles=63)


def test_embed_with_a_baseline_writes_where_it_is_told(tmp_path: Path):
    out = tmp_path / "wu"
    result = CliRunner().invoke(app, ["wafer", "embed", "--method", "wu2015", "--data", "synthetic:40:0",
                                      "--out", str(out), "--set", "data.size=32"])
    assert result.exit_code == 0, result.output
    assert np.load(out / "embeddings.npy").shape == (40, 59)
    assert json.loads((out / "embedder.json").read_text())["method"] == "wu2015"
    assert (out / "index.faiss").is_file() and (out / "baseline.joblib").is_file()


def test_a_baseline_run_folder_works_with_cluster_and_search(tmp_path: Path):
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["wafer", "embed", "--method", "raw", "--data", "synthetic:60:0", "--run", str(run),
                                 "--set", "data.size=32", "--set", "baseline.raw_size=8"])
    assert result.exit_code == 0, result.output
    assert np.load(run / "embeddings" / "embeddings.npy").shape == (60, 64)
    result = runner.invoke(app, ["wafer", "cluster", "--run", str(run), "--set", "cluster.min_cluster_size=5"])
    assert result.exit_code == 0, result.output
    dies = np.ones((30, 30), dtype=np.uint8)
    dies[10:20, 10:20] = 2
    np.save(tmp_path / "q.npy", dies)  # a new map: embedded with the saved, fitted baseline
    result = runner.invoke(app, ["wafer", "search", "--run", str(run), "--query", str(tmp_path / "q.npy"), "-k", "3",
                                 "--figure", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file()


def test_wu2015_reads_the_maps_at_its_own_side():
    """On WM-811K the features at 64 beat those at the encoder's 32 (0.768 vs 0.687 kNN macro accuracy):
    the commands resize the original grids to baseline.wu_size, whatever data.size is."""
    from fabml.wafer.config import wafer_config
    from fabml.wafer.embedder import baseline_tensors
    from fabml.wafer.maps import load_dataset

    cfg = wafer_config(None, ["data.size=32", "baseline.wu_size=48"])
    data = load_dataset("synthetic:6:0", cfg)
    wu = build_baseline("wu2015", cfg.baseline)
    assert baseline_tensors(wu, "synthetic:6:0", data, cfg).shape == (6, 2, 48, 48)
    assert baseline_tensors(build_baseline("raw", cfg.baseline), "synthetic:6:0", data, cfg) is data.tensors


def test_fit_transform_equals_fit_then_transform() -> None:
    """The auxiliary targets' one-pass path gives exactly the two-pass result (standardised, rows not normalised)."""
    maps = torch.zeros(12, 2, 32, 32)
    maps[:, 1] = 1.0
    for i in range(12):
        maps[i, 0, i : i + 6, 4 : 10 + i] = 1.0
    one = Wu2015Baseline(32).fit_transform(maps)
    two = Wu2015Baseline(32).fit(maps).transform(maps)
    assert one.shape == (12, 59) and one.dtype == np.float32
    np.testing.assert_array_equal(one, two)
