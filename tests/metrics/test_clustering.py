"""cluster_quality against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fabml.errors import DataError
from fabml.metrics.clustering import cluster_quality

# 1-D points: cluster 0 = {0, 1}, cluster 1 = {4, 5}, one noise point at 100
X = np.array([[0.0], [1.0], [4.0], [5.0], [100.0]])
LABELS = np.array([0, 0, 1, 1, -1])


def test_hand_computed_figures():
    out = cluster_quality(X, LABELS)
    assert out["n_clusters"] == 2 and out["n_points"] == 5
    assert out["noise_ratio"] == pytest.approx(0.2)
    # s(0) = 1 - 1/4.5, s(1) = 1 - 1/3.5, symmetric for 4 and 5 -> 1 - (1/9 + 1/7) = 47/63
    assert out["silhouette"] == pytest.approx(47 / 63)
    assert out["silhouette_sample"] == 4 and out["silhouette_reason"] is None
    # between = 2*2^2 + 2*2^2 = 16 over k-1 = 1; within = 4 * 0.25 = 1 over n-k = 2 -> 32
    assert out["calinski_harabasz"] == pytest.approx(32.0)
    # scatter 0.5 each, centroids 4 apart -> (0.5 + 0.5) / 4
    assert out["davies_bouldin"] == pytest.approx(0.25)
    assert out["nmi"] is None and out["ari"] is None
    assert "own" in out["noise_rule"]


def test_nmi_ari_count_noise_as_own_cluster():
    perfect = cluster_quality(X, LABELS, ["x", "x", "y", "y", "z"])
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    # contingency {0: x2}, {1: y2}, {-1: y1}: sum C(nij,2) = 2, rows 2, cols 1 + 3 = 4, C(5,2) = 10
    # ARI = (2 - 2*4/10) / ((2 + 4)/2 - 2*4/10) = 1.2 / 2.2
    merged = cluster_quality(X, LABELS, ["x", "x", "y", "y", "y"])
    assert merged["ari"] == pytest.approx(1.2 / 2.2)
    # unlabelled maps are left out
    partial = cluster_quality(X, LABELS, ["x", "x", "y", "y", None])
    assert partial["n_labelled"] == 4 and partial["ari"] == pytest.approx(1.0)


def test_fewer_than_two_clusters():
    out = cluster_quality(X, np.array([0, 0, 0, -1, -1]))
    assert out["silhouette"] is None and "at least 2" in out["silhouette_reason"]
    assert out["calinski_harabasz"] is None and out["noise_ratio"] == pytest.approx(0.4)
    none = cluster_quality(X, np.full(5, -1))
    assert none["n_clusters"] == 0 and none["noise_ratio"] == 1.0


def test_silhouette_sampling_is_fixed_and_stated():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 3)), rng.normal(6, 1, (150, 3))])
    labels = np.repeat([0, 1], 150)
    a = cluster_quality(x, labels, silhouette_sample=100)
    b = cluster_quality(x, labels, silhouette_sample=100)
    assert a["silhouette_sample"] == 100 and a["silhouette"] == b["silhouette"]
    full = cluster_quality(x, labels)
    assert full["silhouette_sample"] == 300 and abs(full["silhouette"] - a["silhouette"]) < 0.05
    cos = cluster_quality(x, labels, metric="cosine")
    assert cos["silhouette_metric"] == "cosine" and cos["silhouette"] != full["silhouette"]


def test_bad_inputs():
    with pytest.raises(DataError, match="one id per embedding"):
        cluster_quality(X, LABELS[:3])
    with pytest.raises(DataError, match="one label per embedding"):
        cluster_quality(X, LABELS, ["x"])
