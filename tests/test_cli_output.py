"""What the real ``fabml`` command prints and writes when its output goes to a file, on a 40-column
"terminal", into a long run folder whose name holds square brackets (defect 1 of issue 7).

Each command runs in its own process (``python -m fabml``), as a user runs it, so ``COLUMNS`` is read
when the consoles are built. Results are checked in the files/JSON the commands write; the printed
text is checked only for what a user or a log parser relies on: every path whole on one line, no
markup eaten, no empty lines left by progress bars, no row printed twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabml.data.synthetic_inspection import make_inspection_set

TINY_PADIM = ["--set", "model.backbone=resnet18", "--set", "model.layers=[1,2]", "--set", "model.pretrained=false",
              "--set", "model.n_features=16", "--set", "data.train_fraction=0.75", "--set", "data.val_fraction=0.25",
              "--set", "device=cpu"]
TINY_WAFER = ["data.size=32", "model.preset=tiny", "model.stem=imagenet", "train.epochs=1", "train.batch_size=32",
              "train.num_workers=0", "train.lr=1e-3", "cluster.min_cluster_size=8", "cluster.reduce_dim=4",
              "eval.d4_maps=20"]


def _fabml(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m fabml ARGS`` with stdout/stderr to pipes (not a terminal) and COLUMNS=40."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(COLUMNS="40", OMP_NUM_THREADS="1", NO_COLOR="1")
    result = subprocess.run([sys.executable, "-m", "fabml", *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _one_line_with(text: str, path: Path) -> str:
    """The single printed line that holds ``path`` whole (it must not be wrapped or cut at a bracket)."""
    lines = [line for line in text.splitlines() if str(path) in line]
    assert lines, f"{path} is not printed whole on one line in:\n{text}"
    return lines[0]


def _no_empty_lines(result: subprocess.CompletedProcess) -> None:
    """A transient progress bar on a non-terminal leaves an empty line behind; none may be left."""
    assert "" not in result.stdout.splitlines(), result.stdout
    assert "" not in result.stderr.splitlines(), result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # no escape codes in a file


@pytest.fixture()
def bracketed(tmp_path: Path) -> Path:
    """A run folder 100+ characters long ending in ``[my_run]`` (rich markup would drop ``[my_run]``)."""
    return tmp_path / ("a" * 60) / "[my_run]"


@pytest.mark.timeout(900)
def test_anomaly_fit_evaluate_export_print_whole_paths(tmp_path: Path, bracketed: Path) -> None:
    pytest.importorskip("onnxruntime")
    data = make_inspection_set(tmp_path / "data")
    run = bracketed

    fitted = _fabml("anomaly", "fit", "--model", "padim", "--data", str(data), "--out", str(run),
                    "--image-size", "32", *TINY_PADIM)
    assert "fitted padim" in _one_line_with(fitted.stdout, run / "model.pt")
    assert (run / "model.pt").is_file()
    _no_empty_lines(fitted)

    evaluated = _fabml("anomaly", "evaluate", "--run", str(run), "--no-figures")
    _one_line_with(evaluated.stdout, run / "evaluation")
    _no_empty_lines(evaluated)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    rows = [line for line in evaluated.stdout.splitlines() if line.startswith("| image_auroc ")]
    assert rows == [f"| image_auroc        | {metrics['image_auroc']:.3f} |"]  # the number is whole, not 0.9…

    exported = _fabml("anomaly", "export", "--run", str(run), "--samples", "2")
    _one_line_with(exported.stdout, run / "model.onnx")
    _one_line_with(exported.stdout, run / "model.parity.json")
    _no_empty_lines(exported)
    parity = json.loads((run / "model.parity.json").read_text())
    assert parity["onnx"] == str(run / "model.onnx") and parity["n_images"] == 2 and parity["model"] == "padim"
    assert 0.0 <= parity["max_score_diff"] <= parity["tolerance"] and 0.0 <= parity["max_map_diff"] <= parity["tolerance"]


@pytest.mark.timeout(900)
def test_wafer_train_and_evaluate_print_each_metric_once(bracketed: Path) -> None:
    sets = [arg for override in TINY_WAFER for arg in ("--set", override)]
    trained = _fabml("wafer", "train", "--data", "synthetic:96:0", "--out", str(bracketed), *sets)
    assert _one_line_with(trained.stdout, bracketed).strip() == f"run folder: {bracketed}"
    _no_empty_lines(trained)
    assert (bracketed / "config.yaml").is_file()

    evaluated = _fabml("wafer", "evaluate", "--run", str(bracketed), "--reference", "synthetic:96:0",
                       "--test", "synthetic:40:5")
    _one_line_with(evaluated.stdout, bracketed / "eval" / "metrics.json")
    _no_empty_lines(evaluated)
    metrics = json.loads((bracketed / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"byol", "baseline_pca", "baseline_raw", "baseline_wu2015"}  # every baseline beside it
    printed = [line.split("|")[1].strip() for line in evaluated.stdout.splitlines() if line.startswith("| ")]
    assert printed[0] == "metric" and len(printed) == len(set(printed)), printed  # each row once (five were twice)
    assert {"knn_macro_acc", "silhouette", "n_clusters", "noise_ratio", "d4_mean_cosine"} <= set(printed)
    written = [line.split("|")[1].strip() for line in (bracketed / "eval" / "metrics.md").read_text().splitlines()
               if line.startswith("| ")]
    assert len(written) == len(set(written)) and "knn_macro_acc" in written


def test_wafer_metrics_table_lists_each_metric_once() -> None:
    """The five metrics shared by the labelled and unlabelled key lists used to get two rows each."""
    from fabml.wafer.evaluation import SUMMARY_KEYS, UNLABELLED_KEYS, metric_keys, metrics_markdown

    shared = [k for k in SUMMARY_KEYS if k in UNLABELLED_KEYS]
    assert shared == ["silhouette", "n_clusters", "noise_ratio", "d4_mean_cosine", "d4_same_cluster_rate",
                      "largest_cluster_share", "dominant_cluster"]
    results = {"byol": {k: 0.5 for k in SUMMARY_KEYS}, "baseline_pca": {"silhouette": 0.123456, "iou_map": 0.25}}
    keys = metric_keys(results)
    assert keys == [*SUMMARY_KEYS, "iou_map"]
    lines = metrics_markdown(results).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    assert cells[0] == ["metric", "byol", "baseline_pca"]
    assert [row[0] for row in cells[2:]] == keys
    assert cells[2 + keys.index("silhouette")] == ["silhouette", "0.500", "0.123"]
    assert cells[-1] == ["iou_map", "n/a", "0.250"]
