"""The unknown threshold on hand-made embeddings: held-out-class FAR and the genuine-similarity quantile."""

from __future__ import annotations

import numpy as np
import pytest

from fabml.errors import ConfigError, DataError
from fabml.retrieval.threshold import UnknownThreshold, calibrate_unknown, class_max_similarity


def _at(degrees) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


# Four classes: references at 0, 90, 180, 270 degrees (two each, +-5 degrees).
REF = _at([-5, 5, 85, 95, 175, 185, 265, 275])
REF_LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])


def test_class_max_similarity_by_hand() -> None:
    sims = class_max_similarity(_at([10]), REF, REF_LABELS)
    assert sims.shape == (1, 4)
    # 10 degrees: class 0's nearest reference is 5 degrees away, class 1's 75, class 2's 165, class 3's 95
    assert sims[0] == pytest.approx(np.cos(np.deg2rad([5, 75, 165, 95])), abs=1e-6)


def test_far_threshold_rejects_a_new_class_and_accepts_known_ones() -> None:
    # validation queries 10 degrees off each class centre, plus 25 degrees off
    angles = [c * 90 + d for c in range(4) for d in (10, -25)]
    labels = np.repeat(np.arange(4), 2)
    thr = calibrate_unknown(_at(angles), labels, REF, REF_LABELS, method="far", far=0.0, heldout_class_fraction=0.25)
    assert thr.folds == 4 and thr.n_impostor == 8 and thr.n_genuine == 8
    # with class c held out, the query at c*90+10 is 75 degrees from class c+1 and the one at c*90-25 is 60 degrees
    # from class c-1: the largest impostor similarity is cos 60 = 0.5, and FAR 0 puts t just above it
    assert thr.threshold == pytest.approx(0.5, abs=1e-6) and thr.threshold > np.float32(np.cos(np.deg2rad(60)))
    assert thr.achieved_far == 0.0 and thr.true_accept_rate == 1.0
    # an image far from every class (a new defect type, here tilted out of the plane) is unknown, a known-class one is not
    new_and_known = np.array([[0.3, 0.3, 0.9], [0.99, 0.05, 0.0]], dtype=np.float32)
    best = class_max_similarity(new_and_known, np.hstack([REF, np.zeros((8, 1), np.float32)]), REF_LABELS).max(axis=1)
    assert thr.is_unknown(best).tolist() == [True, False]


def test_far_threshold_accepts_the_stated_share_of_impostors() -> None:
    # one reference per class on the unit circle; each class's validation query sits between its own
    # class and the next one, so held out, its best similarity is to the next class: 20 distinct values
    n = 20
    ref = _at(np.arange(n) * 18.0)
    offsets = np.linspace(1.0, 8.0, n)  # query of class c at c*18 + 18 - offset: offset degrees from class c+1
    queries = _at(np.arange(n) * 18.0 + 18.0 - offsets)
    thr = calibrate_unknown(queries, np.arange(n), ref, np.arange(n), method="far", far=0.1,
                            heldout_class_fraction=0.2, seed=3)
    assert thr.n_impostor == n
    assert thr.achieved_far == pytest.approx(0.1)  # exactly 2 of the 20 impostors reach t
    impostor = np.cos(np.deg2rad(offsets))
    assert int((impostor >= np.float32(thr.threshold)).sum()) == 2


def test_quantile_threshold_rejects_the_stated_share_of_genuine_queries() -> None:
    ref = _at([0, 180])
    queries = _at([5, 10, 20, 40])  # all class 0: genuine best similarities cos 5, cos 10, cos 20, cos 40
    thr = calibrate_unknown(queries, np.zeros(4, int), ref, np.array([0, 1]), method="quantile", quantile=0.25)
    assert thr.threshold == pytest.approx(np.cos(np.deg2rad(20)), abs=1e-6)
    assert thr.true_accept_rate == pytest.approx(0.75)
    back = UnknownThreshold.from_dict(thr.to_dict())
    assert back.threshold == thr.threshold and back.method == "quantile"


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown_method"):
        calibrate_unknown(REF, REF_LABELS, REF, REF_LABELS, method="median")
    with pytest.raises(ConfigError, match="unknown_far"):
        calibrate_unknown(REF, REF_LABELS, REF, REF_LABELS, far=1.5)
    with pytest.raises(DataError, match="unknown_method=quantile"):
        calibrate_unknown(_at([1]), np.array([0]), _at([0]), np.array([0]), method="far")
