"""Rotation/reflection (D4) invariance of an encoder, measured on each map's 8-member orbit.

Inputs come from embedding the 8 transforms of N maps (member k = ``d4_transform(x, k)``):
``orbit_emb`` [N, 8, D] and their cluster ids ``orbit_labels`` [N, 8].

Noise rule for :func:`d4_same_cluster_rate`: an orbit is consistent only when its 8 members
carry one and the same cluster id other than -1; an orbit with any noise member is not
consistent (noise is "no cluster", not a shared cluster). With labels from
``ClusterModel.predict``, which assigns every point to a cluster, no -1 occurs;
:func:`orbit_noise_rate` reports how often it did.
"""

from __future__ import annotations

import numpy as np

from fabml.errors import DataError


def _orbits(arr: np.ndarray, ndim: int, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != ndim or a.shape[1] != 8:
        shape = "[N, 8, D]" if ndim == 3 else "[N, 8]"
        raise DataError(f"{what} must have shape {shape} (the 8 D4 transforms of each map), got {list(a.shape)}")
    if len(a) == 0:
        raise DataError(f"{what} holds no orbits")
    return a


def d4_mean_cosine(orbit_emb: np.ndarray) -> float:
    """Mean over maps of the mean pairwise cosine similarity of the 8 orbit members.

    Per map: the 56 off-diagonal entries of the 8 x 8 cosine matrix (self-similarity excluded).
    1.0 = the encoder maps every transform of a map to the same direction.
    """
    x = _orbits(orbit_emb, 3, "orbit embeddings").astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    gram = np.einsum("nid,njd->nij", x, x)
    off_diagonal = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / 56.0
    return float(off_diagonal.mean())


def d4_same_cluster_rate(orbit_labels: np.ndarray) -> float:
    """Fraction of orbits whose 8 members share one cluster id that is not noise (-1)."""
    lab = _orbits(orbit_labels, 2, "orbit cluster labels")
    same = (lab == lab[:, :1]).all(axis=1) & (lab[:, 0] != -1)
    return float(same.mean())


def orbit_noise_rate(orbit_labels: np.ndarray) -> float:
    """Fraction of orbits with at least one member labelled noise (-1)."""
    lab = _orbits(orbit_labels, 2, "orbit cluster labels")
    return float((lab == -1).any(axis=1).mean())
