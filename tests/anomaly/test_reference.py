"""Reference (golden-template) mode end to end: each image compared with its own template, on generated
board layouts that differ per image (fit -> evaluate -> predict -> export, and the errors a user meets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fabml.anomaly.calibration import _SyntheticBatches
from fabml.anomaly.config import AnomalyConfig, CalibrationConfig
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.models.reference import nearest_differences, shifted_min_distance
from fabml.anomaly.inputs import ReferenceSource
from fabml.anomaly.pipeline import evaluate, export, fit, predict
from fabml.anomaly.runs import load_fitted
from fabml.config import from_dict
from fabml.data.anomaly_data import read_split
from fabml.data.template_pairs import make_template_pairs
from fabml.errors import ConfigError, DataError

SIZE = 64


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_pairs(tmp_path_factory.mktemp("pairs"), n_layouts=8, n_good=4, n_defect=2, size=SIZE,
                               seed=5)


def _cfg(root: Path, model: str = "reference", **data) -> AnomalyConfig:
    return from_dict(AnomalyConfig, {
        "model": {"name": model},
        "data": {"root": str(root), "image_size": [SIZE, SIZE], "pairs_csv": "pairs.csv", "train_fraction": 0.6,
                 "val_fraction": 0.3, **data},
        "batch_size": 8, "device": "cpu",
    })


@pytest.fixture(scope="module")
def reference_run(pairs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("reference_run")
    fit(_cfg(pairs_root), run)
    return run


def test_fit_learns_the_whitening_and_keeps_each_reference_in_the_split(reference_run: Path, pairs_root: Path) -> None:
    info = json.loads((reference_run / "fit.json").read_text())
    assert info["train_stats"]["n_pairs"] >= 10 and info["train_stats"]["feature_dim"] == 64  # 24 + 40 channels
    model = load_fitted(reference_run).model
    assert model.fitted and not torch.allclose(model.whiten, torch.eye(64))
    split = read_split(reference_run / "split.csv")
    listed = pd.read_csv(pairs_root / "pairs.csv")
    truth = {str((pairs_root / i).resolve()): str((pairs_root / r).resolve())
             for i, r in zip(listed["image"], listed["reference"])}
    for record in split.train + split.val + split.test:
        assert record.reference == truth[record.path]
    assert all(r.label == 0 for r in split.train + split.val)


def test_evaluate_finds_the_defects_where_layouts_differ(reference_run: Path) -> None:
    report = evaluate(reference_run, figures=False)
    metrics = json.loads((report.out_dir / "metrics.json").read_text())["metrics"]
    assert metrics["image_auroc"] >= 0.9
    assert metrics["box_hit_rate"] >= 0.75
    table = pd.read_csv(report.out_dir / "predictions.csv")
    assert {"reference", "align_dx", "align_dy", "align_angle_deg", "residual_px"} <= set(table.columns)
    assert table["residual_px"].max() < 0.5  # aligned to a fraction of a pixel


def test_alignment_reported_in_the_pairs_file_convention(reference_run: Path, pairs_root: Path) -> None:
    report = evaluate(reference_run, figures=False)
    table = pd.read_csv(report.out_dir / "predictions.csv")
    truth = pd.read_csv(pairs_root / "pairs.csv")
    truth["path"] = [str((pairs_root / p).resolve()) for p in truth["image"]]
    merged = table.merge(truth, on="path")
    assert len(merged) == len(table)
    assert np.abs(merged["align_dx"] - merged["dx"]).max() < 0.3
    assert np.abs(merged["align_dy"] - merged["dy"]).max() < 0.3
    assert np.abs(merged["align_angle_deg"] - merged["angle_deg"]).max() < 0.3


def test_predict_pairs_by_pattern_by_csv_and_by_one_golden(reference_run: Path, pairs_root: Path,
                                                           tmp_path: Path) -> None:
    by_pattern = predict(reference_run, [str(pairs_root / "test")], tmp_path / "a", overlays=False,
                         references=ReferenceSource(pattern=r"(.+)_\d+", reference_dir=str(pairs_root / "golden")))
    by_csv = predict(reference_run, [], tmp_path / "b", overlays=False,
                     references=ReferenceSource(pairs_csv=str(pairs_root / "pairs.csv")))
    a = pd.read_csv(tmp_path / "a" / "predictions.csv").set_index("path")
    b = pd.read_csv(tmp_path / "b" / "predictions.csv").set_index("path")
    assert len(a) == len(b) == 48
    np.testing.assert_allclose(a.loc[b.index, "raw_score"], b["raw_score"], rtol=1e-5)
    golden = pairs_root / "golden" / "layout_000.png"
    one = predict(reference_run, [str(pairs_root / "test" / "layout_000_00.png")], tmp_path / "c", overlays=False,
                  references=ReferenceSource(reference=str(golden)))
    assert one.table["reference"].tolist() == [str(golden.resolve())]
    # a layout compared with another layout's golden image is far from normal
    wrong = predict(reference_run, [str(pairs_root / "test" / "layout_000_00.png")], tmp_path / "d", overlays=False,
                    references=ReferenceSource(reference=str(pairs_root / "golden" / "layout_001.png")))
    assert wrong.table["score"].iloc[0] > one.table["score"].iloc[0] and bool(wrong.table["anomalous"].iloc[0])


def test_export_takes_the_stacked_pair_and_matches_torch(reference_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    report = export(reference_run, tmp_path / "reference.onnx")
    parity = json.loads(report.parity.read_text())
    assert parity["max_score_diff"] <= 1e-4 and parity["max_map_diff"] <= 1e-4


def test_reference_settings_and_models_must_agree(pairs_root: Path, reference_run: Path, tmp_path: Path,
                                                  inspection_root: Path) -> None:
    with pytest.raises(ConfigError, match="does not use them"):
        fit(_cfg(pairs_root, "padim"), tmp_path / "r1")
    with pytest.raises(ConfigError, match="no image has one"):
        fit(from_dict(AnomalyConfig, {"model": {"name": "reference"}, "data": {"root": str(inspection_root),
                                      "image_size": [SIZE, SIZE]}, "device": "cpu"}), tmp_path / "r2")
    with pytest.raises(ConfigError, match="--pairs CSV"):
        predict(reference_run, [str(pairs_root / "test")], tmp_path / "p", overlays=False)
    model = load_fitted(reference_run).model
    with pytest.raises(DataError, match="without its reference"):
        model(torch.rand(1, 1, SIZE, SIZE))


def test_a_pairs_file_without_labels_is_refused(tmp_path: Path) -> None:
    root = make_template_pairs(tmp_path / "p", n_layouts=1, n_good=2, n_defect=1, size=SIZE, seed=0)
    lines = (root / "pairs.csv").read_text().splitlines()
    (root / "nolabel.csv").write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    with pytest.raises(DataError, match="has no label"):
        fit(_cfg(root, pairs_csv="nolabel.csv"), tmp_path / "run")


def test_identical_pairs_score_zero_and_a_changed_patch_scores_there() -> None:
    model = create_anomaly_model("reference", image_size=(SIZE, SIZE), in_chans=1, pretrained=False,
                                 blur_sigma=0.0).eval()
    model.n_fit.fill_(1)  # identity whitening
    torch.manual_seed(0)
    image = torch.rand(2, 1, SIZE, SIZE)
    same = model(torch.cat([image, image], dim=1))
    assert same.anomaly_map.shape == (2, 1, SIZE, SIZE) and same.pred_score.shape == (2,)
    assert float(same.anomaly_map.abs().max()) < 1e-3
    changed = image.clone()
    changed[:, :, 40:48, 8:16] = 1.0
    out = model(torch.cat([changed, image], dim=1)).anomaly_map[:, 0]
    peak = np.unravel_index(int(out[0].argmax()), out[0].shape)
    assert 32 <= peak[0] < 56 and 0 <= peak[1] < 24  # the peak is at the changed patch (within a feature cell)


def test_neighbourhood_search_absorbs_a_one_cell_shift() -> None:
    torch.manual_seed(0)
    a = torch.randn(1, 4, 6, 6)
    shifted = torch.roll(a, shifts=1, dims=3)
    inner = (slice(None), slice(None), slice(1, 5), slice(2, 5))
    assert float(shifted_min_distance(shifted, a, 1)[inner].max()) < 1e-10
    assert float(shifted_min_distance(shifted, a, 0)[inner].min()) > 0
    diffs = nearest_differences(shifted, a, 1).reshape(1, 6, 6, 4)
    assert float(diffs[0, 1:5, 2:5].abs().max()) < 1e-6


def test_synthetic_calibration_defects_go_into_the_test_image_only(reference_run: Path) -> None:
    pairs = torch.rand(4, 2, SIZE, SIZE)
    loader = [{"image": pairs, "mask": torch.zeros(4, 1, SIZE, SIZE), "label": torch.zeros(4, dtype=torch.long),
               "index": torch.arange(4)}]
    batch = next(iter(_SyntheticBatches(loader, CalibrationConfig(), test_channels=1)))
    assert torch.equal(batch["image"][:, 1:], pairs[:, 1:])
    assert not torch.equal(batch["image"][:, :1], pairs[:, :1]) and batch["label"].sum() > 0


def test_cli_fits_and_predicts_pairs(pairs_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fabml.cli import app

    run, out = tmp_path / "run", tmp_path / "pred"
    fitted = CliRunner().invoke(app, ["anomaly", "fit", "--model", "reference", "--data", str(pairs_root),
                                      "--image-size", str(SIZE), "--out", str(run), "--set", "data.pairs_csv=pairs.csv",
                                      "--set", "device=cpu"])
    assert fitted.exit_code == 0, fitted.output
    predicted = CliRunner().invoke(app, ["anomaly", "predict", "--run", str(run), "--pairs",
                                         str(pairs_root / "pairs.csv"), "--out", str(out), "--no-overlays"])
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(out / "predictions.csv")
    truth = pd.read_csv(pairs_root / "pairs.csv")
    assert len(table) == len(truth) and table["reference"].notna().all()
    refused = CliRunner().invoke(app, ["anomaly", "predict", "--run", str(run), str(pairs_root / "test"),
                                       "--pairs", str(pairs_root / "pairs.csv"), "--out", str(out)])
    assert refused.exit_code != 0
