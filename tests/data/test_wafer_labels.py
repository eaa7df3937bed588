"""Multi-pattern wafer labels: canonical joined strings from joined names, lists and multi-hot vectors."""

from __future__ import annotations

import numpy as np
import pytest

from fabml.data.wafer_labels import (
    MULTI_HOT_PATTERNS,
    canonical_label,
    check_separator,
    label_patterns,
    multi_hot_label,
    multi_hot_matrix,
)
from fabml.errors import ConfigError, DataError

CENTER_SCRATCH = [1, 0, 0, 0, 0, 0, 1, 0]  # MixedWM38 order: Center .. Scratch (7th), Random


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Center", "Center"),
        ("Scratch+Center", "Center+Scratch"),
        (" Scratch + Center + Scratch ", "Center+Scratch"),
        ("none", "None"),
        ("None+Loc", "Loc"),  # next to a real pattern, "none" is dropped
        (["Scratch", "Center"], "Center+Scratch"),
        (np.array([["none"]], dtype=object), "None"),  # LSWMD's wrapping
        (np.zeros((0, 0)), None),  # LSWMD's "unlabelled"
        (CENTER_SCRATCH, "Center+Scratch"),
        (np.array(CENTER_SCRATCH, dtype=bool), "Center+Scratch"),
        (np.array(CENTER_SCRATCH, dtype=float), "Center+Scratch"),
        ([0] * 8, "None"),
        ("[1, 0, 0, 0, 0, 0, 1, 0]", "Center+Scratch"),
        ("0 1 0 1 0 0 0 1", "Donut+Edge-Ring+Random"),
        (3, "3"),  # a single number is a class name, not a vector
        (float("nan"), None),
        ("", None),
        (None, None),
    ],
)
def test_canonical_label(value, expected):
    assert canonical_label(value) == expected


def test_other_separator_and_names():
    assert canonical_label("Scratch|Center", separator="|") == "Center|Scratch"
    assert canonical_label("Edge-Loc|Loc", separator="|") == "Edge-Loc|Loc"
    assert multi_hot_label([1, 1], names=("B", "A"), separator="/") == "A/B"
    assert label_patterns("Center|Scratch", separator="|") == {"Center", "Scratch"}
    assert label_patterns("Normal", no_pattern={"None", "Normal"}) == frozenset()
    with pytest.raises(ConfigError, match="label separator"):
        check_separator(",")
    with pytest.raises(ConfigError, match="label separator"):
        check_separator(" ")


def test_bad_vectors_are_data_errors():
    with pytest.raises(DataError, match=f"3 entries but {len(MULTI_HOT_PATTERNS)} pattern names"):
        canonical_label([1, 0, 1])
    with pytest.raises(DataError, match="other than 0 and 1"):
        canonical_label([2, 0, 0, 0, 0, 0, 0, 0])


def test_multi_hot_matrix():
    hot, names = multi_hot_matrix(["Center+Scratch", "None", "Scratch", None])
    assert names == ["Center", "Scratch"]
    assert hot.tolist() == [[True, True], [False, False], [False, True], [False, False]]
