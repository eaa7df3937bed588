"""The wafer job's evaluation: kNN accuracy, retrieval, clustering, D4 invariance, outline shortcut.

Every embedding method (the BYOL encoder, the PCA baseline, D4-averaged variants) goes through
:func:`evaluate_embeddings`, so their figures are directly comparable.

Mixed-pattern labels (``Center+Scratch``, see :mod:`fabml.data.wafer_labels`) are scored twice by
:func:`pattern_precision`: by exact label set and by any shared pattern. The no-pattern labels
(``cfg.no_pattern_label``: one name or a set of names) are never queries.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict

import numpy as np
import torch

from fabml.console import table_lines
from fabml.data.wafer_labels import LABEL_SEPARATOR, label_patterns, multi_hot_matrix, no_pattern_set
from fabml.errors import DataError
from fabml.index import VectorIndex
from fabml.metrics.classification import classification_report, knn_predict
from fabml.metrics.clustering import cluster_quality
from fabml.metrics.invariance import d4_mean_cosine, d4_same_cluster_rate
from fabml.metrics.retrieval import best_d4_iou, d4_orbit_db, label_relevance, retrieval_metrics
from fabml.wafer.clusters import ClusterConfig, ClusterModel
from fabml.wafer.config import EvalConfig
from fabml.wafer.embedding import EmbedFn, embed_d4_orbits, embed_tensors

SUMMARY_KEYS = (
    "knn_macro_acc", "knn_accuracy", "defect_precision@5", "defect_map", "defect_mrr", "silhouette",
    "silhouette_embedding_space", "n_clusters", "noise_ratio", "nmi", "ari", "d4_mean_cosine",
    "d4_same_cluster_rate", "shape_match@5", "shape_match_label_chance", "outline_match@5",
    "outline_match_label_chance",
    "label_set_precision@5", "shared_pattern_precision@5", "largest_cluster_share", "dominant_cluster",
)
"""The headline figures of a labelled evaluation, in table order."""

UNLABELLED_KEYS = (
    "d4_orbit_precision@5", "d4_orbit_recall@10", "d4_orbit_mrr", "d4_orbit_map", "iou_precision@5", "iou_map",
    "iou_queries_without_relevant", "silhouette", "n_clusters", "noise_ratio", "d4_mean_cosine", "d4_same_cluster_rate",
    "largest_cluster_share", "dominant_cluster",
)
"""The headline figures of an evaluation without labels (seven of them are shared with :data:`SUMMARY_KEYS`)."""


def metric_keys(results: dict[str, dict], keys: tuple[str, ...] | None = None) -> list[str]:
    """The metric names to tabulate, in order and each once: ``keys`` (default :data:`SUMMARY_KEYS` then
    :data:`UNLABELLED_KEYS`, which share seven names) that at least one method of ``results`` has."""
    keys = keys or SUMMARY_KEYS + UNLABELLED_KEYS
    return [k for k in dict.fromkeys(keys) if any(k in res for res in results.values())]


def metrics_markdown(results: dict[str, dict], keys: tuple[str, ...] | None = None) -> str:
    """A markdown table: one row per metric of :func:`metric_keys`, one column per method (cells: 3 decimals)."""
    names = list(results)
    rows = [[key, *(results[n].get(key) for n in names)] for key in metric_keys(results, keys)]
    return "\n".join(table_lines(["metric", *names], rows)) + "\n"


def outline_keys(tensors: torch.Tensor) -> list[str]:
    """One key per map of ``tensors [N, 2, S, S]``: a digest of its resized die mask (channel 1 > 0.5).

    Two maps share a key iff their wafer outlines (which pixels hold a die, after resizing to S x S)
    are identical; maps on the same die grid with different edge dies get different keys.
    """
    if tensors.ndim != 4 or tensors.shape[1] < 2:
        raise DataError(f"outline keys need maps [N, 2, S, S] (channel 1 = die mask), got {list(tensors.shape)}")
    masks = (tensors[:, 1] > 0.5).reshape(len(tensors), -1).numpy()
    return [hashlib.blake2b(np.packbits(m).tobytes(), digest_size=8).hexdigest() for m in masks]


def shape_shortcut(
    query_emb: np.ndarray, ref_emb: np.ndarray, query_shapes: list[str], ref_shapes: list[str],
    query_labels: list[str] | None, ref_labels: list[str] | None, k: int = 5, name: str = "shape",
) -> dict[str, float]:
    """How much nearest neighbours share the query's die-grid shape (or outline) beyond what its label explains.

    ``{name}_match@k``: fraction of the k nearest reference maps with the query's grid shape (or, with
    ``name="outline"`` and keys from :func:`outline_keys`, the query's exact die mask).
    ``{name}_match_label_chance``: the same fraction for k maps drawn at random among the reference maps
    with the query's label (what a perfect, shape-blind pattern matcher would show).
    A ratio well above 1 means the encoder matches maps by outline/grid rather than by pattern. When every
    map has the same grid, the grid figure reads 1.0 against a chance of 1.0; the outline figure still measures.
    """
    index = VectorIndex(ref_emb.shape[1])  # exact cosine search
    index.add(ref_emb)
    _, idx = index.search(query_emb, k)
    ref_shapes_arr = np.asarray(ref_shapes)
    q_shapes = np.asarray(query_shapes)
    match = float((ref_shapes_arr[idx] == q_shapes[:, None]).mean())
    out = {f"{name}_match@{k}": match}
    if query_labels is not None and ref_labels is not None:
        pair_counts = Counter(zip(ref_labels, ref_shapes))
        label_counts = Counter(ref_labels)
        chance = [pair_counts[(lab, shp)] / max(label_counts[lab], 1) for lab, shp in zip(query_labels, query_shapes)]
        out[f"{name}_match_label_chance"] = float(np.mean(chance))
    return out


def pattern_precision(
    query_emb: np.ndarray,
    ref_emb: np.ndarray,
    query_labels: list[str],
    ref_labels: list[str],
    ks: tuple[int, ...] = (5,),
    separator: str = LABEL_SEPARATOR,
    no_pattern: str | list[str] | tuple[str, ...] | frozenset[str] = "None",
) -> dict[str, float | int]:
    """Precision@k of cosine retrieval for multi-pattern labels, two ways.

    Each label is read as a set of patterns (``"Center+Scratch"`` -> {Center, Scratch}; the
    ``no_pattern`` names give the empty set). Queries are the maps with at least one pattern; for
    query q with pattern set P(q) and its k nearest reference maps r_1..r_k:

    - ``label_set_precision@k`` = mean_q |{i <= k : P(r_i) = P(q)}| / k  (exact label set)
    - ``shared_pattern_precision@k`` = mean_q |{i <= k : P(r_i) ∩ P(q) ≠ ∅}| / k  (any shared pattern)

    As in :func:`~fabml.metrics.retrieval.retrieval_metrics`, a query with no relevant reference at
    all is left out of the mean (and counted in ``*_queries_without_relevant``); ``pattern_queries``
    counts the queries with a pattern. With single-pattern labels both precisions equal
    ``defect_precision@k``. Embeddings are [Q, D] and [N, D]; labels one per row.
    """
    skip = no_pattern_set(no_pattern)
    q_sets = [label_patterns(lab, separator, skip) for lab in query_labels]
    r_sets = [label_patterns(lab, separator, skip) for lab in ref_labels]
    keep = np.asarray([bool(p) for p in q_sets], dtype=bool)
    out: dict[str, float | int] = {"pattern_queries": int(keep.sum())}
    if not keep.any():
        return out
    codes: dict[frozenset[str], int] = {}
    q_code = np.asarray([codes.setdefault(p, len(codes)) for p, k in zip(q_sets, keep) if k])
    r_code = np.asarray([codes.get(p, -1) for p in r_sets])
    q_hot, names = multi_hot_matrix([lab for lab, k in zip(query_labels, keep) if k], separator, skip)
    r_hot = np.stack([[name in p for name in names] for p in r_sets]) if r_sets else np.zeros((0, len(names)))
    q_hot_f, r_hot_t = torch.from_numpy(q_hot.astype(np.float32)), torch.from_numpy(r_hot.astype(np.float32)).T

    def same_set(rows: np.ndarray) -> np.ndarray:
        return q_code[rows][:, None] == r_code[None, :]

    def shared(rows: np.ndarray) -> np.ndarray:
        return (q_hot_f[torch.from_numpy(np.asarray(rows))] @ r_hot_t).numpy() > 0

    for name, relevance in (("label_set", same_set), ("shared_pattern", shared)):
        res = retrieval_metrics(query_emb[keep], ref_emb, relevance, ks=ks, exclude_self=False)
        out.update({f"{name}_precision@{k}": res[f"precision@{k}"] for k in ks})
        out[f"{name}_queries_without_relevant"] = res["queries_without_relevant"]
    return out


def label_settings(cfg: EvalConfig) -> tuple[str, frozenset[str]]:
    """``(label separator, no-pattern names)`` of an eval config: ``cfg.label_separator`` (the one the readers
    joined mixed-pattern labels with; ``+`` when the object has none) and ``cfg.no_pattern_label`` as one name or a set."""
    return getattr(cfg, "label_separator", LABEL_SEPARATOR), no_pattern_set(cfg.no_pattern_label)


def evaluate_embeddings(
    embed: EmbedFn,
    ref_tensors: torch.Tensor,
    ref_labels: list[str],
    test_tensors: torch.Tensor,
    test_labels: list[str],
    cfg: EvalConfig,
    cluster_cfg: ClusterConfig,
    ref_shapes: list[str] | None = None,
    test_shapes: list[str] | None = None,
    progress: bool = False,
    ref_outlines: list[str] | None = None,
    test_outlines: list[str] | None = None,
) -> dict:
    """All wafer metrics for one embedding function.

    ``ref_*`` is the labelled reference set (the kNN memory and the retrieval database),
    ``test_*`` the evaluated maps; tensors are ``[N,2,S,S]``. Returns a flat dict of figures plus
    ``per_class`` (kNN per-class table), ``test_clusters`` (HDBSCAN labels of the test maps)
    and ``test_embeddings`` for figures. ``*_shapes`` (grid ``ROWSxCOLS``) and ``*_outlines`` (keys of
    :func:`outline_keys`) give the outline-shortcut figures ``shape_match@5`` and ``outline_match@5``.
    """
    t0 = time.perf_counter()
    ref_emb = embed_tensors(embed, ref_tensors, cfg.embed_batch, progress)
    test_emb = embed_tensors(embed, test_tensors, cfg.embed_batch, progress)
    out: dict = {"embed_seconds": time.perf_counter() - t0, "embedding_dim": int(ref_emb.shape[1])}

    pred = knn_predict(ref_emb, np.asarray(ref_labels), test_emb, k=cfg.knn_k)
    report = classification_report(np.asarray(test_labels), pred)
    out["knn_macro_acc"] = report["macro_acc"]
    out["knn_accuracy"] = report["accuracy"]
    out["knn_macro_f1"] = report["macro_f1"]
    out["per_class"] = report["per_class"]

    separator, no_pattern = label_settings(cfg)
    defect = np.asarray([lab not in no_pattern for lab in test_labels])
    rel = label_relevance(np.asarray(test_labels)[defect], np.asarray(ref_labels))
    ret = retrieval_metrics(test_emb[defect], ref_emb, rel, ks=tuple(cfg.ks), exclude_self=False)
    out.update({f"defect_{key}": value for key, value in ret.items()})
    out.update(pattern_precision(test_emb, ref_emb, list(test_labels), list(ref_labels),
                                 ks=tuple(cfg.ks), separator=separator, no_pattern=no_pattern))

    if ref_shapes is not None and test_shapes is not None:
        out.update(shape_shortcut(test_emb, ref_emb, test_shapes, ref_shapes, test_labels, ref_labels, k=5))
    if ref_outlines is not None and test_outlines is not None:
        out.update(shape_shortcut(test_emb, ref_emb, test_outlines, ref_outlines, test_labels, ref_labels, k=5,
                                  name="outline"))

    t1 = time.perf_counter()
    clusters = ClusterModel(cluster_cfg)
    test_clusters = clusters.fit(test_emb)
    quality = cluster_quality(clusters.transform(test_emb), test_clusters, np.asarray(test_labels))
    out.update(quality)
    out.update(clusters.dominance())
    out["silhouette_space"] = f"{cluster_cfg.reduce}:{cluster_cfg.reduce_dim}" if cluster_cfg.reduce != "none" else "embedding"
    raw_quality = cluster_quality(test_emb, test_clusters, None)
    out["silhouette_embedding_space"] = raw_quality.get("silhouette")
    out["cluster_seconds"] = time.perf_counter() - t1

    n_orbit = min(cfg.d4_maps, len(test_tensors))
    if n_orbit:
        pick = np.sort(np.random.default_rng(0).choice(len(test_tensors), n_orbit, replace=False))
        orbit = embed_d4_orbits(embed, test_tensors[torch.from_numpy(pick)], cfg.embed_batch)
        out["d4_mean_cosine"] = d4_mean_cosine(orbit)
        out["d4_maps"] = n_orbit
        if quality.get("n_clusters", 0) > 0:
            # Every orbit member is assigned to the family of its nearest clustered test map (never noise).
            orbit_labels = clusters.predict(orbit.reshape(-1, orbit.shape[-1])).reshape(n_orbit, 8)
            out["d4_same_cluster_rate"] = d4_same_cluster_rate(orbit_labels)
    out["test_clusters"] = test_clusters
    out["test_embeddings"] = test_emb
    out["cluster_settings"] = asdict(cluster_cfg)
    return out


def evaluate_unlabelled(embed: EmbedFn, tensors: torch.Tensor, cfg: EvalConfig, cluster_cfg: ClusterConfig,
                        n_queries: int = 500, iou_threshold: float = 0.7) -> dict:
    """Figures that need no labels: retrieval against the seed's pseudo ground truth, clustering, D4 invariance.

    Pseudo ground truth (on ``n_queries`` maps drawn with a fixed seed from ``tensors [N,2,S,S]``):
    ``d4_orbit_*``: the database is every map plus the 7 non-identity D4 transforms of each query;
    a query's own transforms are its relevant items (the other maps are distractors).
    ``iou_*``: queries and database are the same drawn maps (self excluded); relevant = die-level IoU of
    failed dies > ``iou_threshold`` after the best D4 alignment, on the resized maps.
    """
    emb = embed_tensors(embed, tensors, cfg.embed_batch)
    pick = np.sort(np.random.default_rng(0).choice(len(tensors), min(n_queries, len(tensors)), replace=False))
    queries = tensors[torch.from_numpy(pick)].float()
    orbit_db, owner = d4_orbit_db(queries)
    db_emb = np.concatenate([emb, embed_tensors(embed, orbit_db, cfg.embed_batch)])
    owner_all = np.concatenate([np.full(len(emb), -1), owner])
    out: dict = {f"d4_orbit_{k}": v for k, v in retrieval_metrics(
        emb[pick], db_emb, d4_orbit_relevance_with_distractors(owner_all), ks=tuple(cfg.ks)).items()}

    masks = queries[:, 0]
    iou = best_d4_iou(masks, masks) > iou_threshold
    out.update({f"iou_{k}": v for k, v in retrieval_metrics(emb[pick], emb[pick], iou, ks=tuple(cfg.ks),
                                                           exclude_self=True).items()})
    clusters = ClusterModel(cluster_cfg)
    labels = clusters.fit(emb)
    out.update(cluster_quality(clusters.transform(emb), labels, None))
    out.update(clusters.dominance())
    if len(pick):
        orbit = embed_d4_orbits(embed, queries, cfg.embed_batch)
        out["d4_mean_cosine"] = d4_mean_cosine(orbit)
        if clusters.n_clusters > 0:
            out["d4_same_cluster_rate"] = d4_same_cluster_rate(
                clusters.predict(orbit.reshape(-1, orbit.shape[-1])).reshape(len(pick), 8))
    return out


def d4_orbit_relevance_with_distractors(owner: np.ndarray):
    """Relevance rows for queries ``0..Q-1``: db item j is relevant iff ``owner[j] == query`` (-1 = distractor)."""
    def relevance(rows: np.ndarray) -> np.ndarray:
        return owner[None, :] == np.asarray(rows)[:, None]

    return relevance

