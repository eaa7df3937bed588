"""The wafer evaluation: outline shortcut (grid and die mask), pattern precision, no-pattern labels."""

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


def _at(degrees: float) -> list[float]:
    return [float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees)))]


def test_pattern_precision_hand_computed():
    from fabml.wafer.evaluation import pattern_precision

    # Reference maps on the unit circle (cosine similarity falls with the angle between them).
    ref_labels = ["Center", "Center+Scratch", "Scratch", "None", "Donut", "Donut+Loc", "Normal"]
    ref = np.array([_at(a) for a in (0, 10, 90, 100, 180, 200, 300)], dtype=np.float32)
    query_labels = ["Scratch+Center", "Scratch", "None", "Donut", "Edge-Ring+Scratch", "Normal"]
    query = np.array([_at(a) for a in (2, 93, 95, 185, 88, 0)], dtype=np.float32)
    out = pattern_precision(query, ref, query_labels, ref_labels, ks=(1, 2), no_pattern=("None", "Normal"))
    # Queries: "None" and "Normal" are no-pattern labels, not queries -> 4 pattern queries.
    # q0 {Center, Scratch} at 2 deg: nearest r0 Center (0), r1 Center+Scratch (10)
    #    exact: @1 0/1, @2 1/2      shared: @1 1/1, @2 2/2
    # q1 {Scratch} at 93: r2 Scratch (90), r3 None (100)  exact @1 1, @2 1/2; shared the same
    # q3 {Donut} at 185: r4 Donut (180), r5 Donut+Loc (200)  exact @1 1, @2 1/2; shared @1 1, @2 1
    # q4 {Edge-Ring, Scratch} at 88: no reference has that exact set -> left out of the exact figures;
    #    shared: r2 Scratch (90), r3 None (100) -> @1 1, @2 1/2
    assert out["pattern_queries"] == 4
    assert out["label_set_queries_without_relevant"] == 1 and out["shared_pattern_queries_without_relevant"] == 0
    assert out["label_set_precision@1"] == pytest.approx(2 / 3)
    assert out["label_set_precision@2"] == pytest.approx(0.5)
    assert out["shared_pattern_precision@1"] == pytest.approx(1.0)
    assert out["shared_pattern_precision@2"] == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)


def test_pattern_precision_single_labels_equal_defect_precision():
    from fabml.metrics.retrieval import label_relevance, retrieval_metrics
    from fabml.wafer.evaluation import pattern_precision

    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(15, 6)).astype(np.float32)
    names = np.array(["None", "Center", "Scratch", "Loc"])
    ref_labels, query_labels = list(names[rng.integers(0, 4, 40)]), list(names[rng.integers(0, 4, 15)])
    out = pattern_precision(query, ref, query_labels, ref_labels, ks=(5,))
    defect = np.array([lab != "None" for lab in query_labels])
    want = retrieval_metrics(query[defect], ref, label_relevance(np.array(query_labels)[defect], np.array(ref_labels)),
                             ks=(5,))
    assert out["label_set_precision@5"] == pytest.approx(want["precision@5"])
    assert out["shared_pattern_precision@5"] == pytest.approx(want["precision@5"])


def test_label_settings_accept_one_name_or_a_set():
    from types import SimpleNamespace

    from fabml.wafer.evaluation import label_settings

    assert label_settings(SimpleNamespace(no_pattern_label="None")) == ("+", frozenset({"None"}))
    cfg = SimpleNamespace(no_pattern_label=["None", "Normal"], label_separator="|")
    assert label_settings(cfg) == ("|", frozenset({"None", "Normal"}))


def test_evaluate_embeddings_on_a_small_mixed_generated_set():
    import torch

    from fabml.data.wafer_dataset import WaferTensorDataset
    from fabml.data.wafer_io import load_wafer_maps
    from fabml.wafer.clusters import ClusterConfig
    from fabml.wafer.config import EvalConfig
    from fabml.wafer.evaluation import SUMMARY_KEYS, evaluate_embeddings, outline_keys

    ref = WaferTensorDataset(load_wafer_maps("synthetic-mixed:102:0"), size=16)
    test = WaferTensorDataset(load_wafer_maps("synthetic-mixed:68:1"), size=16)

    def embed(x: torch.Tensor) -> torch.Tensor:  # the failed-die channel, pooled to 4x4: a tiny fixed embedding
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :1].float(), 4).flatten(1) + 1e-3

    labels = [m["label"] for m in ref.meta], [m["label"] for m in test.meta]
    assert any("+" in lab for lab in labels[1])
    out = evaluate_embeddings(embed, ref.tensors, labels[0], test.tensors, labels[1], EvalConfig(d4_maps=8),
                              ClusterConfig(min_cluster_size=5, reduce_dim=4), ref_outlines=outline_keys(ref.tensors),
                              test_outlines=outline_keys(test.tensors))
    for key in ("outline_match@5", "outline_match_label_chance", "largest_cluster_share", "dominant_cluster"):
        assert key in SUMMARY_KEYS and key in out
    assert out["dominant_cluster"] == (out["largest_cluster_share"] > 0.5)
    for key in ("label_set_precision@5", "shared_pattern_precision@5"):
        assert key in SUMMARY_KEYS and key in out
    assert out["pattern_queries"] == sum(lab != "None" for lab in labels[1])
    assert 0 <= out["label_set_precision@5"] <= out["shared_pattern_precision@5"] <= 1
    assert out["label_set_precision@5"] == pytest.approx(out["defect_precision@5"])  # labels are canonical


def test_outline_shortcut_by_die_mask_hand_computed():
    """Same 3x3 grid everywhere (the grid figure is 1.0 against 1.0); the die masks still differ."""
    import torch

    from fabml.wafer.evaluation import outline_keys

    full = torch.ones(3, 3)
    corner = full.clone()
    corner[0, 0] = 0  # one edge die missing: another outline on the same grid
    masks = [full, full, corner, corner]  # reference maps 0..3
    ref_x = torch.stack([torch.stack([torch.zeros(3, 3), m]) for m in masks])  # [4, 2, 3, 3], channel 1 = die mask
    q_x = torch.stack([torch.stack([torch.zeros(3, 3), m]) for m in (full, corner)])
    ref_keys, q_keys = outline_keys(ref_x), outline_keys(q_x)
    assert ref_keys[0] == ref_keys[1] == q_keys[0] != ref_keys[2] == ref_keys[3] == q_keys[1]
    ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    query = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    ref_labels, query_labels = ["A", "B", "A", "B"], ["A", "B"]
    grid = shape_shortcut(query, ref, ["3x3"] * 2, ["3x3"] * 4, query_labels, ref_labels, k=2)
    assert grid == {"shape_match@2": 1.0, "shape_match_label_chance": 1.0}
    out = shape_shortcut(query, ref, q_keys, ref_keys, query_labels, ref_labels, k=2, name="outline")
    # query 0 (full) neighbours refs 0, 1 (both full) -> 1.0; query 1 (corner) refs 2, 3 (both corner) -> 1.0
    assert out["outline_match@2"] == pytest.approx(1.0)
    # label chance: label A refs are {full, corner} -> 1/2 for query 0; label B refs {full, corner} -> 1/2 for query 1
    assert out["outline_match_label_chance"] == pytest.approx(0.5)


def test_outline_keys_need_the_die_mask_channel():
    import torch

    from fabml.errors import DataError
    from fabml.wafer.evaluation import outline_keys

    with pytest.raises(DataError, match="channel 1"):
        outline_keys(torch.zeros(2, 1, 4, 4))


def test_normal_maps_are_never_pattern_queries():
    from fabml.wafer.evaluation import pattern_precision

    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = ["None", "Normal", "Center", "Center"]
    one = pattern_precision(emb, emb, labels, labels, ks=(1,), no_pattern="None")
    both = pattern_precision(emb, emb, labels, labels, ks=(1,), no_pattern=["None", "Normal"])
    assert one["pattern_queries"] == 3 and both["pattern_queries"] == 2
