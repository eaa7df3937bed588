"""Retrieval metrics against hand-computed values and a brute-force implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fabml.errors import DataError
from fabml.metrics.retrieval import (
    best_d4_iou,
    d4_orbit_db,
    d4_orbit_relevance,
    failed_masks,
    iou_relevance,
    label_relevance,
    retrieval_metrics,
)


def _at(degrees) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Database items at 0, 20, 40, 60, 80 degrees; queries at 0, 80, 35 and 10 degrees give rankings
# [0,1,2,3,4], [4,3,2,1,0], [2,1,3,0,4] and [0,1,...] (scaled to show the L2 normalisation).
DB = _at([0, 20, 40, 60, 80]) * np.array([[1.0], [3.0], [0.5], [2.0], [7.0]])
QUERIES = _at([0, 80, 35, 10]) * 4.0
REL = np.array(
    [
        [0, 1, 0, 1, 0],  # ranked relevance 0 1 0 1 0 -> P@1 0, P@3 1/3, R@3 1/2, RR 1/2, AP (1/2 + 2/4)/2 = 0.5
        [0, 0, 0, 0, 1],  # 1 0 0 0 0 -> P@1 1, P@3 1/3, R@1 1, RR 1, AP 1
        [1, 0, 1, 0, 1],  # 1 0 0 1 1 -> P@1 1, R@1 1/3, R@3 1/3, RR 1, AP (1 + 2/4 + 3/5)/3 = 0.7
        [0, 0, 0, 0, 0],  # no relevant item: skipped
    ],
    dtype=bool,
)


def test_toy_case_hand_computed():
    out = retrieval_metrics(QUERIES, DB, REL, ks=(1, 3, 10))
    assert out["n_queries"] == 3 and out["queries_without_relevant"] == 1
    assert out["precision@1"] == pytest.approx(2 / 3)
    assert out["precision@3"] == pytest.approx(1 / 3)
    assert out["recall@1"] == pytest.approx((0 + 1 + 1 / 3) / 3)
    assert out["recall@3"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert out["mrr"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert out["map"] == pytest.approx((0.5 + 1.0 + 0.7) / 3)
    # k = 10 > 5 database items: capped at 5
    assert out["precision@10"] == pytest.approx((2 / 5 + 1 / 5 + 3 / 5) / 3)
    assert out["recall@10"] == pytest.approx(1.0)


def test_callable_and_chunking_agree_with_matrix():
    full = retrieval_metrics(QUERIES, DB, REL, ks=(1, 3))
    one_by_one = retrieval_metrics(QUERIES, DB, lambda rows: REL[rows], ks=(1, 3), chunk_size=1)
    assert full == pytest.approx(one_by_one)


def test_exclude_self_hand_computed():
    emb = _at([0, 10, 60, 90])
    rel = label_relevance(["a", "b", "a", "b"], ["a", "b", "a", "b"])
    out = retrieval_metrics(emb, emb, rel, ks=(1,), exclude_self=True)
    # rankings without self: q0 [1,2,3] rel {2}; q1 [0,2,3] rel {3}; q2 [3,1,0] rel {0}; q3 [2,1,0] rel {1}
    assert out["precision@1"] == 0.0
    assert out["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert out["map"] == pytest.approx(out["mrr"])  # one relevant item each: AP = RR
    with_self = retrieval_metrics(emb, emb, rel, ks=(1,), exclude_self=False)
    assert with_self["precision@1"] == 1.0


def _brute_precision_at_k(q: np.ndarray, db: np.ndarray, rel: np.ndarray, k: int) -> float:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    values = []
    for i in range(len(q)):
        if not rel[i].any():
            continue
        order = sorted(range(len(db)), key=lambda j: -float(qn[i] @ dn[j]))
        values.append(sum(rel[i, j] for j in order[:k]) / k)
    return float(np.mean(values))


def test_precision_at_k_matches_brute_force():
    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(30, 8)), rng.normal(size=(120, 8))
    rel = rng.random((30, 120)) < 0.1
    rel[0] = False
    out = retrieval_metrics(q, db, rel, ks=(1, 5, 10), chunk_size=7)
    for k in (1, 5, 10):
        assert out[f"precision@{k}"] == pytest.approx(_brute_precision_at_k(q, db, rel, k))
    assert out["queries_without_relevant"] == 1


def test_bad_inputs():
    with pytest.raises(DataError, match="dimensions"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 4), bool))
    with pytest.raises(DataError, match=r"shape \[4, 5\]"):
        retrieval_metrics(QUERIES, DB, np.ones((4, 4), bool))
    with pytest.raises(DataError, match="Q == N"):
        retrieval_metrics(QUERIES, DB, REL, exclude_self=True)
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics(np.full((1, 2), np.nan), DB, REL[:1])
    with pytest.raises(DataError, match="query labels hold 2 labels"):
        retrieval_metrics(QUERIES, DB, label_relevance(["a", "b"], ["a"] * 5))


def test_d4_orbit_db_and_relevance():
    maps = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    db, owner = d4_orbit_db(maps)
    assert db.shape == (14, 1, 3, 3) and owner.tolist() == [0] * 7 + [1] * 7
    assert not any(torch.equal(db[j], maps[0]) for j in range(7))  # identity left out, others distinct
    full, owner8 = d4_orbit_db(maps, include_identity=True)
    assert torch.equal(full[0], maps[0]) and torch.equal(full[8], maps[1])
    rel = d4_orbit_relevance(owner)(np.array([1]))
    assert rel.shape == (1, 14) and rel[0].tolist() == [False] * 7 + [True] * 7
    # an encoder that is exactly D4-invariant retrieves the whole orbit first
    invariant = np.stack([np.sort(m.flatten().numpy()) for m in torch.cat([maps, db])])
    out = retrieval_metrics(invariant[:2] + 1.0, invariant[2:] + 1.0, d4_orbit_relevance(owner), ks=(7,))
    assert out["precision@7"] == 1.0 and out["map"] == 1.0


def test_best_d4_iou_hand_computed():
    a = np.ones((4, 4), np.uint8)
    a[0, 0] = a[0, 1] = a[1, 0] = 2  # L-shape in the top-left corner, 3 failed dies
    rotated = np.rot90(a).copy()  # the same pattern in another corner: IoU 1 after alignment
    shifted = np.ones((4, 4), np.uint8)
    shifted[0, 0] = shifted[0, 1] = 2  # 2 failed dies inside the L: IoU 2/3
    empty = np.ones((4, 4), np.uint8)
    masks = failed_masks([a, rotated, shifted, empty])
    assert masks.shape == (4, 4, 4)
    iou = best_d4_iou(masks[:1], masks)
    np.testing.assert_allclose(iou[0], [1.0, 1.0, 2 / 3, 0.0], atol=1e-6)
    assert best_d4_iou(masks[3:], masks[3:])[0, 0] == 1.0  # no failed dies on either map
    rel = iou_relevance([a], [rotated, shifted, empty], threshold=0.6)(np.array([0]))
    assert rel.tolist() == [[True, True, False]]
    assert iou_relevance([a], [rotated, shifted], threshold=0.7)(np.array([0])).tolist() == [[True, False]]


def test_iou_relevance_mixed_shapes_resizes():
    small = np.ones((6, 6), np.uint8)
    small[0:3, 0:3] = 2
    big = np.ones((12, 12), np.uint8)
    big[0:6, 0:6] = 2  # the same pattern on a finer die grid
    rel = iou_relevance([small], [big], threshold=0.7, size=12)(np.array([0]))
    assert rel.tolist() == [[True]]
