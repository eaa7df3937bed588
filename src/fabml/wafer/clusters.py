"""Pattern families of wafer-map embeddings: HDBSCAN clusters, assignment of new maps, novelty.

Pipeline: L2-normalise the embeddings -> optional reduction (PCA, or UMAP from the optional
``umap-learn`` package) -> ``sklearn.cluster.HDBSCAN``. The reduced space is where clusters,
centroids, spreads and novelty live; it is always named in reports (``reduce:reduce_dim``).

- ``predict``: every map gets a cluster: the one of its nearest clustered (non-noise) training
  point in the reduced space (Euclidean), so no new map is left as noise.
- ``novelty``: score = distance to the nearest cluster centroid / that cluster's spread, where
  spread = the ``novelty_quantile`` (0.95) quantile of the cluster's own members' distances to
  its centroid. Flag = score > 1.0: the map lies farther from the nearest family's centre than
  95% of that family's own members. ``nearest_cluster`` there is by centroid and may differ
  from ``predict``'s nearest-member assignment for a map between families.
- Dominant cluster: ``largest_share`` = size of the largest cluster / number of clustered (non-noise)
  maps. When it exceeds ``dominant_share`` (0.5) the clustering is ``dominant``: one family holds
  most maps and cluster-based figures (the D4 same-cluster rate above all) say little. With
  ``leaf_fallback`` an ``eom`` clustering that is dominant is redone with HDBSCAN's ``leaf``
  selection (finer clusters from the leaves of the condensed tree) and the leaf result is kept only
  if it is no longer dominant; ``selection_used`` names the selection the labels come from.

``save`` writes one joblib (pickle) file: load only files you wrote yourself (trusted input).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import joblib
import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from fabml.errors import ConfigError, DataError, FabmlError

REDUCERS = ("none", "pca", "umap")
_FORMAT = "fabml.cluster_model/1"
# A spread of zero (all members at their centroid) would make every other distance infinitely novel.
_MIN_SPREAD = 1e-9


@dataclass
class ClusterConfig:
    """HDBSCAN clustering of embeddings and the novelty rule."""

    min_cluster_size: int = 50  # smallest pattern family HDBSCAN reports
    min_samples: int | None = None  # HDBSCAN density smoothing; None = min_cluster_size
    reduce: str = "pca"  # "none" | "pca" | "umap" (needs `pip install fabml[umap]`)
    reduce_dim: int = 16  # dimensions after reduction (density estimates degrade in high dimensions)
    cluster_selection_method: str = "eom"  # "eom" (excess of mass) | "leaf" (finer clusters)
    metric: str = "euclidean"  # HDBSCAN distance in the reduced space
    seed: int = 0  # PCA / UMAP randomness
    novelty_quantile: float = 0.95  # member-distance quantile that defines a cluster's spread
    dominant_share: float = 0.5  # largest cluster / clustered maps above this = one dominant cluster (warned)
    leaf_fallback: bool = True  # an eom clustering that is dominant is redone with leaf; kept if no longer dominant


def largest_cluster_share(labels: np.ndarray) -> float:
    """Size of the largest cluster / number of non-noise labels (``-1`` = noise); 0.0 when all are noise."""
    labels = np.asarray(labels)
    clustered = labels[labels != -1]
    if len(clustered) == 0:
        return 0.0
    return float(np.bincount(clustered - clustered.min()).max() / len(clustered))


def dominant_warning(share: float, n_clusters: int, selection: str, what: str = "clustering") -> str:
    """The one-line warning for a dominant cluster: the share, and what to try."""
    tip = ("try cluster.reduce=umap, a smaller cluster.min_cluster_size or a better embedding"
           if selection == "leaf" else "try cluster.cluster_selection_method=leaf or cluster.reduce=umap")
    return (f"{what}: one cluster holds {share:.0%} of the clustered maps ({n_clusters} clusters, "
            f"{selection} selection); the D4 same-cluster rate means little here: {tip}")


def _check_config(cfg: ClusterConfig) -> None:
    if cfg.reduce not in REDUCERS:
        raise ConfigError(f"cluster.reduce={cfg.reduce!r} is unknown: use one of {', '.join(REDUCERS)}")
    if cfg.cluster_selection_method not in ("eom", "leaf"):
        raise ConfigError(f"cluster.cluster_selection_method={cfg.cluster_selection_method!r}: use 'eom' or 'leaf'")
    if int(cfg.min_cluster_size) < 2:
        raise ConfigError(f"cluster.min_cluster_size={cfg.min_cluster_size} must be >= 2")
    if cfg.min_samples is not None and int(cfg.min_samples) < 1:
        raise ConfigError(f"cluster.min_samples={cfg.min_samples} must be >= 1 or null")
    if int(cfg.reduce_dim) < 1:
        raise ConfigError(f"cluster.reduce_dim={cfg.reduce_dim} must be >= 1")
    if not 0.0 < float(cfg.dominant_share) <= 1.0:
        raise ConfigError(f"cluster.dominant_share={cfg.dominant_share} must be in (0, 1]")
    if not 0.0 < float(cfg.novelty_quantile) <= 1.0:
        raise ConfigError(f"cluster.novelty_quantile={cfg.novelty_quantile} must be in (0, 1]")


def _normalise(emb: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(emb)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise DataError(f"{what} must have shape {want}, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _make_reducer(cfg: ClusterConfig, n: int, d: int):
    if cfg.reduce == "none":
        return None
    dim = min(int(cfg.reduce_dim), d, n)
    if cfg.reduce == "pca":
        return PCA(n_components=dim, random_state=cfg.seed)
    try:
        import umap  # optional dependency, heavy import (numba)
    except ImportError as exc:
        raise ConfigError("cluster.reduce='umap' needs umap-learn: `pip install fabml[umap]`, or use reduce=pca") from exc
    # min_dist=0 packs clusters tightly, as recommended for clustering on UMAP output;
    # a fixed random_state makes UMAP single-threaded (n_jobs=1 says so without a warning)
    return umap.UMAP(n_components=dim, n_neighbors=min(15, n - 1), min_dist=0.0, random_state=cfg.seed, n_jobs=1)


class ClusterModel:
    """HDBSCAN pattern families of embeddings, with assignment and novelty for new maps."""

    def __init__(self, cfg: ClusterConfig | None = None) -> None:
        self.cfg = cfg or ClusterConfig()
        _check_config(self.cfg)
        self.reducer = None
        self.dim: int | None = None
        self.points: np.ndarray | None = None  # [N, r] reduced training points
        self.labels_: np.ndarray | None = None  # [N] HDBSCAN labels, -1 = noise
        self.cluster_ids = np.zeros(0, dtype=np.int64)  # [K] sorted ids
        self.centroids = np.zeros((0, 0))  # [K, r] in the reduced space
        self.spreads = np.zeros(0)  # [K]
        self.sizes = np.zeros(0, dtype=np.int64)  # [K]
        self._nn: NearestNeighbors | None = None
        self.selection_used: str = self.cfg.cluster_selection_method  # the HDBSCAN selection the labels come from

    @property
    def n_clusters(self) -> int:
        return int(len(self.cluster_ids))

    @property
    def largest_share(self) -> float:
        """Largest cluster / clustered (non-noise) training maps; 0.0 before fitting or with no cluster."""
        return 0.0 if self.labels_ is None else largest_cluster_share(self.labels_)

    @property
    def dominant(self) -> bool:
        """Whether one cluster holds more than ``cfg.dominant_share`` of the clustered maps."""
        return self.largest_share > float(self.cfg.dominant_share)

    def dominance(self) -> dict:
        """``{largest_cluster_share, dominant_cluster, cluster_selection_used}`` for reports."""
        return {"largest_cluster_share": self.largest_share, "dominant_cluster": bool(self.dominant),
                "cluster_selection_used": self.selection_used}

    def fit(self, emb: np.ndarray) -> np.ndarray:
        """Cluster ``emb`` [N, D]; returns [N] labels (-1 = noise), also kept as ``labels_``."""
        x = _normalise(emb, None, "embeddings to cluster")
        n = len(x)
        if n < int(self.cfg.min_cluster_size):
            raise ConfigError(
                f"cluster.min_cluster_size={self.cfg.min_cluster_size} exceeds the number of maps ({n}): lower it"
            )
        min_samples = self.cfg.min_samples if self.cfg.min_samples is not None else self.cfg.min_cluster_size
        if int(min_samples) > n:
            raise ConfigError(f"cluster.min_samples={min_samples} exceeds the number of maps ({n}): lower it")
        self.dim = x.shape[1]
        self.reducer = _make_reducer(self.cfg, n, x.shape[1])
        z = x if self.reducer is None else self.reducer.fit_transform(x)
        z = np.ascontiguousarray(z, dtype=np.float64)
        labels = self._hdbscan(z, self.cfg.cluster_selection_method)
        self.selection_used = self.cfg.cluster_selection_method
        if (self.cfg.leaf_fallback and self.selection_used == "eom"
                and largest_cluster_share(labels) > float(self.cfg.dominant_share)):
            leaf = self._hdbscan(z, "leaf")
            if 0.0 < largest_cluster_share(leaf) <= float(self.cfg.dominant_share):
                labels, self.selection_used = leaf, "leaf"
        self._set_state(z, labels)
        return labels.copy()

    def _hdbscan(self, z: np.ndarray, selection: str) -> np.ndarray:
        """[N] HDBSCAN labels of the reduced points ``z`` with the given cluster selection (eom | leaf)."""
        hdb = HDBSCAN(
            min_cluster_size=int(self.cfg.min_cluster_size),
            min_samples=None if self.cfg.min_samples is None else int(self.cfg.min_samples),
            cluster_selection_method=selection,
            metric=self.cfg.metric,
            copy=True,
        )
        return hdb.fit_predict(z).astype(np.int64)

    def _set_state(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Store training points and labels; derive centroids, spreads and the member search."""
        self.points, self.labels_ = z, labels
        self.cluster_ids = np.unique(labels[labels != -1])
        r = z.shape[1]
        self.centroids = np.zeros((len(self.cluster_ids), r))
        self.spreads = np.zeros(len(self.cluster_ids))
        self.sizes = np.zeros(len(self.cluster_ids), dtype=np.int64)
        for i, c in enumerate(self.cluster_ids):
            members = z[labels == c]
            self.centroids[i] = members.mean(axis=0)
            dist = np.linalg.norm(members - self.centroids[i], axis=1)
            self.spreads[i] = max(float(np.quantile(dist, self.cfg.novelty_quantile)), _MIN_SPREAD)
            self.sizes[i] = len(members)
        clustered = labels != -1
        self._nn = NearestNeighbors(n_neighbors=1).fit(z[clustered]) if clustered.any() else None

    def _require_fit(self) -> None:
        if self.points is None:
            raise FabmlError("the cluster model is not fitted: call fit() or load a saved model first")

    def _require_clusters(self) -> None:
        self._require_fit()
        if self.n_clusters == 0:
            raise FabmlError(
                f"HDBSCAN found no cluster (all {len(self.points)} maps are noise): "
                f"lower cluster.min_cluster_size (now {self.cfg.min_cluster_size}) and cluster again"
            )

    def transform(self, emb: np.ndarray) -> np.ndarray:
        """Normalised and reduced embeddings [N, r] (the space clusters live in)."""
        self._require_fit()
        x = _normalise(emb, self.dim, "embeddings")
        z = x if self.reducer is None else self.reducer.transform(x)
        return np.ascontiguousarray(z, dtype=np.float64)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """[N] cluster id of the nearest clustered training point of each row of ``emb`` (never -1)."""
        self._require_clusters()
        z = self.transform(emb)
        if len(z) == 0:
            return np.zeros(0, dtype=np.int64)
        _, idx = self._nn.kneighbors(z)
        return self.labels_[self.labels_ != -1][idx[:, 0]]

    def novelty(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(score [N] float, flag [N] bool, nearest_cluster [N] int)`` for the rows of ``emb``.

        score = Euclidean distance (reduced space) to the nearest centroid / that cluster's spread;
        flag = score > 1.0 (farther out than ``novelty_quantile`` of the cluster's own members).
        """
        self._require_clusters()
        z = self.transform(emb)
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2, without an [N, K, r] difference array
        sq = (z**2).sum(axis=1)[:, None] - 2.0 * z @ self.centroids.T + (self.centroids**2).sum(axis=1)[None, :]
        d = np.sqrt(np.maximum(sq, 0.0))  # [N, K]
        nearest = d.argmin(axis=1) if len(z) else np.zeros(0, dtype=np.int64)
        score = d[np.arange(len(z)), nearest] / self.spreads[nearest]
        return score, score > 1.0, self.cluster_ids[nearest]

    def summary(self) -> list[dict]:
        """One dict per cluster: ``{cluster, size, spread}`` (spread in reduced-space distance units)."""
        self._require_fit()
        return [
            {"cluster": int(c), "size": int(s), "spread": float(sp)}
            for c, s, sp in zip(self.cluster_ids, self.sizes, self.spreads)
        ]

    def save(self, path: str | Path) -> Path:
        """Write config, arrays and reducer to one joblib file (pickle: trusted input only)."""
        self._require_fit()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": _FORMAT, "config": asdict(self.cfg), "dim": self.dim, "points": self.points,
                 "labels": self.labels_, "reducer": self.reducer, "selection_used": self.selection_used}
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump(state, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ClusterModel":
        """Read a model written by :meth:`save`. Unpickles: only load files you trust."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"cluster model {path} not found: run `fabml wafer cluster` first")
        try:
            state = joblib.load(path)
        except Exception as exc:  # unpickling raises many types; all mean "not a readable model"
            raise DataError(f"cannot read cluster model {path}: {exc}".splitlines()[0]) from exc
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise DataError(f"{path} is not a fabml cluster model ({_FORMAT})")
        known = {f.name for f in fields(ClusterConfig)}
        model = cls(ClusterConfig(**{k: v for k, v in state["config"].items() if k in known}))
        model.dim, model.reducer = int(state["dim"]), state["reducer"]
        model._set_state(np.asarray(state["points"]), np.asarray(state["labels"], dtype=np.int64))
        model.selection_used = str(state.get("selection_used", model.cfg.cluster_selection_method))
        return model

