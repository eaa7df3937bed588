"""The outline-shortcut measure against hand-computed values."""

import numpy as np
import pytest

from fabml.wafer.evaluation import shape_shortcut


def test_shape_shortcut_hand_computed():
    # 2 queries, 4 reference maps; embeddings chosen so the 2 nearest neighbours are known.
    ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    query = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    ref_shapes = ["25x27", "30x30", "30x30", "30x30"]
    query_shapes = ["25x27", "30x30"]
    ref_labels = ["A", "A", "B", "B"]
    query_labels = ["A", "B"]
    out = shape_shortcut(query, ref, query_shapes, ref_shapes, query_labels, ref_labels, k=2)
    # query 0 neighbours: ref 0 (25x27, match), ref 1 (30x30, no) -> 0.5; query 1: refs 2, 3 both 30x30 -> 1.0
    assert out["shape_match@2"] == pytest.approx(0.75)
    # label chance: label A refs have shapes {25x27, 30x30} -> 1/2 for query 0; label B refs both 30x30 -> 1 for query 1
    assert out["shape_match_label_chance"] == pytest.approx(0.75)
