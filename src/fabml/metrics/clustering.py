"""Cluster quality of an embedding: silhouette, Calinski-Harabasz, Davies-Bouldin, noise, NMI/ARI.

Noise (label -1, HDBSCAN's unassigned points) is left out of silhouette, Calinski-Harabasz and
Davies-Bouldin (they judge the clusters found) and counts as one cluster of its own in NMI and
ARI (so leaving many points unassigned is penalised there). Calinski-Harabasz and
Davies-Bouldin are Euclidean by definition; ``metric`` applies to the silhouette only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from fabml.errors import DataError

NOISE_RULE = (
    "noise (-1) excluded from silhouette, calinski_harabasz and davies_bouldin; "
    "counted as one cluster of its own in nmi and ari"
)


def _is_missing(label: object) -> bool:
    return label is None or (isinstance(label, float) and np.isnan(label))


def cluster_quality(
    emb: np.ndarray,
    cluster_labels: Sequence[int] | np.ndarray,
    true_labels: Sequence | np.ndarray | None = None,
    metric: str = "euclidean",
    silhouette_sample: int = 10_000,
    seed: int = 0,
) -> dict:
    """Quality figures of a clustering of ``emb`` [N, D].

    Args:
        cluster_labels: [N] cluster ids, -1 = noise.
        true_labels: optional [N] class labels; None / NaN entries (unlabelled maps) are left out of
            NMI and ARI.
        metric: distance of the silhouette ("euclidean", "cosine", ... as sklearn names them).
        silhouette_sample: above this many clustered points, the silhouette is computed on a random
            sample of that size drawn with ``seed`` (sklearn's ``sample_size``).
    Returns:
        ``n_points``, ``n_clusters`` (excluding noise), ``noise_ratio``, ``silhouette`` (None with
        ``silhouette_reason`` when it cannot be computed), ``silhouette_sample`` (points it used),
        ``silhouette_metric``, ``calinski_harabasz``, ``davies_bouldin``, ``nmi``, ``ari`` (None
        without true labels), ``n_labelled`` and ``noise_rule`` (how noise counts).
    """
    x = np.asarray(emb)
    labels = np.asarray(cluster_labels)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array [N, D], got shape {list(x.shape)}")
    if labels.shape != (len(x),):
        raise DataError(f"cluster labels must hold one id per embedding ({len(x)}), got shape {list(labels.shape)}")
    if len(x) == 0:
        raise DataError("cluster quality of zero points")
    labels = labels.astype(np.int64)
    clustered = labels != -1
    n_clustered = int(clustered.sum())
    n_clusters = int(len(np.unique(labels[clustered])))
    out: dict = {
        "n_points": int(len(x)),
        "n_clusters": n_clusters,
        "noise_ratio": float(1.0 - n_clustered / len(x)),
        "silhouette": None,
        "silhouette_sample": None,
        "silhouette_metric": metric,
        "silhouette_reason": None,
        "calinski_harabasz": None,
        "davies_bouldin": None,
        "nmi": None,
        "ari": None,
        "n_labelled": 0,
        "noise_rule": NOISE_RULE,
    }
    if n_clusters < 2:
        out["silhouette_reason"] = f"{n_clusters} cluster(s) besides noise: silhouette needs at least 2"
    elif n_clusters >= n_clustered:
        out["silhouette_reason"] = "every clustered point is its own cluster: silhouette needs fewer clusters than points"
    else:
        xc, lc = x[clustered], labels[clustered]
        sample = silhouette_sample if n_clustered > silhouette_sample else None
        try:
            out["silhouette"] = float(silhouette_score(xc, lc, metric=metric, sample_size=sample, random_state=seed))
            out["silhouette_sample"] = int(sample or n_clustered)
        except ValueError as exc:  # e.g. a sample that drew a single cluster
            out["silhouette_reason"] = str(exc).splitlines()[0]
        out["calinski_harabasz"] = float(calinski_harabasz_score(xc, lc))
        out["davies_bouldin"] = float(davies_bouldin_score(xc, lc))
    if true_labels is not None:
        truth = np.asarray(true_labels, dtype=object)
        if truth.shape != (len(x),):
            raise DataError(f"true labels must hold one label per embedding ({len(x)}), got shape {list(truth.shape)}")
        known = np.array([not _is_missing(t) for t in truth], dtype=bool)
        out["n_labelled"] = int(known.sum())
        if known.any():
            t = [str(v) for v in truth[known]]
            out["nmi"] = float(normalized_mutual_info_score(t, labels[known]))
            out["ari"] = float(adjusted_rand_score(t, labels[known]))
    return out
