"""Retrieval metrics: Precision@k, Recall@k, MRR and mAP of a cosine-similarity ranking.

Every query ranks the whole database by cosine similarity (embeddings are L2-normalised
here), most similar first; equal similarities keep database order (stable sort). Relevance
is either a boolean matrix ``[Q, N]`` or a callable ``relevance(query_indices) -> bool
[len(query_indices), N]`` that is asked one chunk of queries at a time, so a 12k x 37k
evaluation never holds a full ``[Q, N]`` matrix.

Definitions, for one query with ``R`` relevant database items (after ``exclude_self``):

- ``precision@k`` = relevant items in the top k / k
- ``recall@k`` = relevant items in the top k / R (the IR definition)
- ``mrr`` = mean of 1 / rank of the first relevant item (ranks from 1)
- ``map`` = mean of AP, AP = (1/R) * sum over relevant ranks r of precision@r (full ranking)

Queries with ``R = 0`` are skipped by every metric and counted in ``queries_without_relevant``.
When the database (less the query itself) holds fewer than k items, k is capped at that count.

Label retrieval from ranked neighbour lists (what a vector index returns; metric-learning definitions,
Musgrave et al., "A Metric Learning Reality Check", ECCV 2020). Inputs are integer class codes:
``neighbour_labels`` [Q, K] the labels of each query's K nearest references, most similar first (-1 = no
neighbour, as an approximate index may return), ``query_labels`` [Q], ``n_relevant`` [Q] = R, the number of
references with the query's label. Queries with R = 0 (a class the references do not hold) are skipped:

- :func:`recall_at_k`: ``Recall@k`` = fraction of queries with at least one same-label reference in the top k
  (the metric-learning Recall@k; not the IR recall of :func:`retrieval_metrics`)
- :func:`precision_at_k`: mean over queries of (same-label references in the top k) / k
- :func:`map_at_r`: ``MAP@R`` = mean over queries of (1/R) * sum_{i=1..R} P(i) * rel(i), with P(i) the
  precision at rank i and rel(i) = 1 when the i-th neighbour has the query's label
- :func:`weighted_vote`: predicted label = argmax_c sum_{j <= top_k, label_j = c} max(s_j, 0)
  (similarity-weighted vote of the top_k); the top-1 by nearest neighbour is ``neighbour_labels[:, 0]``

Pseudo ground truth without labels (the seed's): :func:`d4_orbit_db` + :func:`d4_orbit_relevance`
(a query's D4 transforms are its relevant items) and :func:`iou_relevance` (die-level IoU of
failed dies above a threshold after the best of the 8 D4 alignments).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

from fabml.data.d4 import d4_transform
from fabml.errors import ConfigError, DataError

RelevanceFn = Callable[[np.ndarray], np.ndarray]
Relevance = Union[np.ndarray, RelevanceFn]

# Elements of one [chunk, N] similarity block; bounds the working memory to a few hundred MB.
_CHUNK_ELEMENTS = 1 << 23
_MAX_CHUNK = 1024


def _normalised(x: np.ndarray, what: str) -> torch.Tensor:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array [N, D], got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} contains NaN or infinite values")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def query_chunk_size(n_db: int, chunk_size: int | None) -> int:
    """Queries per block: ``chunk_size`` when given, else as many as fit ~8M similarities (<= 1024)."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // max(n_db, 1)))


def cosine_scores(query_emb: np.ndarray, db_emb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked, L2-normalised float32 tensors ``(query [Q,D], db [N,D])``."""
    q = _normalised(query_emb, "query embeddings")
    db = _normalised(db_emb, "database embeddings")
    if q.shape[1] != db.shape[1]:
        raise DataError(f"query embeddings have {q.shape[1]} dimensions but the database has {db.shape[1]}")
    return q, db


def _relevance_rows(relevance: Relevance, rows: np.ndarray, n_db: int) -> np.ndarray:
    block = relevance(rows) if callable(relevance) else np.asarray(relevance)[rows]
    block = np.asarray(block)
    if block.shape != (len(rows), n_db):
        raise DataError(f"relevance for {len(rows)} queries must have shape [{len(rows)}, {n_db}], got {list(block.shape)}")
    return block.astype(bool, copy=True)


def retrieval_metrics(
    query_emb: np.ndarray,
    db_emb: np.ndarray,
    relevance: Relevance,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> dict[str, float | int]:
    """Precision@k, Recall@k, MRR and mAP of cosine retrieval.

    Args:
        query_emb: [Q, D] query embeddings.
        db_emb: [N, D] database embeddings.
        relevance: bool [Q, N] (True = db item relevant to the query) or a callable on query indices.
        ks: cut-offs for precision and recall.
        exclude_self: the queries are the database (Q == N, query i is item i): item i is
            removed from query i's ranking and relevant set.
        chunk_size: queries per block (default: as many as fit ~8M similarities, at most 1024).
    Returns:
        ``precision@k`` and ``recall@k`` for each k, ``mrr``, ``map`` (floats in [0, 1]; NaN when
        no query has a relevant item), ``n_queries`` (queries averaged), ``queries_without_relevant``.
    """
    q, db = cosine_scores(query_emb, db_emb)
    n_q, n_db = len(q), len(db)
    if any(int(k) < 1 for k in ks):
        raise ConfigError(f"retrieval cut-offs must be >= 1, got {list(ks)}")
    if exclude_self and n_q != n_db:
        raise DataError(f"exclude_self needs the queries to be the database (Q == N), got Q={n_q}, N={n_db}")
    n_cand = n_db - 1 if exclude_self else n_db
    if n_cand < 1:
        raise DataError("the retrieval database is empty (after excluding each query itself)")
    ks = [int(k) for k in ks]
    sums = {f"precision@{k}": 0.0 for k in ks} | {f"recall@{k}": 0.0 for k in ks} | {"mrr": 0.0, "map": 0.0}
    n_valid = 0
    step = query_chunk_size(n_db, chunk_size)
    for start in range(0, n_q, step):
        rows = np.arange(start, min(start + step, n_q))
        rel = torch.from_numpy(_relevance_rows(relevance, rows, n_db))
        sims = q[start : start + len(rows)] @ db.T
        if exclude_self:
            own = torch.arange(len(rows))
            sims[own, torch.from_numpy(rows)] = -torch.inf  # ranked last, then cut off
            rel[own, torch.from_numpy(rows)] = False
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :n_cand]
        rel_sorted = torch.gather(rel, 1, order)
        del sims, order
        n_rel = rel_sorted.sum(dim=1)
        keep = n_rel > 0
        if not keep.any():
            continue
        rel_sorted, n_rel = rel_sorted[keep], n_rel[keep].double()
        n_valid += int(keep.sum())
        hits = rel_sorted.cumsum(dim=1, dtype=torch.int32)
        for k in ks:
            kk = min(k, n_cand)
            found = hits[:, kk - 1].double()
            sums[f"precision@{k}"] += float((found / kk).sum())
            sums[f"recall@{k}"] += float((found / n_rel).sum())
        first = rel_sorted.to(torch.uint8).argmax(dim=1).double() + 1.0  # first True (one exists)
        sums["mrr"] += float((1.0 / first).sum())
        row, col = rel_sorted.nonzero(as_tuple=True)  # relevant positions only: AP sums precision there
        precision_at_rel = hits[row, col].double() / (col + 1).double()
        ap_sum = torch.zeros(len(n_rel), dtype=torch.float64).index_add_(0, row, precision_at_rel)
        sums["map"] += float((ap_sum / n_rel).sum())
    out: dict[str, float | int] = {key: (value / n_valid if n_valid else float("nan")) for key, value in sums.items()}
    out["n_queries"] = n_valid
    out["queries_without_relevant"] = n_q - n_valid
    return out


def label_relevance(q_labels: Sequence | np.ndarray, db_labels: Sequence | np.ndarray) -> RelevanceFn:
    """Relevance = same label: ``rel(rows)[i, j] = q_labels[rows[i]] == db_labels[j]``."""
    q = np.asarray(q_labels)
    db = np.asarray(db_labels)
    if q.ndim != 1 or db.ndim != 1:
        raise DataError("labels must be 1-D sequences (one label per query / database item)")

    def relevance(rows: np.ndarray) -> np.ndarray:
        if len(rows) and int(np.max(rows)) >= len(q):
            raise DataError(f"query labels hold {len(q)} labels but query {int(np.max(rows))} was asked for")
        return q[rows][:, None] == db[None, :]

    return relevance


def d4_orbit_db(maps: torch.Tensor, include_identity: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """A database of the D4 orbits of ``maps`` [Q,C,H,W] (square maps).

    Returns ``(db [Q*m, C,H,W], owner [Q*m] int64)`` with m = 8 (``include_identity``) or 7
    (the identity copy is left out by default: it would be a trivial exact hit at rank 1).
    Item ``q*m + j`` is transform ``k = j`` (or ``j + 1`` without identity) of map q,
    as :func:`fabml.data.d4.d4_transform` numbers them; ``owner`` gives q.
    """
    if maps.ndim != 4 or maps.shape[-1] != maps.shape[-2]:
        raise DataError(f"D4 orbits need square maps [Q,C,S,S], got shape {list(maps.shape)}")
    ks = range(0 if include_identity else 1, 8)
    members = torch.stack([d4_transform(maps, k) for k in ks], dim=1)  # [Q, m, C, S, S]
    owner = np.repeat(np.arange(len(maps), dtype=np.int64), len(ks))
    return members.reshape(-1, *maps.shape[1:]), owner


def d4_orbit_relevance(owner: np.ndarray) -> RelevanceFn:
    """Relevance for :func:`d4_orbit_db`: db item j is relevant to query i iff ``owner[j] == i``."""
    owner = np.asarray(owner)
    return label_relevance(np.arange(int(owner.max()) + 1 if len(owner) else 0), owner)


def failed_masks(maps: Sequence[np.ndarray], size: int = 64) -> torch.Tensor:
    """Failed-die masks ``[M, S, S]`` float32 (1 = failed die) of wafer maps coded 0/1/2.

    When every map is square and of one shape, the masks are the maps' own die grids
    (S = that side). Otherwise each map goes through
    :func:`fabml.data.wafer_dataset.prepare_wafer_tensors` (the dataset's resize) to ``size`` x ``size``
    and channel 0 (the failed-die indicator, pooled so that no failed die is lost) is the mask.
    """
    if len(maps) == 0:
        raise DataError("no wafer maps given for the IoU relevance")
    arrays = [np.asarray(m) for m in maps]
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise DataError(f"wafer map {i} must be a 2-D die array, got shape {list(a.shape)}")
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1 and arrays[0].shape[0] == arrays[0].shape[1]:
        return torch.from_numpy(np.stack([a == 2 for a in arrays]).astype(np.float32))
    from fabml.data.wafer_dataset import prepare_wafer_tensors  # lazy: only for maps of mixed shape

    return prepare_wafer_tensors(arrays, size)[:, 0].float()


def best_d4_iou(q_masks: torch.Tensor, db_masks: torch.Tensor) -> np.ndarray:
    """IoU of failed dies ``[Q, N]`` after the best of the 8 D4 alignments of each query.

    ``q_masks`` [Q,S,S] and ``db_masks`` [N,S,S] are 0/1 float masks of one square size.
    IoU = |A ∩ B| / |A ∪ B|; two maps without any failed die have IoU 1 (identical patterns).
    """
    if q_masks.shape[1:] != db_masks.shape[1:] or q_masks.shape[-1] != q_masks.shape[-2]:
        raise DataError(f"IoU needs square masks of one size, got {list(q_masks.shape)} and {list(db_masks.shape)}")
    db = db_masks.reshape(len(db_masks), -1).float()
    db_area = db.sum(dim=1)
    q_area = q_masks.reshape(len(q_masks), -1).float().sum(dim=1)  # D4 keeps the count of failed dies
    union_base = q_area[:, None] + db_area[None, :]
    best = torch.zeros(len(q_masks), len(db_masks))
    for k in range(8):
        qk = d4_transform(q_masks[:, None].float(), k).reshape(len(q_masks), -1)
        inter = qk @ db.T
        union = union_base - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones(()))
        best = torch.maximum(best, iou)
    return best.numpy()


def iou_relevance(
    q_maps: Sequence[np.ndarray], db_maps: Sequence[np.ndarray], threshold: float = 0.7, size: int = 64
) -> RelevanceFn:
    """Relevance = die-level IoU of failed dies > ``threshold`` after the best D4 alignment.

    ``q_maps`` / ``db_maps``: wafer maps [H, W] coded 0/1/2. Maps of mixed shapes are resized to
    ``size`` x ``size`` first (see :func:`failed_masks`). Cost per query chunk: 8 matrix products
    of [chunk, S*S] x [S*S, N].
    """
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"IoU threshold must be in [0, 1), got {threshold}")
    masks = failed_masks(list(q_maps) + list(db_maps), size)
    q_masks, db_masks = masks[: len(q_maps)], masks[len(q_maps) :]

    def relevance(rows: np.ndarray) -> np.ndarray:
        return best_d4_iou(q_masks[torch.from_numpy(np.asarray(rows))], db_masks) > threshold

    return relevance


# ----------------------------------------------------------------- label retrieval from neighbour lists
def _neighbours(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nb = np.asarray(neighbour_labels)
    q = np.asarray(query_labels)
    if nb.ndim != 2 or q.ndim != 1 or len(nb) != len(q):
        raise DataError(f"neighbour labels must be [Q, K] and query labels [Q], got {list(nb.shape)} and {list(q.shape)}")
    if nb.shape[1] < 1:
        raise DataError("neighbour lists are empty: search at least one neighbour per query")
    return nb.astype(np.int64, copy=False), q.astype(np.int64, copy=False)


def _cutoffs(ks: Sequence[int], n_cols: int) -> list[int]:
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ConfigError(f"retrieval cut-offs must be >= 1, got {ks}")
    if max(ks) > n_cols:
        raise DataError(f"cut-off k={max(ks)} needs {max(ks)} neighbours per query, got {n_cols}")
    return ks


def _has_relevant(query_labels: np.ndarray, n_relevant: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Queries to score: R > 0 (all of them when ``n_relevant`` is None), and never label -1."""
    keep = query_labels >= 0
    if n_relevant is not None:
        r = np.asarray(n_relevant)
        if r.shape != query_labels.shape:
            raise DataError(f"n_relevant must hold one count per query ({len(query_labels)}), got shape {list(r.shape)}")
        keep &= r > 0
    return keep


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int] = (1, 5),
                n_relevant: Sequence[int] | np.ndarray | None = None) -> dict[int, float]:
    """``{k: Recall@k}``: the fraction of queries with a same-label reference among their k nearest.

    ``neighbour_labels`` [Q, K>=max(ks)] int codes, most similar first; queries with ``n_relevant`` 0 (or
    label -1) are skipped; NaN when no query is left.
    """
    nb, q = _neighbours(neighbour_labels, query_labels)
    ks = _cutoffs(ks, nb.shape[1])
    keep = _has_relevant(q, n_relevant)
    hit = nb[keep] == q[keep, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) if keep.any() else float("nan") for k in ks}


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int] = (1, 5),
                   n_relevant: Sequence[int] | np.ndarray | None = None) -> dict[int, float]:
    """``{k: Precision@k}``: mean over queries of (same-label references among the k nearest) / k."""
    nb, q = _neighbours(neighbour_labels, query_labels)
    ks = _cutoffs(ks, nb.shape[1])
    keep = _has_relevant(q, n_relevant)
    hit = nb[keep] == q[keep, None]
    return {k: float(hit[:, :k].sum(axis=1).mean() / k) if keep.any() else float("nan") for k in ks}


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, n_relevant: Sequence[int] | np.ndarray) -> float:
    """MAP@R: mean over queries of ``(1/R) * sum_{i=1..R} P(i) * rel(i)`` with R = ``n_relevant[q]``.

    ``neighbour_labels`` must hold at least ``max(R)`` columns (search that many neighbours). A query's
    AP@R is 1 only when its R nearest references are exactly its R same-label ones. Queries with R = 0 are
    skipped; NaN when none is left.
    """
    nb, q = _neighbours(neighbour_labels, query_labels)
    r = np.asarray(n_relevant, dtype=np.int64)
    keep = _has_relevant(q, r)
    if not keep.any():
        return float("nan")
    nb, q, r = nb[keep], q[keep], r[keep]
    if int(r.max()) > nb.shape[1]:
        raise DataError(f"MAP@R needs R={int(r.max())} neighbours per query (the largest class), got {nb.shape[1]}")
    rel = nb[:, : int(r.max())] == q[:, None]
    ranks = np.arange(1, rel.shape[1] + 1)
    within = ranks[None, :] <= r[:, None]  # only the first R ranks of each query count
    rel &= within
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    return float(((precision * rel).sum(axis=1) / r).mean())


def weighted_vote(neighbour_labels: np.ndarray, neighbour_scores: np.ndarray, top_k: int) -> np.ndarray:
    """Labels ``[Q]`` by similarity-weighted vote of the ``top_k`` nearest references.

    Class score = sum of ``max(similarity, 0)`` over the class's references among the top_k; the class with
    the highest score wins, a tie goes to the class whose reference ranks first (so when every similarity
    is <= 0 the nearest neighbour decides). Missing neighbours (label -1) do not vote.
    """
    nb = np.asarray(neighbour_labels, dtype=np.int64)
    s = np.asarray(neighbour_scores, dtype=np.float64)
    if nb.ndim != 2 or s.shape != nb.shape:
        raise DataError(f"neighbour labels and scores must both be [Q, K], got {list(nb.shape)} and {list(s.shape)}")
    if int(top_k) < 1:
        raise ConfigError(f"eval.top_k must be >= 1, got {top_k}")
    nb, s = nb[:, : int(top_k)], s[:, : int(top_k)]
    if len(nb) == 0:
        return np.zeros(0, dtype=np.int64)
    valid = nb >= 0
    n_classes = int(nb.max()) + 1 if valid.any() else 1
    rows = np.broadcast_to(np.arange(len(nb))[:, None], nb.shape)
    score = np.zeros((len(nb), n_classes))
    np.add.at(score, (rows[valid], nb[valid]), np.maximum(s[valid], 0.0))
    first = np.full((len(nb), n_classes), np.iinfo(np.int64).max)
    ranks = np.broadcast_to(np.arange(nb.shape[1])[None, :], nb.shape)
    np.minimum.at(first, (rows[valid], nb[valid]), ranks[valid])
    present = first < np.iinfo(np.int64).max
    best = np.where(present, score, -np.inf).max(axis=1, keepdims=True)
    tied = present & (score == best)
    out = np.where(tied, first, np.iinfo(np.int64).max).argmin(axis=1)
    return np.where(present.any(axis=1), out, -1).astype(np.int64)


def label_retrieval_metrics(
    neighbour_labels: np.ndarray, neighbour_scores: np.ndarray, query_labels: np.ndarray,
    n_relevant: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5), top_k: int = 20,
) -> dict[str, float | int]:
    """Recall@k and Precision@k for ``ks``, MAP@R, top-1 accuracy by nearest neighbour (``top1_nn``) and by
    similarity-weighted vote of ``top_k`` (``top1_vote``), over the queries with R > 0 (``n_queries``;
    the others are counted in ``queries_without_relevant``). Neighbour lists need max(ks, top_k, max R)
    columns (fewer when the index holds fewer references: then every reference is listed)."""
    nb, q = _neighbours(neighbour_labels, query_labels)
    r = np.asarray(n_relevant)
    keep = _has_relevant(q, r)
    out: dict[str, float | int] = {}
    for k in ks:  # k beyond the listed neighbours (a smaller index) counts every reference listed
        out[f"recall_at_{k}"] = recall_at_k(nb, q, [min(int(k), nb.shape[1])], r)[min(int(k), nb.shape[1])]
    for k in ks:
        out[f"precision_at_{k}"] = precision_at_k(nb, q, [min(int(k), nb.shape[1])], r)[min(int(k), nb.shape[1])]
    out["map_at_r"] = map_at_r(nb, q, r)
    vote = weighted_vote(nb, neighbour_scores, top_k)
    out["top1_nn"] = float((nb[keep, 0] == q[keep]).mean()) if keep.any() else float("nan")
    out["top1_vote"] = float((vote[keep] == q[keep]).mean()) if keep.any() else float("nan")
    out["n_queries"] = int(keep.sum())
    out["queries_without_relevant"] = int((~keep).sum())
    return out
