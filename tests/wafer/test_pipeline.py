"""End to end through the CLI on generated maps: train, embed, cluster, search, assign, evaluate, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fabml.cli import app
from fabml.data.wafer_dataset import WaferTensorDataset
from fabml.data.wafer_io import load_wafer_maps
from fabml.wafer.embedder import query_embedder

TINY = ["data.size=32", "model.preset=tiny", "model.stem=imagenet", "train.epochs=1", "train.batch_size=32",
        "train.num_workers=0", "train.lr=1e-3", "cluster.min_cluster_size=8", "cluster.reduce_dim=4",
        "eval.d4_maps=20", "eval.val_limit=0"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("wafer") / "run"
    result = CliRunner().invoke(app, ["wafer", "train", "--data", "synthetic:160:0", "--val", "synthetic:60:3",
                                      "--out", str(run), *_sets(TINY)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:160:0"])
    assert result.exit_code == 0, result.output
    return run


def test_train_writes_config_checkpoints_and_metrics(run_dir: Path):
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.json").is_file()
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert len(metrics) == 1 and {"loss", "lr", "emb_std", "emb_cos", "val_knn_macro_acc"} <= set(metrics.columns)


def test_embed_writes_embeddings_meta_and_index(run_dir: Path):
    emb = np.load(run_dir / "embeddings" / "embeddings.npy")
    meta = pd.read_csv(run_dir / "embeddings" / "meta.csv")
    assert emb.shape == (160, 128) and len(meta) == 160
    assert {"id", "lot", "date", "label", "rows", "cols"} <= set(meta.columns)
    assert (run_dir / "embeddings" / "index.faiss").is_file()


def test_cluster_search_assign_evaluate_report(run_dir: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["wafer", "cluster", "--run", str(run_dir), "--set", "cluster.min_cluster_size=8"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(run_dir / "clusters" / "clusters.csv")
    assert len(table) == 160 and "cluster" in table
    assert (run_dir / "clusters" / "gallery.png").is_file() and (run_dir / "clusters" / "trend.png").is_file()

    query = str(table["id"].iloc[3])
    result = runner.invoke(app, ["wafer", "search", "--run", str(run_dir), "--query", query, "-k", "5"])
    assert result.exit_code == 0, result.output
    pngs = list((run_dir / "search").glob("*.png"))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in result.output.splitlines() if line.startswith("| ")]
    ids = [row[rows[0].index("id")] for row in rows[1:]]  # the printed markdown table, one row per neighbour
    assert pngs and len(ids) == 5 and query not in ids

    result = runner.invoke(app, ["wafer", "assign", "--run", str(run_dir), "--data", "synthetic:30:9"])
    assert result.exit_code == 0, result.output
    assigned = pd.read_csv(run_dir / "clusters" / "assigned.csv")
    assert len(assigned) == 30 and {"cluster", "novelty_score", "is_novel"} <= set(assigned.columns)

    result = runner.invoke(app, ["wafer", "evaluate", "--run", str(run_dir), "--reference", "synthetic:160:0",
                                 "--test", "synthetic:60:5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"byol", "baseline_pca", "baseline_raw", "baseline_wu2015"}
    assert metrics["baseline_wu2015"]["embedding_dim"] == 59 and metrics["baseline_raw"]["fit_seconds"] >= 0
    for name in metrics:
        assert 0.0 <= metrics[name]["knn_macro_acc"] <= 1.0
        assert 0.0 <= metrics[name]["defect_precision@5"] <= 1.0
        assert -1.0 <= metrics[name]["d4_mean_cosine"] <= 1.0

    result = runner.invoke(app, ["wafer", "report", "--run", str(run_dir), "--projection", "tsne"])
    assert result.exit_code == 0, result.output
    html = (run_dir / "report" / "index.html").read_text()
    assert "Pattern families" in html and "training_curves.png" in html


def test_evaluate_and_embed_take_settings_and_an_output_folder(run_dir: Path, tmp_path: Path):
    runner = CliRunner()
    config = tmp_path / "eval.yaml"
    config.write_text("eval: {knn_k: 3}\n")
    result = runner.invoke(app, ["wafer", "evaluate", "--run", str(run_dir), "--reference", "synthetic:160:0",
                                 "--test", "synthetic:40:5", "--config", str(config),
                                 "--set", "baseline.methods=[raw]", "--set", "baseline.raw_size=8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"byol", "baseline_raw"} and metrics["baseline_raw"]["embedding_dim"] == 64
    refused = runner.invoke(app, ["wafer", "evaluate", "--run", str(run_dir), "--test", "synthetic:10:5",
                                  "--set", "model.preset=small"])
    assert refused.exit_code != 0 and "model" in str(refused.exception) + refused.output

    before = np.load(run_dir / "embeddings" / "embeddings.npy")
    result = runner.invoke(app, ["wafer", "embed", "--run", str(run_dir), "--data", "synthetic:20:4",
                                 "--out", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (20, 128)
    np.testing.assert_array_equal(np.load(run_dir / "embeddings" / "embeddings.npy"), before)  # untouched
    clobber = runner.invoke(app, ["wafer", "embed", "--run", str(run_dir), "--data", "synthetic:20:4",
                                  "--method", "raw"])
    assert clobber.exit_code != 0 and "--out" in str(clobber.exception) + clobber.output


def test_the_monitor_warns_once_about_small_validation_classes(capsys):
    from fabml.config import load_config
    from fabml.wafer.config import WaferConfig
    from fabml.wafer.maps import load_dataset
    from fabml.wafer.pipeline import make_validator

    cfg = load_config(WaferConfig, None, TINY)
    make_validator(cfg, load_dataset("synthetic:60:3", cfg))
    err = capsys.readouterr().err
    assert err.count("fewer than 30 maps") == 1 and "eval.val_limit" in err
    cfg_ok = load_config(WaferConfig, None, TINY)
    val = load_dataset("synthetic:60:3", cfg_ok)
    for meta in val.meta:
        meta["label"] = "Center"  # one class of 60 maps: nothing to warn about
    make_validator(cfg_ok, val)
    assert "fewer than" not in capsys.readouterr().err


def test_search_with_a_map_file(run_dir: Path, tmp_path: Path):
    dies = np.ones((30, 30), dtype=np.uint8)
    dies[10:20, 10:20] = 2
    np.save(tmp_path / "q.npy", dies)
    result = CliRunner().invoke(app, ["wafer", "search", "--run", str(run_dir), "--query", str(tmp_path / "q.npy"),
                                      "-k", "3", "--figure", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file()


def test_fused_embeddings_join_the_encoder_and_the_baseline_and_search_embeds_queries_the_same_way(
        run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    runner = CliRunner()
    refused = runner.invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:160:0", "--method", "fused"])
    assert refused.exit_code != 0 and "baseline.wu_size=32" in str(refused.exception) + refused.output
    result = runner.invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:160:0", "--method", "fused",
                                 "--set", "baseline.wu_size=32", "--set", "baseline.fusion_weight=0.25"])
    assert result.exit_code == 0, result.output
    fused, learned = np.load(run / "embeddings" / "embeddings.npy"), np.load(run_dir / "embeddings" / "embeddings.npy")
    assert fused.shape[0] == 160 and fused.shape[1] > learned.shape[1]
    np.testing.assert_allclose(fused[:, :128] / np.sqrt(0.25), learned, atol=1e-5)  # the learned part, scaled
    info = json.loads((run / "embeddings" / "embedder.json").read_text())
    assert info["method"] == "fused" and info["settings"]["fusion_weight"] == 0.25
    assert (run / "embeddings" / "baseline.joblib").is_file()

    cfg, fn = query_embedder(run)
    maps = load_wafer_maps("synthetic:160:0")[:5]
    again = fn(WaferTensorDataset(maps, cfg.data.size).tensors.float()).numpy()
    np.testing.assert_allclose(again, fused[:5], atol=1e-5)  # a query is embedded exactly as the collection was

    result = runner.invoke(app, ["wafer", "evaluate", "--run", str(run), "--reference", "synthetic:160:0",
                                 "--test", "synthetic:40:5", "--set", "baseline.methods=[raw]",
                                 "--set", "baseline.wu_size=32"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"byol", "baseline_raw", "fused"} and metrics["fused"]["embedding_dim"] > 128


def test_whitened_embeddings_keep_their_whitening_for_queries_and_evaluate_reports_them(
        run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    runner = CliRunner()
    result = runner.invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:160:0",
                                 "--set", "eval.whiten_dim=16"])
    assert result.exit_code == 0, result.output
    emb = np.load(run / "embeddings" / "embeddings.npy")
    assert emb.shape == (160, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    info = json.loads((run / "embeddings" / "embedder.json").read_text())
    assert info["method"] == "learned" and info["whiten_dim"] == 16 and (run / "embeddings" / "whitening.joblib").is_file()

    cfg, fn = query_embedder(run)
    maps = load_wafer_maps("synthetic:160:0")[:5]
    again = fn(WaferTensorDataset(maps, cfg.data.size).tensors.float()).numpy()
    np.testing.assert_allclose(again, emb[:5], atol=1e-4)  # a query is whitened exactly as the collection was

    result = runner.invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:160:0"])
    assert result.exit_code == 0, result.output  # whitening off again: the stale whitening goes
    assert not (run / "embeddings" / "whitening.joblib").exists()
    assert np.load(run / "embeddings" / "embeddings.npy").shape == (160, 128)

    result = runner.invoke(app, ["wafer", "evaluate", "--run", str(run), "--reference", "synthetic:160:0",
                                 "--test", "synthetic:40:5", "--set", "baseline.methods=[raw]",
                                 "--set", "baseline.wu_size=32", "--set", "eval.whiten_dim=16"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"byol", "learned", "baseline_raw", "fused"}
    assert metrics["learned"]["embedding_dim"] == 16 and metrics["fused"]["embedding_dim"] == 16 + 59


def test_bad_inputs_give_one_line_errors(cli_error, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no wafer map files" in cli_error(["wafer", "train", "--data", str(empty), "--out", str(tmp_path / "r")])
    assert "nosuch" in cli_error(["wafer", "train", "--data", "synthetic:10", "--out", str(tmp_path / "r"),
                                  "--set", "train.nosuch=1"])
    assert "config.yaml" in cli_error(["wafer", "embed", "--run", str(tmp_path / "missing"), "--data", "synthetic:5"])


def test_existing_run_needs_resume_or_fresh(run_dir: Path, cli_error):
    err = cli_error(["wafer", "train", "--data", "synthetic:160:0", "--out", str(run_dir), *_sets(TINY)])
    assert "--resume" in err and "--fresh" in err


def test_evaluate_without_labels_uses_pseudo_ground_truth(run_dir: Path, tmp_path: Path):
    from fabml.data.synthetic_wafer import generate_wafer_maps

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for m in generate_wafer_maps(40, seed=7):
        np.save(folder / f"{m.meta['id']}.npy", m.dies)
    result = CliRunner().invoke(app, ["wafer", "evaluate", "--run", str(run_dir), "--test", str(folder), "--no-baseline"])
    assert result.exit_code == 0, result.output
    byol = json.loads((run_dir / "eval" / "metrics.json").read_text())["byol"]
    assert 0.0 <= byol["d4_orbit_precision@5"] <= 1.0 and 0.0 <= byol["iou_map"] <= 1.0
    assert "knn_macro_acc" not in byol


def test_ablation_runs_each_preset(tmp_path: Path):
    result = CliRunner().invoke(app, ["wafer", "ablation", "--data", "synthetic:64:0", "--reference", "synthetic:64:0",
                                      "--test", "synthetic:32:1", "--presets", "d4,d4_crop", "--out", str(tmp_path),
                                      *_sets(TINY), "--set", "eval.d4_maps=4"])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert set(table) == {"d4", "d4_crop"}
    config = (tmp_path / "d4" / "config.yaml").read_text()
    assert "crop: false" in config and "d4: true" in config


def test_ablation_grid_axes_cross_presets(tmp_path: Path):
    from fabml.wafer.ablation_runner import ablation_runs
    from fabml.wafer.config import WaferConfig

    runs = ablation_runs(WaferConfig(), ("d4", "full"), [("data.size", [32, 48])])
    assert [(folder, s) for folder, s, _ in runs] == [
        ("run_00", {"augment.preset": "d4", "data.size": 32}), ("run_01", {"augment.preset": "d4", "data.size": 48}),
        ("run_02", {"augment.preset": "full", "data.size": 32}), ("run_03", {"augment.preset": "full", "data.size": 48})]
    assert not runs[1][2].augment.crop and runs[1][2].data.size == 48 and runs[3][2].augment.crop
    assert [folder for folder, _, _ in ablation_runs(WaferConfig(), None, [])] == ["d4", "d4_crop", "d4_crop_noise", "full"]
    result = CliRunner().invoke(app, ["wafer", "ablation", "--data", "synthetic:64:0", "--reference", "synthetic:64:0",
                                      "--test", "synthetic:32:1", "--grid", "data.size=16,24", "--out", str(tmp_path),
                                      *_sets(TINY), "--set", "eval.d4_maps=4", "--set", "eval.tta_d4=true"])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert set(table) == {"data.size=16", "data.size=16 (D4-averaged)", "data.size=24", "data.size=24 (D4-averaged)"}
    assert table["data.size=24"]["run"] == "run_01" and table["data.size=24"]["data.size"] == 24
    assert "size: 24" in (tmp_path / "run_01" / "config.yaml").read_text()
    assert table["data.size=16 (D4-averaged)"]["d4_mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert table["data.size=16"]["epochs"] >= 1 and table["data.size=16"]["samples_per_second"] > 0
    assert "data.size=24 (D4-averaged)" in (tmp_path / "ablation.md").read_text()


def test_wafer_training_resumes_exactly(tmp_path: Path, monkeypatch):
    from fabml.config import load_config
    from fabml.wafer.config import WaferConfig
    from fabml.wafer.method import BYOLMethod
    from fabml.wafer.pipeline import train

    torch.set_num_threads(1)
    cfg = load_config(WaferConfig, None, TINY + ["train.epochs=2", "train.batch_size=16"])  # 3 steps per epoch
    train(cfg, "synthetic:48:0", tmp_path / "straight")

    real_step, calls = BYOLMethod.training_step, []

    def killed_in_epoch_2(self, batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run is killed in the first step of epoch 2
        return real_step(self, batch)

    monkeypatch.setattr(BYOLMethod, "training_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, "synthetic:48:0", tmp_path / "killed")
    monkeypatch.setattr(BYOLMethod, "training_step", real_step)
    train(cfg, "synthetic:48:0", tmp_path / "killed", resume=True)

    straight = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)["method"]
    resumed = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)["method"]
    assert straight.keys() == resumed.keys()
    for key in straight:  # online and EMA target networks alike
        assert torch.equal(straight[key], resumed[key]), key


def test_train_auto_resume_continues_unchanged_settings_and_refuses_changed_ones(tmp_path: Path):
    """`--set train.auto_resume=true`: the same command twice continues the run; a changed lr is named."""
    run = tmp_path / "run"
    args = ["wafer", "train", "--data", "synthetic:64:0", "--out", str(run),
            *_sets(TINY + ["train.auto_resume=true", "eval.d4_maps=0"])]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(json.loads((run / "run.json").read_text()).get("resumes", [])) == 1
    changed = CliRunner().invoke(app, args + ["--set", "train.lr=0.5"])
    assert changed.exit_code != 0 and "train.lr" in str(changed.exception) + changed.output


def test_train_with_the_wu2015_auxiliary_target_logs_both_losses_and_embeds(tmp_path: Path):
    """byol.aux_features=wu2015: the run trains on BYOL plus the read-out of the maps' Wu 2015 features, logs both
    parts, and its model.pt loads and embeds like any run (the targets are not saved)."""
    torch.set_num_threads(1)
    run = tmp_path / "aux"
    sets = _sets([*TINY, "byol.aux_features=wu2015", "byol.aux_weight=0.5", "baseline.wu_size=32"])
    result = CliRunner().invoke(app, ["wafer", "train", "--data", "synthetic:96:0", "--out", str(run), *sets])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"loss", "byol_loss", "aux_loss"} <= set(metrics.columns)
    row = metrics.iloc[-1]
    assert row["loss"] == pytest.approx(row["byol_loss"] + 0.5 * row["aux_loss"], rel=1e-4)
    result = CliRunner().invoke(app, ["wafer", "embed", "--run", str(run), "--data", "synthetic:40:1"])
    assert result.exit_code == 0, result.output
    assert np.load(run / "embeddings" / "embeddings.npy").shape[0] == 40
