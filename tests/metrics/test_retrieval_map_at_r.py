"""Label retrieval from neighbour lists (Recall@k, Precision@k, MAP@R, weighted vote) against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from fabml.errors import DataError
from fabml.metrics.retrieval import (
    label_retrieval_metrics,
    map_at_r,
    precision_at_k,
    recall_at_k,
    weighted_vote,
)

# Three queries of classes 0, 1, 2 and their four nearest references (labels, similarities), most similar first.
QUERY = np.array([0, 1, 2])
NEIGHBOURS = np.array([
    [1, 0, 0, 2],  # R=2: ranks 1-2 relevant 0 1 -> AP@R = (1/2) / 2 = 0.25
    [1, 2, 1, 0],  # R=3: ranks 1-3 relevant 1 0 1 -> AP@R = (1 + 2/3) / 3 = 5/9
    [0, 1, 2, 2],  # R=2: ranks 1-2 relevant 0 0 -> AP@R = 0
])
SCORES = np.array([
    [0.9, 0.8, 0.7, 0.1],
    [0.95, 0.5, 0.4, 0.3],
    [0.6, 0.55, 0.5, 0.45],
])
R = np.array([2, 3, 2])


def test_recall_and_precision_at_k_by_hand() -> None:
    assert recall_at_k(NEIGHBOURS, QUERY, [1, 3]) == pytest.approx({1: 1 / 3, 3: 1.0})
    # top-3 same-label counts 2, 2, 1
    assert precision_at_k(NEIGHBOURS, QUERY, [1, 3]) == pytest.approx({1: 1 / 3, 3: 5 / 9})


def test_map_at_r_by_hand() -> None:
    assert map_at_r(NEIGHBOURS, QUERY, R) == pytest.approx((0.25 + 5 / 9 + 0.0) / 3)
    # a perfect ranking: the R nearest are exactly the R same-label references
    assert map_at_r(np.array([[4, 4, 1]]), np.array([4]), np.array([2])) == pytest.approx(1.0)
    with pytest.raises(DataError, match="R=5"):
        map_at_r(NEIGHBOURS, QUERY, np.array([5, 1, 1]))


def test_weighted_vote_by_hand() -> None:
    # q0: class 1 0.9 vs class 0 0.8+0.7 -> 0; q1: class 1 1.35 vs class 2 0.5 -> 1; q2: 0.6 / 0.55 / 0.5 -> 0
    assert weighted_vote(NEIGHBOURS, SCORES, top_k=3).tolist() == [0, 1, 0]
    # with the fourth neighbour q2's class 2 collects 0.95 and wins
    assert weighted_vote(NEIGHBOURS, SCORES, top_k=4)[2] == 2
    # a tie goes to the class ranked first; similarities <= 0 do not vote, so the nearest decides
    assert weighted_vote(np.array([[1, 3]]), np.array([[0.5, 0.5]]), 2).tolist() == [1]
    assert weighted_vote(np.array([[2, 0, 0]]), np.array([[-0.1, -0.2, -0.3]]), 3).tolist() == [2]
    # a missing neighbour (-1, approximate index) does not vote
    assert weighted_vote(np.array([[-1, 5]]), np.array([[0.9, 0.1]]), 2).tolist() == [5]


def test_label_retrieval_metrics_skips_queries_without_references() -> None:
    labels = np.vstack([NEIGHBOURS, [[0, 1, 1, 0]]])
    scores = np.vstack([SCORES, [[0.9, 0.8, 0.7, 0.6]]])
    out = label_retrieval_metrics(labels, scores, np.append(QUERY, 7), np.append(R, 0), ks=(1, 5), top_k=3)
    assert out["n_queries"] == 3 and out["queries_without_relevant"] == 1
    assert out["recall_at_1"] == pytest.approx(1 / 3)
    assert out["recall_at_5"] == pytest.approx(1.0)  # k beyond the 4 listed neighbours counts all of them
    assert out["map_at_r"] == pytest.approx((0.25 + 5 / 9) / 3)
    assert out["top1_nn"] == pytest.approx(1 / 3)
    assert out["top1_vote"] == pytest.approx(2 / 3)
