"""End to end: fit -> evaluate -> predict -> export on a tiny generated set, resume, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.pipeline import evaluate, export, fit, predict
from fabml.anomaly.runs import load_fitted
from fabml.config import from_dict
from fabml.errors import ConfigError, DataError



PADIM = {"name": "padim", "backbone": "resnet18", "layers": [1, 2], "pretrained": False, "n_features": 32}


def _cfg(root: Path, model: dict, **train) -> AnomalyConfig:
    return from_dict(AnomalyConfig, {
        "model": model,
        "data": {"root": str(root), "image_size": [32, 32], "train_fraction": 0.75, "val_fraction": 0.25},
        "train": {"epochs": 2, "batch_size": 4, **train},
        "batch_size": 8,
        "device": "cpu",
    })


@pytest.fixture(scope="module")
def padim_run(inspection_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("padim_run")
    fit(_cfg(inspection_root, PADIM), run)
    return run


def test_fit_writes_a_calibrated_run(padim_run: Path) -> None:
    fitted = load_fitted(padim_run)
    assert fitted.channels == 1 and fitted.image_size == (32, 32)
    info = json.loads((padim_run / "fit.json").read_text())
    assert info["messages"] and "threshold" in info["messages"][0]
    split = pd.read_csv(padim_run / "split.csv")  # item, part, group, stratum, label, defect_type, mask_path
    train, val, test = (set(split.loc[split["part"] == part, "item"]) for part in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert split.loc[split["part"] == "val", "label"].eq(0).all(), "validation comes from held-out normal training images"


def test_evaluate_reports_bounded_metrics_and_figures(padim_run: Path) -> None:
    report = evaluate(padim_run)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= report.metrics[key] <= 1.0
    assert report.metrics["image_auroc"] > 0.8  # bright square defects on a striped texture
    assert "Spot" in report.per_type
    for name in ("metrics.json", "metrics.md", "predictions.csv", "overlays.png", "roc.png", "score_histogram.png"):
        assert (report.out_dir / name).stat().st_size > 0
    table = pd.read_csv(report.out_dir / "predictions.csv")
    assert table["score"].between(0, 1).all() and table["grade"].between(0, 4).all()
    assert ((table["score"] >= 0.5) == table["anomalous"]).all()


def test_evaluate_states_the_f1_floor_localisation_and_keeps_maps(padim_run: Path, tmp_path: Path) -> None:
    from fabml.metrics.anomaly import box_hit_rate, region_recall

    report = evaluate(padim_run, tmp_path, figures=False, save_maps=True)
    written = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    p = written["n_anomalous"] / written["n_images"]
    assert written["anomalous_share"] == pytest.approx(p)
    assert written["f1_all_anomalous"] == pytest.approx(2 * p / (1 + p))
    for key in ("box_hit_rate", "region_recall"):  # the generated set has masks
        assert 0.0 <= written[key] <= 1.0
    per_type = json.loads((tmp_path / "metrics.json").read_text())["per_type"]
    assert 0.0 <= per_type["Spot"]["box_hit_rate"] <= 1.0
    markdown = (tmp_path / "metrics.md").read_text()
    assert "| f1_all_anomalous " in markdown and "| anomalous_share " in markdown and "| box_hit_rate " in markdown
    # maps.npz: the normalised maps evaluate computed, in predictions.csv's row order, below 1
    saved = np.load(tmp_path / "maps.npz")
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert saved["maps"].dtype == np.float16 and saved["maps"].shape == (len(table), 32, 32)
    assert list(saved["paths"]) == list(table["path"]) and saved["maps"].max() < 1.0
    assert np.allclose(saved["maps"], report.predictions.maps, atol=1e-3)
    # the localisation figures read the same from the normalised maps at 0.5 as from the raw ones
    masks = report.predictions.scored.masks
    assert region_recall(masks, report.predictions.maps, 0.5) == written["region_recall"]
    assert box_hit_rate(masks, report.predictions.maps) == pytest.approx(written["box_hit_rate"], abs=1e-6)


def test_predict_folder(padim_run: Path, inspection_root: Path, tmp_path: Path) -> None:
    result = predict(padim_run, [str(inspection_root / "Spot")], tmp_path, save_maps=True)
    assert len(result.table) == 6
    assert (tmp_path / "predictions.csv").is_file() and (tmp_path / "maps.npz").is_file()
    assert result.table["anomalous"].mean() > 0.5


def test_export_matches_torch(padim_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    report = export(padim_run, tmp_path / "padim.onnx")
    assert report.path.is_file() and report.max_score_diff <= 1e-4 and report.max_map_diff <= 1e-4


def test_gradient_model_resume_is_exact(inspection_root: Path, tmp_path: Path, monkeypatch) -> None:
    from fabml.anomaly.methods.autoencoder import AutoencoderMethod

    cfg = _cfg(inspection_root, {"name": "autoencoder", "channels": [8, 16]}, epochs=2)  # 4 steps per epoch
    fit(cfg, tmp_path / "straight")
    real_step, calls = AutoencoderMethod.training_step, []

    def killed_in_epoch_2(self, batch):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # killed in the middle of epoch 2
        return real_step(self, batch)

    monkeypatch.setattr(AutoencoderMethod, "training_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "killed")
    monkeypatch.setattr(AutoencoderMethod, "training_step", real_step)
    fit(cfg, tmp_path / "killed", resume=True)
    a = load_fitted(tmp_path / "straight").model.state_dict()
    b = load_fitted(tmp_path / "killed").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_user_errors_are_one_line(inspection_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "Good").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        fit(_cfg(empty, PADIM), tmp_path / "r1")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.name"):
        fit(_cfg(inspection_root, {"name": ""}), tmp_path / "r2")
    with pytest.raises(ConfigError, match="unknown anomaly model"):
        fit(_cfg(inspection_root, {"name": "nope"}), tmp_path / "r3")
    with pytest.raises(ConfigError, match="image_size"):
        fit(_cfg(inspection_root, {**PADIM, "image_size": [8, 8]}), tmp_path / "r4")
    with pytest.raises(ConfigError, match="no fitted model"):
        evaluate(tmp_path / "missing")


def test_wrong_input_shape_is_a_clear_error(padim_run: Path) -> None:
    model = load_fitted(padim_run).model
    with pytest.raises(DataError, match=r"expects images \[B, 1, 32, 32\]"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(DataError, match="resize"):
        model(torch.rand(1, 1, 48, 48))
    assert np.isfinite(model(torch.rand(2, 1, 32, 32)).pred_score.numpy()).all()


def test_image_records_skip_masks_beside_images(tmp_path: Path) -> None:
    from PIL import Image

    from fabml.anomaly.inputs import image_records

    for name in ("a.jpg", "a.png", "b.png", "c_mask.png"):
        Image.new("L", (8, 8)).save(tmp_path / name)
    (tmp_path / "masks").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "b.png")
    found = sorted(Path(r.path).name for r in image_records([str(tmp_path)], ["png", "jpg"]))
    assert found == ["a.jpg", "b.png"]
    with pytest.raises(DataError, match="not found"):
        image_records([str(tmp_path / "nope")], ["png"])


def test_real_defect_folder_sets_the_image_threshold(inspection_root: Path, tmp_path: Path) -> None:
    """calibration.defect_dir: real defective images (kept out of the test set) give an F1-max threshold."""
    import shutil

    defects = tmp_path / "calibration_defects"
    defects.mkdir()
    for image in sorted((inspection_root / "Spot").glob("*.png"))[:3]:
        shutil.copy(image, defects / image.name)
    cfg = _cfg(inspection_root, PADIM)
    cfg.calibration.defect_dir = str(defects)
    report = fit(cfg, tmp_path / "run")
    assert "3 defective" in report.messages[0] and "F1-max" in report.messages[0]
    assert load_fitted(tmp_path / "run").calibration["n_defective"] == 3


def test_a_refused_refit_leaves_the_run_untouched(inspection_root: Path, tmp_path: Path) -> None:
    """A gradient run refit without --resume/--fresh is refused before its config.yaml is overwritten."""
    model = {"name": "autoencoder", "channels": [8, 16]}
    fit(_cfg(inspection_root, model, epochs=1), tmp_path)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="already has a checkpoint"):
        fit(_cfg(inspection_root, model, epochs=3), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == before
    assert json.loads((tmp_path / "run.json").read_text())["job"] == "anomaly"


def test_auto_resume_continues_an_unchanged_run_and_names_a_changed_setting(inspection_root: Path,
                                                                            tmp_path: Path) -> None:
    """train.auto_resume: rerunning the same fit continues the run; other settings are refused by name."""
    model = {"name": "autoencoder", "channels": [8, 16]}
    fit(_cfg(inspection_root, model, epochs=1, auto_resume=True), tmp_path)
    fit(_cfg(inspection_root, model, epochs=1, auto_resume=True), tmp_path)  # same settings: resumes, no error
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["job"] == "anomaly" and len(info.get("resumes", [])) == 1
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"auto_resume.*lr"):
        fit(_cfg(inspection_root, model, epochs=1, auto_resume=True, lr=0.5), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == before
