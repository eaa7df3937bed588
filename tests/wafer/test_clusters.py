"""ClusterModel: HDBSCAN on blobs, assignment, novelty, save/load, failure messages."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fabml.errors import ConfigError, DataError, FabmlError
from fabml.metrics.clustering import cluster_quality
from fabml.wafer.clusters import ClusterConfig, ClusterModel


def _blobs(per: int = 80, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three blobs around orthogonal directions (clusters survive the L2 normalisation)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), per)
    centres = 5.0 * np.eye(dim)[:3]
    return centres[truth] + 0.4 * rng.normal(size=(3 * per, dim)), truth


@pytest.fixture(scope="module")
def fitted() -> tuple[ClusterModel, np.ndarray, np.ndarray, np.ndarray]:
    x, truth = _blobs()
    model = ClusterModel(ClusterConfig(min_cluster_size=20, reduce="pca", reduce_dim=4))
    labels = model.fit(x)
    return model, x, truth, labels


def test_fit_finds_the_blobs(fitted):
    model, x, truth, labels = fitted
    assert model.n_clusters == 3 and labels.shape == (240,)
    clustered = labels != -1
    assert clustered.mean() > 0.9
    assert cluster_quality(x[clustered], labels[clustered], truth[clustered])["ari"] == pytest.approx(1.0)
    assert model.transform(x).shape == (240, 4)
    summary = model.summary()
    assert [s["cluster"] for s in summary] == [0, 1, 2]
    assert sum(s["size"] for s in summary) == int(clustered.sum())
    assert all(s["spread"] > 0 for s in summary)


def test_predict_assigns_every_map(fitted):
    model, x, _, labels = fitted
    pred = model.predict(x)
    clustered = labels != -1
    np.testing.assert_array_equal(pred[clustered], labels[clustered])  # a member's nearest member is itself
    assert (pred != -1).all()
    new, _ = _blobs(per=5, seed=1)
    new_pred = model.predict(new)
    # the five new maps of each blob land in that blob's cluster
    assert [len(set(new_pred[i * 5 : (i + 1) * 5])) for i in range(3)] == [1, 1, 1]
    assert len(set(new_pred)) == 3


def test_novelty_score_definition(fitted):
    model, x, _, labels = fitted
    z = model.transform(x)
    # reference: centroid and 95% quantile spread of each cluster's members, recomputed here
    for i, c in enumerate(model.cluster_ids):
        members = z[labels == c]
        centre = members.mean(axis=0)
        np.testing.assert_allclose(model.centroids[i], centre, atol=1e-9)
        assert model.spreads[i] == pytest.approx(np.quantile(np.linalg.norm(members - centre, axis=1), 0.95))
    score, flag, nearest = model.novelty(x)
    member = labels != -1
    assert (nearest[member] == labels[member]).all()
    # by the definition of the 95% quantile, about 5% of each cluster's own members are flagged
    assert flag[member].mean() <= 0.06
    i = 1
    expected = np.linalg.norm(z[i] - model.centroids[labels[i]]) / model.spreads[labels[i]]
    assert score[i] == pytest.approx(expected)
    # a map in a direction no family covers is far outside every cluster
    odd = np.zeros((1, 8))
    odd[0, 6] = 1.0
    s, f, _ = model.novelty(odd)
    assert f[0] and s[0] > 3.0


def test_save_load_round_trip(fitted, tmp_path):
    model, x, _, _ = fitted
    path = model.save(tmp_path / "clusters" / "cluster_model.joblib")
    loaded = ClusterModel.load(path)
    assert loaded.cfg == model.cfg and loaded.summary() == model.summary()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.novelty(x), model.novelty(x)):
        np.testing.assert_array_equal(a, b)


def test_no_reduction_and_leaf():
    x, truth = _blobs(per=40, dim=4)
    model = ClusterModel(ClusterConfig(min_cluster_size=10, reduce="none", cluster_selection_method="leaf"))
    labels = model.fit(x)
    assert model.transform(x).shape == (120, 4) and model.n_clusters >= 3
    clustered = labels != -1
    # leaf clusters may split a blob but never mix two
    for c in np.unique(labels[clustered]):
        assert len(set(truth[labels == c])) == 1


def test_no_cluster_found_is_a_clear_error():
    x, _ = _blobs(per=10)
    model = ClusterModel(ClusterConfig(min_cluster_size=30, reduce="none"))
    labels = model.fit(x)  # no split into two clusters of >= 30 maps exists
    assert (labels == -1).all() and model.n_clusters == 0 and model.summary() == []
    with pytest.raises(FabmlError, match="lower cluster.min_cluster_size"):
        model.predict(x)
    with pytest.raises(FabmlError, match="no cluster"):
        model.novelty(x)


def test_bad_inputs(fitted, monkeypatch, tmp_path):
    model, _, _, _ = fitted
    with pytest.raises(DataError, match=r"shape \[N, 8\]"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(ConfigError, match="cluster.reduce"):
        ClusterModel(ClusterConfig(reduce="tsne"))
    with pytest.raises(ConfigError, match="exceeds the number of maps"):
        ClusterModel(ClusterConfig(min_cluster_size=50)).fit(np.ones((10, 3)))
    with pytest.raises(FabmlError, match="not fitted"):
        ClusterModel().predict(np.ones((1, 3)))
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(ConfigError, match=r"pip install fabml\[umap\]"):
        ClusterModel(ClusterConfig(reduce="umap", min_cluster_size=5)).fit(np.random.default_rng(0).normal(size=(20, 4)))
    bad = tmp_path / "bad.joblib"
    bad.write_text("not a model")
    with pytest.raises(DataError, match="cannot read cluster model"):
        ClusterModel.load(bad)


def _dominant_case(seed: int = 0) -> np.ndarray:
    """One family (80% of 500 points) made of four close sub-blobs, plus one separate small family (20%).

    HDBSCAN's eom selection keeps the four sub-blobs as one cluster (share 0.8); leaf selection splits them.
    """
    rng = np.random.default_rng(seed)
    dim, d = 6, 0.8
    offsets = [d * np.eye(dim)[4], -d * np.eye(dim)[4], d * np.eye(dim)[5], -d * np.eye(dim)[5]]
    big = np.concatenate([10 * np.eye(dim)[0] + o + 0.15 * rng.normal(size=(100, dim)) for o in offsets])
    small = 10 * np.eye(dim)[1] + 0.15 * rng.normal(size=(100, dim))
    return np.concatenate([big, small])


def test_largest_cluster_share_hand_computed() -> None:
    from fabml.wafer.clusters import largest_cluster_share

    assert largest_cluster_share(np.array([0, 0, 0, 1, -1, -1])) == pytest.approx(0.75)  # noise left out
    assert largest_cluster_share(np.array([-1, -1])) == 0.0


def test_a_dominant_cluster_is_flagged_and_leaf_selection_splits_it() -> None:
    x = _dominant_case()
    eom = ClusterModel(ClusterConfig(min_cluster_size=20, reduce="none", leaf_fallback=False))
    eom.fit(x)
    assert eom.n_clusters == 2 and eom.largest_share == pytest.approx(0.8) and eom.dominant
    assert eom.dominance() == {"largest_cluster_share": pytest.approx(0.8), "dominant_cluster": True,
                               "cluster_selection_used": "eom"}
    leaf = ClusterModel(ClusterConfig(min_cluster_size=20, reduce="none", cluster_selection_method="leaf"))
    leaf.fit(x)
    assert leaf.n_clusters == 5 and not leaf.dominant and leaf.largest_share < 0.3
    # the fallback: eom is dominant, so leaf is tried and kept because it is no longer dominant
    auto = ClusterModel(ClusterConfig(min_cluster_size=20, reduce="none"))
    assert np.array_equal(auto.fit(x), leaf.labels_) and auto.selection_used == "leaf" and not auto.dominant


def test_the_fallback_leaves_a_clustering_that_is_not_dominant_alone() -> None:
    x, _ = _blobs()
    model = ClusterModel(ClusterConfig(min_cluster_size=20, reduce="pca", reduce_dim=4))
    model.fit(x)
    assert model.selection_used == "eom" and not model.dominant


def test_dominant_share_is_checked() -> None:
    with pytest.raises(ConfigError, match="dominant_share"):
        ClusterModel(ClusterConfig(dominant_share=0.0))


def test_cluster_command_warns_and_writes_the_dominant_flag(tmp_path, capsys, monkeypatch) -> None:
    import json

    import pandas as pd

    from fabml.wafer import pipeline
    from fabml.wafer.config import WaferConfig

    x = _dominant_case()
    meta = pd.DataFrame({"id": [str(i) for i in range(len(x))], "date": [None] * len(x)})
    monkeypatch.setattr(pipeline, "read_embeddings", lambda run_dir: (x, meta, "unused"))
    monkeypatch.setattr(pipeline, "_cluster_gallery", lambda *args: None)
    cfg = WaferConfig()
    cfg.cluster = ClusterConfig(min_cluster_size=20, reduce="none", leaf_fallback=False)
    pipeline.cluster(tmp_path, cfg)
    summary = json.loads((tmp_path / "clusters" / "summary.json").read_text())
    assert summary["dominant_cluster"] is True and summary["largest_cluster_share"] == pytest.approx(0.8)
    assert summary["cluster_selection_used"] == "eom"
    warning = [line for line in capsys.readouterr().err.splitlines() if "80%" in line]
    assert len(warning) == 1 and "cluster_selection_method=leaf" in warning[0]
    cfg.cluster.leaf_fallback = True  # the default: leaf is used and nothing is warned
    pipeline.cluster(tmp_path, cfg)
    summary = json.loads((tmp_path / "clusters" / "summary.json").read_text())
    assert summary["dominant_cluster"] is False and summary["cluster_selection_used"] == "leaf"
    assert "80%" not in capsys.readouterr().err
