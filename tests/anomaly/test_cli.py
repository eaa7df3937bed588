"""``fabml anomaly fit | evaluate | predict | export | compare`` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fabml.cli import app

TINY_PADIM = ["--set", "model.backbone=resnet18", "--set", "model.layers=[1,2]", "--set", "model.pretrained=false",
              "--set", "model.n_features=16", "--set", "data.train_fraction=0.75", "--set", "data.val_fraction=0.25",
              "--set", "device=cpu"]




def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_fit_evaluate_predict_export(inspection_root: Path, tmp_path: Path) -> None:
    """Each command's result is read from the files it writes (never from console text, which a narrow
    terminal or a path with brackets used to mangle)."""
    import pandas as pd

    from fabml.anomaly.runs import load_fitted

    run = tmp_path / "run"
    _invoke(["anomaly", "fit", "--model", "padim", "--data", str(inspection_root), "--out", str(run),
             "--image-size", "32", *TINY_PADIM])
    fitted = load_fitted(run)
    assert fitted.name == "padim" and fitted.image_size == (32, 32)
    assert fitted.normalizer.image_min <= fitted.normalizer.image_threshold <= fitted.normalizer.image_max

    _invoke(["anomaly", "evaluate", "--run", str(run), "--no-figures", "--save-maps"])
    written = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= written["metrics"]["image_auroc"] <= 1.0 and 0.0 <= written["metrics"]["aupro"] <= 1.0
    share = written["metrics"]["anomalous_share"]
    assert written["metrics"]["f1_all_anomalous"] == pytest.approx(2 * share / (1 + share))
    assert 0.0 <= written["metrics"]["box_hit_rate"] <= 1.0
    maps = np.load(run / "evaluation" / "maps.npz")
    assert maps["maps"].shape == (written["metrics"]["n_images"], 32, 32)
    assert written["per_type"]["Spot"]["count"] > 0
    assert "| image_auroc " in (run / "evaluation" / "metrics.md").read_text()

    _invoke(["anomaly", "predict", "--run", str(run), str(inspection_root / "Spot"), "--no-overlays"])
    table = pd.read_csv(run / "predictions" / "predictions.csv")
    assert len(table) == len(list((inspection_root / "Spot").glob("*.png"))) == 6
    assert table["score"].between(0.0, 1.0).all() and table["grade"].between(0, 4).all()

    pytest.importorskip("onnxruntime")
    _invoke(["anomaly", "export", "--run", str(run), "--samples", "2"])
    parity = json.loads((run / "model.parity.json").read_text())
    assert (run / "model.onnx").is_file() and parity["onnx"] == str(run / "model.onnx") and parity["n_images"] == 2
    assert max(parity["max_score_diff"], parity["max_map_diff"]) <= parity["tolerance"] == 1e-4


@pytest.mark.timeout(900)  # two child processes, each importing torch: ~25 s on 2 idle cores, far more on busy ones
def test_compare_puts_models_in_one_table(inspection_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "compare.yaml"
    config.write_text(
        "data: {image_size: [32, 32], train_fraction: 0.75, val_fraction: 0.25}\n"
        "device: cpu\n"
        "per_model:\n"
        "  padim: {model: {backbone: resnet18, layers: [1, 2], pretrained: false, n_features: 16}}\n"
        "  autoencoder: {model: {channels: [8, 16]}, train: {epochs: 1, batch_size: 4}}\n"
    )
    _invoke(["anomaly", "compare", "--models", "padim,autoencoder", "--data", str(inspection_root),
             "--config", str(config), "--out", str(tmp_path / "cmp")])
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["model"] for r in rows] == ["padim", "autoencoder"]
    for row in rows:
        assert "error" not in row, row.get("traceback")
        assert 0.0 <= row["image_auroc"] <= 1.0 and row["peak_rss_mb"] > 0 and row["fit_seconds"] > 0
    table = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["padim", "autoencoder"]  # one row per model
    assert [c.strip() for c in table[0].split("|")[2:-1]][0] == "image_auroc"


def test_bad_inputs_exit_2_with_one_line(cli_error, tmp_path: Path, inspection_root: Path) -> None:
    (tmp_path / "data" / "Good").mkdir(parents=True)
    cli_error(["anomaly", "fit", "--model", "padim", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
               *TINY_PADIM])
    assert "no fitted model" in cli_error(["anomaly", "evaluate", "--run", str(tmp_path / "none")])
    err = cli_error(["anomaly", "fit", "--model", "patchcore", "--data", str(inspection_root), "--out",
                     str(tmp_path / "r2"), "--set", "model.weights=/no/such.pth"])
    assert "/no/such.pth" in err and "model.weights" in err
