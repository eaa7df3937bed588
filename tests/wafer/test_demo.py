"""The wafer demo's summary line: the learned embedding beside every baseline, and which is best."""

from __future__ import annotations

from fabml.wafer.demo import comparison_line


def test_comparison_line_names_the_best_method() -> None:
    results = {"byol": {"knn_macro_acc": 0.70}, "byol_tta_d4": {"knn_macro_acc": 0.85},
               "baseline_pca": {"knn_macro_acc": 0.77}, "baseline_wu2015": {"knn_macro_acc": 0.965}}
    line = comparison_line(results)
    assert "learned (BYOL, D4-averaged) 0.850" in line and "pca 0.770" in line and "wu2015 0.965" in line
    assert line.endswith("best: wu2015 (fabml wafer embed --method wu2015)")
    results["baseline_wu2015"]["knn_macro_acc"] = 0.80
    assert comparison_line(results).endswith("learned is best")
    results["fused"] = {"knn_macro_acc": 0.90}
    line = comparison_line(results)
    assert "fused (learned + baseline) 0.900" in line and line.endswith("best: fused (fabml wafer embed --method fused)")
    assert comparison_line({"byol": {"knn_macro_acc": 0.5}}) == (
        "kNN macro accuracy on unseen maps: learned (BYOL) 0.500")


def test_comparison_line_reports_the_whitened_learned_embedding_when_evaluated() -> None:
    results = {"byol": {"knn_macro_acc": 0.70}, "byol_tta_d4": {"knn_macro_acc": 0.85},
               "learned": {"knn_macro_acc": 0.88}, "baseline_wu2015": {"knn_macro_acc": 0.86}}
    line = comparison_line(results)
    assert "learned (BYOL, D4-averaged, whitened) 0.880" in line and line.endswith("learned is best")
