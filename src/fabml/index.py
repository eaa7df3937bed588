"""Cosine-similarity vector index on Faiss: build, add, search, save, load.

Vectors are L2-normalised on the way in (``add`` and ``search``), so the inner product
the index computes is the cosine similarity in [-1, 1]. Ids are the insertion order
(0 .. len-1 across successive ``add`` calls).

Kinds (:class:`IndexConfig.kind`):

- ``"flat"``: exact inner product (``IndexFlatIP``); the default, fine up to ~1e6 vectors.
- ``"ivf"``: ``IndexIVFFlat`` with ``nlist`` inverted lists, ``nprobe`` of them searched.
  It is trained on the vectors of the first ``add`` call (k-means needs points: with fewer
  than ``39 * nlist`` of them, ``nlist`` is lowered to ``min(sqrt(N), N // 39)`` with a warning).
- ``"hnsw"``: ``IndexHNSWFlat`` graph with ``hnsw_m`` links per node and ``ef_search``
  candidates per query (no training).

``save(path)`` writes the Faiss file at ``path`` and a JSON sidecar ``path + ".json"`` holding
the config, dimension, count and effective ``nlist``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np

from fabml.errors import ConfigError, DataError

KINDS = ("flat", "ivf", "hnsw")
# Faiss k-means asks for at least this many training points per centroid.
_MIN_POINTS_PER_LIST = 39


@dataclass
class IndexConfig:
    """Which Faiss index to build and how it searches."""

    kind: str = "flat"  # "flat" exact | "ivf" inverted lists | "hnsw" graph
    nlist: int = 1024  # ivf: number of inverted lists (k-means centroids)
    nprobe: int = 16  # ivf: lists searched per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_search: int = 64  # hnsw: candidate list size at search time


def _check_config(cfg: IndexConfig) -> None:
    if cfg.kind not in KINDS:
        raise ConfigError(f"index.kind={cfg.kind!r} is unknown: use one of {', '.join(KINDS)}")
    for name in ("nlist", "nprobe", "hnsw_m", "ef_search"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"index.{name}={getattr(cfg, name)} must be >= 1")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [N,D] scaled to unit L2 norm (all-zero rows stay zero); float32, C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class VectorIndex:
    """A cosine-similarity index of ``dim``-dimensional vectors."""

    def __init__(self, dim: int, cfg: IndexConfig | None = None) -> None:
        self.cfg = cfg or IndexConfig()
        _check_config(self.cfg)
        if int(dim) < 1:
            raise ConfigError(f"index dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.nlist_effective: int | None = None  # set when an IVF index is trained
        self._index: faiss.Index | None = None
        if self.cfg.kind == "flat":
            self._index = faiss.IndexFlatIP(self.dim)
        elif self.cfg.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(self.dim, int(self.cfg.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        self._apply_search_params()

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def _apply_search_params(self) -> None:
        if self._index is None:
            return
        if self.cfg.kind == "hnsw":
            self._index.hnsw.efSearch = int(self.cfg.ef_search)
        elif self.cfg.kind == "ivf":
            self._index.nprobe = min(int(self.cfg.nprobe), int(self._index.nlist))

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise DataError(f"{what} must have shape [N, {self.dim}] for this index, got {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise DataError(f"{what} contains NaN or infinite values")
        return l2_normalise(arr)

    def _train_ivf(self, x: np.ndarray) -> None:
        n = len(x)
        nlist = int(self.cfg.nlist)
        if n < _MIN_POINTS_PER_LIST * nlist:
            reduced = max(1, min(int(math.sqrt(n)), n // _MIN_POINTS_PER_LIST))
            warnings.warn(
                f"index.nlist={nlist} needs >= {_MIN_POINTS_PER_LIST * nlist} training vectors, got {n}: "
                f"using nlist={reduced}",
                stacklevel=3,
            )
            nlist = reduced
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        self._quantizer = quantizer  # keep the Python reference alive as long as the index
        self._index = index
        self.nlist_effective = nlist
        self._apply_search_params()

    def add(self, emb: np.ndarray) -> None:
        """Add vectors ``emb`` [N, dim] (any float dtype); ids continue from ``len(self)``."""
        x = self._check(emb, "vectors to add")
        if len(x) == 0:
            return
        if self._index is None:  # IVF: train on the first batch
            self._train_ivf(x)
        self._index.add(x)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors of each query row.

        Args:
            query: [Q, dim] vectors (normalised here).
            k: neighbours per query; capped at ``len(self)``.
        Returns:
            scores [Q, k'] float32 cosine similarities, descending; ids [Q, k'] int64 insertion
            indices, with k' = min(k, len(self)). Approximate kinds (ivf, hnsw) may return id -1
            with score -inf where fewer than k' candidates were visited.
        """
        if len(self) == 0:
            raise DataError("the vector index is empty: add embeddings before searching")
        if int(k) < 1:
            raise ConfigError(f"search k must be >= 1, got {k}")
        q = self._check(query, "query vectors")
        scores, ids = self._index.search(q, min(int(k), len(self)))
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` and its sidecar to ``path.json``; returns ``path``."""
        if self._index is None:
            raise DataError("cannot save an IVF index before any vectors were added (it is untrained)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path))
        meta = {"cfg": asdict(self.cfg), "dim": self.dim, "count": len(self), "nlist_effective": self.nlist_effective}
        _sidecar(path).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index written by :meth:`save`."""
        path = Path(path)
        side = _sidecar(path)
        if not path.is_file() or not side.is_file():
            raise DataError(f"vector index {path} (and its sidecar {side.name}) not found: build it with `embed` first")
        try:
            meta = json.loads(side.read_text())
            known = {f.name for f in fields(IndexConfig)}
            cfg = IndexConfig(**{k: v for k, v in meta["cfg"].items() if k in known})
            index = faiss.read_index(str(path))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise DataError(f"cannot read vector index {path}: {exc}".splitlines()[0]) from exc
        if index.d != int(meta["dim"]) or index.ntotal != int(meta["count"]):
            raise DataError(f"vector index {path} does not match its sidecar {side.name} (dimension or count differ)")
        out = cls.__new__(cls)
        out.cfg, out.dim, out._index = cfg, int(meta["dim"]), index
        out.nlist_effective = meta.get("nlist_effective")
        _check_config(cfg)
        out._apply_search_params()
        return out


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")
