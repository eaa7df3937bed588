"""kNN prediction and the classification report against hand values and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from fabml.errors import DataError
from fabml.metrics.classification import classification_report, knn_predict


def _at(degrees) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


REF = _at([0, 10, 20, 30, 40]) * 5.0  # scaled: the vote is by cosine, not by dot product
REF_LABELS = np.array(["a", "a", "a", "b", "b"])


def test_majority_vote_hand_computed():
    # query at 33 degrees: neighbours by angle 30 (b), 40 (b), 20 (a), 10 (a), 0 (a)
    q = _at([33])
    assert knn_predict(REF, REF_LABELS, q, k=3).tolist() == ["b"]
    assert knn_predict(REF, REF_LABELS, q, k=5).tolist() == ["a"]


def test_vote_tie_goes_to_larger_summed_similarity():
    # k=2: one vote each for a (20 deg) and b (30 deg); the nearer one wins
    assert knn_predict(REF, REF_LABELS, _at([24, 26]), k=2).tolist() == ["a", "b"]
    # exactly equal sums: the label that sorts first
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert knn_predict(ref, ["b", "a"], np.array([[1.0, 1.0]]), k=2).tolist() == ["a"]


def test_exclude_self_and_chunking():
    emb = _at([0, 10, 50, 60, 65])
    labels = np.array([1, 2, 2, 1, 1])
    # without self, each point's nearest neighbour: 0->10 (2), 10->0 (1), 50->60 (1), 60->65 (1), 65->60 (1)
    pred = knn_predict(emb, labels, emb, k=1, exclude_self=True, chunk_size=2)
    assert pred.tolist() == [2, 1, 1, 1, 1] and pred.dtype == labels.dtype
    assert knn_predict(emb, labels, emb, k=1).tolist() == labels.tolist()


def test_knn_bad_inputs():
    with pytest.raises(DataError, match="one label per reference"):
        knn_predict(REF, ["a"], _at([0]))
    with pytest.raises(DataError, match="Q == N"):
        knn_predict(REF, REF_LABELS, _at([0]), exclude_self=True)


def test_report_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    rep = classification_report(y_true, y_pred)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["macro_acc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    first = rep["per_class"][0]
    assert first == {"label": 0, "support": 3, "recall": pytest.approx(2 / 3), "acc": pytest.approx(2 / 3),
                     "precision": 1.0, "f1": pytest.approx(0.8)}
    assert [r["support"] for r in rep["per_class"]] == [3, 2, 1]
    assert type(first["label"]) is int  # JSON-friendly


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_report_matches_sklearn():
    rng = np.random.default_rng(0)
    names = np.array(["Center", "Donut", "Edge-Ring", "Scratch", "None"])
    y_true = names[rng.integers(0, 5, 300)]
    y_pred = np.where(rng.random(300) < 0.6, y_true, names[rng.integers(0, 5, 300)])
    y_pred[:3] = "Near-full"  # a class only ever predicted
    rep = classification_report(y_true, y_pred)
    assert rep["macro_acc"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert rep["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert rep["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    never_true = next(r for r in rep["per_class"] if r["label"] == "Near-full")
    assert never_true["support"] == 0 and never_true["recall"] is None and never_true["f1"] == 0.0


def test_report_bad_inputs():
    with pytest.raises(DataError, match="equal length"):
        classification_report([1, 2], [1])
