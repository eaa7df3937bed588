"""VectorIndex: exact search equals brute force, approximate kinds keep recall, save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fabml.errors import ConfigError, DataError
from fabml.index import IndexConfig, VectorIndex, l2_normalise


def _clustered(n: int = 2000, dim: int = 32, centres: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return (c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def _brute_force(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = l2_normalise(q).astype(np.float64) @ l2_normalise(db).astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def test_flat_equals_brute_force():
    db, q = _clustered(500, 16, seed=1), _clustered(40, 16, seed=2)
    index = VectorIndex(16)
    index.add(db[:200])
    index.add(db[200:])  # ids continue across calls
    assert len(index) == 500
    scores, ids = index.search(q, 7)
    ref_scores, ref_ids = _brute_force(db, q, 7)
    assert scores.shape == ids.shape == (40, 7) and ids.dtype == np.int64
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # ids agree wherever the brute-force scores are not tied
    assert (ids == ref_ids).mean() > 0.99


def test_scores_are_cosine():
    index = VectorIndex(2)
    index.add(np.array([[3.0, 0.0], [0.0, 5.0], [1.0, 1.0]]))
    scores, ids = index.search(np.array([[2.0, 0.0]]), 3)
    assert ids.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)


@pytest.mark.parametrize("cfg", [IndexConfig(kind="ivf", nlist=32, nprobe=8), IndexConfig(kind="hnsw")])
def test_approximate_recall_at_10(cfg):
    db, q = _clustered(2000), _clustered(100, seed=3)
    exact = VectorIndex(32)
    exact.add(db)
    approx = VectorIndex(32, cfg)
    approx.add(db)
    _, truth = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall > 0.9


def test_ivf_clamps_nlist_with_warning():
    index = VectorIndex(32, IndexConfig(kind="ivf", nlist=1024, nprobe=16))
    with pytest.warns(UserWarning, match="using nlist=44"):
        index.add(_clustered(2000))  # min(sqrt(2000)=44, 2000 // 39 = 51)
    assert index.nlist_effective == 44


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    db, q = _clustered(800, 16), _clustered(20, 16, seed=5)
    index = VectorIndex(16, IndexConfig(kind=kind, nlist=16, nprobe=4, ef_search=32))
    index.add(db)
    before = index.search(q, 5)
    path = index.save(tmp_path / "sub" / "index.faiss")
    side = json.loads((tmp_path / "sub" / "index.faiss.json").read_text())
    assert side["dim"] == 16 and side["count"] == 800 and side["cfg"]["kind"] == kind
    loaded = VectorIndex.load(path)
    assert len(loaded) == 800 and loaded.cfg == index.cfg
    after = loaded.search(q, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_k_is_capped_at_size():
    index = VectorIndex(4)
    index.add(np.eye(4)[:3])
    scores, ids = index.search(np.eye(4)[:1], 10)
    assert ids.shape == (1, 3) and ids[0, 0] == 0


def test_bad_inputs():
    index = VectorIndex(8)
    with pytest.raises(DataError, match=r"shape \[N, 8\]"):
        index.add(np.zeros((3, 5)))
    with pytest.raises(DataError, match="empty"):
        index.search(np.zeros((1, 8)), 3)
    index.add(np.ones((2, 8)))
    with pytest.raises(DataError, match=r"shape \[N, 8\]"):
        index.search(np.zeros((1, 7)), 3)
    with pytest.raises(DataError, match="NaN"):
        index.add(np.full((1, 8), np.nan))
    with pytest.raises(ConfigError, match="index.kind"):
        VectorIndex(8, IndexConfig(kind="lsh"))
    with pytest.raises(DataError, match="not found"):
        VectorIndex.load("/nonexistent/index.faiss")
