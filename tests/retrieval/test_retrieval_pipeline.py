"""The retrieval steps as functions on tiny generated shapes: train/resume, index and index --add without
retraining, evaluate, predict with the unknown threshold, export; bad inputs are one-line errors.

One tiny run (timm's ``test_efficientnet``, random weights, 32 px, 2 epochs) is trained once per module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fabml.errors import ConfigError, DataError, FabmlError
from fabml.retrieval.pipeline import build_index, evaluate, export, make_config, predict, split, train

KNOWN = ["circle", "square", "triangle", "cross"]  # "ring" is generated too: the class that arrives later


@pytest.fixture(scope="module")
def tiny(tiny_settings: list[str]) -> list[str]:
    return tiny_settings + ["data.class_names=[" + ",".join(KNOWN) + "]"]


@pytest.fixture(scope="module")
def data(shapes: Path) -> Path:
    return shapes


@pytest.fixture(scope="module")
def run(data: Path, tiny: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("retrieval") / "run"
    split(make_config(run_dir, None, tiny, data=data), run_dir)
    report = train(make_config(run_dir), run_dir, overrides=tiny)
    assert report.result.epochs_completed == 2
    build_index(run_dir)
    return run_dir


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_writes_the_run_and_selects_on_validation_recall(run: Path) -> None:
    info = json.loads((run / "run.json").read_text())
    assert info["job"] == "retrieval"
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2 and metrics["val_recall_at_1"].between(0, 1).all() and "val_map_at_r" in metrics
    state = torch.load(run / "model.pt", weights_only=False)
    assert state["job"] == "retrieval" and state["classes"] == KNOWN
    assert state["epoch"] == int(metrics["val_recall_at_1"].idxmax()) + 1  # the best epoch (first of ties)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    for part in ("train", "val", "test"):
        table = pd.read_csv(run / "splits" / f"{part}.csv")
        assert set(table["label"]) == set(KNOWN)  # class_names: the fifth folder is skipped


def test_validation_reuses_the_frozen_backbone_features_with_the_same_result(run: Path) -> None:
    from fabml.data.retrieval_data import read_retrieval_split
    from fabml.retrieval.pipeline import make_validator
    from fabml.retrieval.runs import load_trained

    cfg, model, _ = load_trained(run)
    method = type("Holder", (), {"model": model})()
    validate = make_validator(cfg, read_retrieval_split(run / "splits"), embed_batch=16)
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    model.backbone.requires_grad_(False)  # the warm-up: backbone frozen
    first = validate(method)
    n_first = len(calls)
    assert validate(method) == pytest.approx(first) and len(calls) == n_first  # no backbone pass the second time
    model.backbone.requires_grad_(True)  # fine-tuning: the whole model runs, same figures with unchanged weights
    assert validate(method) == pytest.approx(first, abs=1e-6) and len(calls) > n_first


def test_train_again_continues_and_a_changed_setting_is_refused_by_name(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    again = train(make_config(copy), copy)  # the same settings: continues from latest (nothing left to do)
    assert again.result.epochs_completed == 2 and len(pd.read_csv(copy / "metrics.csv")) == 2
    with pytest.raises(ConfigError, match="model.embedding_dim 16 -> 8"):
        train(make_config(copy, None, ["model.embedding_dim=8"]), copy)
    fresh = train(make_config(copy, None, ["model.embedding_dim=8"]), copy, fresh=True)
    assert fresh.result.epochs_completed == 2
    assert torch.load(copy / "model.pt", weights_only=False)["model"]["neck.1.weight"].shape[0] == 8


def test_index_holds_the_train_split_with_a_calibrated_threshold(run: Path) -> None:
    refs = pd.read_csv(run / "index" / "references.csv")
    train_split = pd.read_csv(run / "splits" / "train.csv")
    assert refs["path"].tolist() == train_split["item"].tolist()
    assert json.loads((run / "index" / "index.faiss.json").read_text())["count"] == len(refs)
    threshold = json.loads((run / "index" / "threshold.json").read_text())
    assert threshold["method"] == "far" and -1.0 <= threshold["threshold"] <= 1.0 + 1e-6
    assert threshold["achieved_far"] <= threshold["target"] or threshold["n_impostor"] < 20


def test_evaluate_writes_metrics_per_class_and_figures(run: Path) -> None:
    report = evaluate(run, "test", gallery_queries=4)
    written = json.loads((report.out_dir / "metrics.json").read_text())
    m = written["metrics"]
    assert written["split"] == "test" and m["n_queries"] == len(pd.read_csv(run / "splits" / "test.csv"))
    for key in ("recall_at_1", "recall_at_5", "precision_at_1", "precision_at_5", "map_at_r", "top1_nn", "top1_vote"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["recall_at_1"] == pytest.approx(m["top1_nn"])  # Recall@1 is the nearest neighbour's accuracy
    assert m["recall_at_5"] >= m["recall_at_1"]
    per_class = pd.read_csv(report.out_dir / "per_class.csv")
    assert per_class["class"].tolist() == KNOWN and per_class["n_queries"].sum() == m["n_queries"]
    assert (report.out_dir / "confusion.png").stat().st_size > 0 and (report.out_dir / "gallery.png").stat().st_size > 0
    assert 0.0 <= written["unknown"]["rejected_share"] <= 1.0


def test_evaluate_images_of_a_list_file(run: Path, data: Path, tmp_path: Path) -> None:
    listed = tmp_path / "queries.txt"
    listed.write_text("".join(f"{name}/{name}-05_{k}.png, {name}\n" for name in ("circle", "cross") for k in (0, 1)))
    shutil.copytree(data / "circle", tmp_path / "circle"), shutil.copytree(data / "cross", tmp_path / "cross")
    report = evaluate(run, list_file=listed, figures=False)
    assert report.out_dir == run / "evaluation" / "list_queries"
    written = json.loads((report.out_dir / "metrics.json").read_text())
    assert written["metrics"]["n_queries"] == 4
    assert pd.read_csv(report.out_dir / "per_class.csv")["class"].tolist() == ["circle", "cross"]


def test_predict_marks_unknown_below_the_threshold(run: Path, data: Path) -> None:
    result = predict(run, [data / "ring", data / "circle" / "circle-00_0.png"])
    table = pd.read_csv(result.out_dir / "predictions.csv")
    threshold = json.loads((run / "index" / "threshold.json").read_text())["threshold"]
    assert len(table) == 12 + 1
    below = table["best_similarity"].astype(np.float32) < np.float32(threshold)
    assert (table["unknown"] == below).all()
    assert (table.loc[below, "predicted"] == "unknown").all()
    assert (table.loc[~below, "predicted"] == table.loc[~below, "vote_class"]).all()
    # the circle image is a reference itself: its nearest reference is itself, similarity 1
    own = table[table["path"].str.endswith("circle-00_0.png")].iloc[0]
    assert own["nearest_class"] == "circle" and own["best_similarity"] == pytest.approx(1.0, abs=1e-5)
    neighbours = pd.read_csv(result.out_dir / "neighbours.csv")
    assert neighbours.groupby("path")["rank"].max().eq(5).all()  # eval.top_k references per image


def test_index_add_makes_a_new_class_predictable_without_retraining(run: Path, data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = _digest(copy / "model.pt")
    ring = sorted((data / "ring").glob("*.png"))
    refs_dir, queries = tmp_path / "new" / "ring", tmp_path / "queries"
    refs_dir.mkdir(parents=True), queries.mkdir()
    for f in ring:  # objects 00-02 become references, 03-05 are asked about
        shutil.copy(f, (refs_dir if f.name < "ring-03" else queries) / f.name)
    before = predict(copy, [queries], tmp_path / "before")
    assert "ring" not in set(before.table["vote_class"])

    report = build_index(copy, add=tmp_path / "new")
    assert report.added == 6 and report.new_classes == ["ring"]
    refs = pd.read_csv(copy / "index" / "references.csv")
    assert (refs["label"] == "ring").sum() == 6 and len(refs) == report.n_references
    with pytest.raises(DataError, match="already in the index"):  # one class folder is accepted too
        build_index(copy, add=refs_dir)
    after = predict(copy, [queries], tmp_path / "after")
    neighbours = pd.read_csv(after.out_dir / "neighbours.csv")
    assert (neighbours[neighbours["rank"] == 1]["label"] == "ring").mean() >= 0.5
    assert set(after.table["nearest_class"]) & {"ring"}
    assert _digest(copy / "model.pt") == weights  # the model did not change


def test_export_writes_onnx_with_parity(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    report = export(run, tmp_path / "emb.onnx", n_samples=2)
    parity = json.loads((tmp_path / "emb.parity.json").read_text())
    assert parity["n_images"] == 2 and parity["image_size"] == 32
    assert 0.0 <= parity["max_embedding_diff"] <= parity["tolerance"] == 1e-4
    assert report.path.is_file()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_inputs_are_one_line_errors(run: Path, data: Path, tiny: list[str], tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        predict(run, [tmp_path / "missing.png"])
    assert "missing.png not found" in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        evaluate(run, "train")
    assert "use val or test" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        build_index(run, add=tmp_path / "nothing")
    assert "folder not found" in _one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        predict(run, [tmp_path / "empty"])
    assert "holds no image" in _one_line(exc)
    bad = tmp_path / "bad" / "circle"
    bad.mkdir(parents=True)
    (bad / "broken-00_0.png").write_bytes(b"not a png")
    with pytest.raises(FabmlError) as exc:
        build_index(run, add=bad.parent)
    assert "broken-00_0.png" in _one_line(exc)
    untrained = tmp_path / "untrained"
    split(make_config(untrained, None, tiny, data=data), untrained)
    with pytest.raises(DataError) as exc:
        build_index(untrained)
    assert "fabml retrieval train" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        evaluate(untrained)
    assert "fabml retrieval index" in _one_line(exc)


@pytest.mark.timeout(300)
def test_train_under_torchrun_gives_each_rank_its_batches_and_one_writer(data: Path, tiny: list[str],
                                                                         tmp_path: Path) -> None:
    """Two gloo ranks: the split is written once, each rank builds its own P×K sampler (the trainer refuses one
    built for another world size), rank 0 alone writes model.pt and run.json."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = tmp_path / "run"
    script = Path(__file__).resolve().parent / "_ddp_train_script.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(script), str(data), str(run), *tiny]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert set(done) == {0, 1}
    assert all(rank["epochs"] == 2 and "× 2 processes" in rank["batch"] for rank in done.values())
    info = json.loads((run / "run.json").read_text())
    assert info["job"] == "retrieval" and info["world_size"] == 2
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    assert torch.load(run / "model.pt", weights_only=False)["classes"] == KNOWN


def test_the_package_exports_its_public_names() -> None:
    import fabml.retrieval

    for name in fabml.retrieval.__all__:
        assert not isinstance(getattr(fabml.retrieval, name), type(sys)), name
