"""The ablation runner: grid parsing, a 2x2 grid of draem_severity on tiny data through the CLI (reads the
table, CSV, JSON and figure it writes), and the held-out severity evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fabml.anomaly.ablation import config_key, defect_proxy, grid_configs, parse_grid, split_values
from fabml.anomaly.config import AnomalyConfig
from fabml.cli import app
from fabml.errors import ConfigError

TINY = ["--set", "model.base_width=4", "--set", "model.disc_base_width=4", "--set", "model.severity_width=4",
        "--set", "model.severity_hidden=8", "--set", "model.score_smoothing=3",
        "--set", "data.train_fraction=0.75", "--set", "data.val_fraction=0.25", "--set", "device=cpu",
        "--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "train.drop_last=true"]


def test_grid_keys_values_and_errors() -> None:
    assert split_values("a, [64, 64] ,{x: 1, y: 2}") == ["a", "[64, 64]", "{x: 1, y: 2}"]
    assert config_key("severity_input_mode") == "model.severity_input_mode"
    assert config_key("faults.probability") == "model.faults.probability"
    assert config_key("train.lr") == "train.lr" and config_key("data.image_size") == "data.image_size"
    axes = parse_grid(["faults.probability=0.3,0.5", "train.lr=0.0001,0.001", "data.image_size=[32, 32],[64, 64]"])
    assert axes == [("model.faults.probability", [0.3, 0.5]), ("train.lr", [1e-4, 1e-3]),
                    ("data.image_size", [[32, 32], [64, 64]])]
    combos = grid_configs(AnomalyConfig(model={"name": "draem_severity"}), axes[:2])
    assert len(combos) == 4
    assert [(s["model.faults.probability"], s["train.lr"]) for s, _ in combos] == [
        (0.3, 1e-4), (0.3, 1e-3), (0.5, 1e-4), (0.5, 1e-3)]  # the first axis varies slowest
    assert combos[3][1].model["faults"]["probability"] == 0.5 and combos[3][1].train["lr"] == 1e-3
    for bad, text in [("faults.probability", "must be KEY=V1,V2"), ("x=", "must be KEY=V1,V2"),
                      ("model.name=padim,stfpm", "runs one model")]:
        with pytest.raises(ConfigError, match=text):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["severity_weight=1", "model.severity_weight=2"])
    with pytest.raises(ConfigError, match="faults.probability"):  # invalid before anything trains
        grid_configs(AnomalyConfig(model={"name": "draem_severity"}), parse_grid(["faults.probability=0.5,1.5"]))
    with pytest.raises(ConfigError, match="unknown setting 'model.no_such'"):
        grid_configs(AnomalyConfig(model={"name": "draem_severity"}), parse_grid(["no_such=1,2"]))


def test_two_by_two_grid_writes_one_table_and_one_figure(inspection_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    result = CliRunner().invoke(app, [
        "anomaly", "ablation", "--model", "draem_severity", "--data", str(inspection_root), "--image-size", "32",
        "--grid", "severity_input_mode=discriminative_only,with_error_map", "--grid", "faults.probability=0.3,0.8",
        "--faults", "24", "--out", str(out), *TINY,
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = json.loads((out / "ablation.json").read_text())
    assert [(r["model.severity_input_mode"], r["model.faults.probability"]) for r in rows] == [
        ("discriminative_only", 0.3), ("discriminative_only", 0.8), ("with_error_map", 0.3), ("with_error_map", 0.8)]
    for row in rows:
        assert "error" not in row, row.get("traceback")
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= row[key] <= 1.0
        assert row["fit_seconds"] > 0 and row["severity_n"] == 24 and 0.0 <= row["severity_mae"] <= 10.0
        assert np.isnan(row["severity_spearman"]) or -1.0 <= row["severity_spearman"] <= 1.0
        assert row["val_severity_n"] == 24 and 0.0 <= row["val_severity_mae"] <= 10.0
        defects = pd.read_csv(out / row["run"] / "split.csv").query("part == 'test' and label == 1")
        assert row["real_severity_n"] == defects["mask_path"].notna().sum() > 0
        config = (out / row["run"] / "config.yaml").read_text()
        assert f"severity_input_mode: {row['model.severity_input_mode']}" in config
    splits = [pd.read_csv(out / r["run"] / "split.csv") for r in rows]
    assert all(s.equals(splits[0]) for s in splits)  # every combination on the same split
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.columns[:3]) == ["run", "severity_input_mode", "faults.probability"]
    assert {"image_auroc", "severity_mae", "severity_spearman", "fit_seconds"} <= set(table.columns)
    assert len(table) == 4
    lines = (out / "ablation.md").read_text().splitlines()
    assert len(lines) == 2 + 4 and "severity_spearman" in lines[0]
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "run_00" / "evaluation" / "roc.png").exists()  # per-run figures only with --figures


def test_defect_proxy_is_masked_area_times_contrast() -> None:
    image = torch.full((1, 4, 4), 0.2)
    image[0, :2, :1] = 0.8  # two defect pixels at 0.8 on a 0.2 background
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :1] = 1.0
    assert defect_proxy(image, mask) == pytest.approx(2 / 16 * 0.6)
    assert defect_proxy(image.expand(3, -1, -1), mask) == pytest.approx(2 / 16 * 0.6)  # channel mean
    assert np.isnan(defect_proxy(image, torch.zeros(1, 4, 4))) and np.isnan(defect_proxy(image, torch.ones(1, 4, 4)))
