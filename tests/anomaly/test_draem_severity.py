"""draem_severity: every input mode trains and predicts on generated 1-channel data, loss terms and weights,
config errors, predictions with a severity column, ONNX parity with the severity output, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fabml.anomaly.methods.draem_severity as severity_method
from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.methods.draem import focal_loss, reconstruction_loss
from fabml.anomaly.methods.draem_severity import DraemSeverityMethod, severity_loss
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.models.base import SeverityOutput
from fabml.anomaly.models.draem_severity import INPUT_MODES, DraemSeverityModel, severity_input_channels
from fabml.anomaly.pipeline import evaluate, export, fit, predict
from fabml.anomaly.runs import load_fitted
from fabml.config import from_dict
from fabml.data.synthetic_inspection import panel_texture
from fabml.errors import ConfigError

SIZE = 32
TINY = {"base_width": 4, "disc_base_width": 4, "severity_width": 4, "severity_hidden": 8, "score_smoothing": 3}


def tiny(mode: str = "discriminative_only", **kw) -> DraemSeverityModel:
    torch.manual_seed(0)
    return create_anomaly_model("draem_severity", image_size=(SIZE, SIZE), in_chans=1,
                                severity_input_mode=mode, **{**TINY, **kw})


def panels(n: int, seed: int = 0) -> torch.Tensor:
    """``[n, 1, SIZE, SIZE]`` generated inspection panels (the test data generator's texture) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([panel_texture(rng, SIZE) for _ in range(n)])[:, None].astype(np.float32) / 255.0)


@pytest.mark.parametrize("mode", list(INPUT_MODES))
def test_every_input_mode_builds_trains_and_predicts(mode: str) -> None:
    model = tiny(mode, faults={"probability": 1.0})
    expected = {"discriminative_only": 2, "with_original": 3, "with_reconstruction": 3, "with_error_map": 3,
                "multi_modal": 5}[mode]
    assert severity_input_channels(mode, 1) == expected
    assert model.severity.features[0].in_channels == expected
    method = DraemSeverityMethod(model).train()
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    batch = {"image": panels(4)}
    before = [p.detach().clone() for p in model.severity.parameters()]
    for _ in range(2):
        out = method.training_step(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        assert all(torch.isfinite(out[k]) for k in ("loss", "loss_l2_ssim", "loss_focal", "loss_severity"))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.severity.parameters()))  # the head learns
    model.eval()
    with torch.no_grad():
        result = model(panels(3, seed=1))
    assert isinstance(result, SeverityOutput)
    assert result.pred_score.shape == (3,) and result.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert result.pred_severity.shape == (3,)
    assert bool(((result.pred_severity >= 0) & (result.pred_severity <= 10.0)).all())


def test_avg_max_pooling_feeds_the_mlp_the_mean_and_the_peak_of_each_feature() -> None:
    from fabml.anomaly.models.draem_severity import SeverityNetwork

    head = SeverityNetwork(2, width=1, hidden=4, dropout=0.0, severity_max=10.0, pooling="avg_max").eval()
    assert head.mlp[0].in_features == 2 * 4  # 4w averages + 4w maxima
    seen: list[torch.Tensor] = []
    head.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.zeros(1, 2, 32, 32)
    x[:, 1, 14:18, :] = 4.0  # a narrow band: its mean is an eighth of its peak
    with torch.no_grad():
        head(x)
        feats = head.features(x)
    torch.testing.assert_close(seen[0], torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1))
    assert tiny().severity.mlp[0].in_features == 4 * TINY["severity_width"]  # the seed's average pooling


def test_severity_range_follows_faults_severity_max() -> None:
    model = tiny(faults={"severity_max": 2.5}).eval()
    with torch.no_grad():
        model.severity.mlp[-1].bias.fill_(50.0)  # sigmoid saturates: the top of the range
        out = model(panels(2))
    torch.testing.assert_close(out.pred_severity, torch.full((2,), 2.5))


def test_loss_is_the_weighted_sum_of_its_logged_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("with_error_map", faults={"probability": 1.0}, severity_dropout=0.0, reconstruction_weight=0.3,
                 segmentation_weight=2.0, severity_weight=0.7)
    method = DraemSeverityMethod(model).train()
    seen: dict[str, torch.Tensor] = {}
    real = severity_method.severity_loss

    def spy(pred, target, kind):
        seen["pred"], seen["target"], seen["kind"] = pred, target, kind
        return real(pred, target, kind)

    monkeypatch.setattr(severity_method, "severity_loss", spy)
    batch = panels(4)
    out = method.training_step({"image": batch})
    expected = 0.3 * out["loss_l2_ssim"] + 2.0 * out["loss_focal"] + 0.7 * out["loss_severity"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    # the terms are DRAEM's losses on this step's faults, and the severity target is the faults' label
    method.rng.step.zero_()
    fault = method.synthesize(batch)
    assert torch.equal(seen["target"], fault.severity) and bool((fault.severity > 0).all())
    assert seen["kind"] == "mse"
    method.rng.step.zero_()
    model.train()
    torch.manual_seed(0)
    reconstruction, logits, severity = model(fault.images)
    torch.testing.assert_close(out["loss_l2_ssim"], reconstruction_loss(reconstruction, batch, 11).detach())
    torch.testing.assert_close(out["loss_focal"], focal_loss(logits, (fault.masks[:, 0] > 0.5).long()).detach())
    torch.testing.assert_close(out["loss_severity"], ((severity - fault.severity) ** 2).mean().detach())


def test_severity_losses_hand_computed() -> None:
    pred, target = torch.tensor([1.0, 4.0]), torch.tensor([1.5, 1.0])
    assert float(severity_loss(pred, target, "mse")) == pytest.approx((0.25 + 9.0) / 2)
    # Huber, beta 1: 0.5 * 0.5^2 for |d| = 0.5; |d| - 0.5 for |d| = 3
    assert float(severity_loss(pred, target, "smooth_l1")) == pytest.approx((0.125 + 2.5) / 2)


def test_severity_weight_zero_leaves_the_head_without_gradient() -> None:
    model = tiny(faults={"probability": 1.0}, severity_weight=0.0)
    method = DraemSeverityMethod(model).train()
    method.training_step({"image": panels(2)})["loss"].backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.severity.parameters())
    detached = tiny(faults={"probability": 1.0}, severity_detach=True, reconstruction_weight=0.0,
                    segmentation_weight=0.0)
    DraemSeverityMethod(detached).train().training_step({"image": panels(2)})["loss"].backward()
    # the head's loss stops at its inputs: the DRAEM networks get zero gradient, the head does not
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in detached.discriminative.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0.0 for p in detached.severity.parameters())


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"severity_input_mode": "everything"}, "severity_input_mode='everything' is unknown"),
        ({"severity_loss": "l1"}, "severity_loss='l1' is unknown"),
        ({"severity_pooling": "median"}, "severity_pooling='median' is unknown"),
        ({"severity_dropout": 1.0}, "severity_dropout"),
        ({"severity_weight": -1.0}, "severity_weight"),
        ({"faults": {"probability": 2.0}}, "faults.probability"),
        ({"image_size": (48, 48)}, "multiples of 32"),
    ],
)
def test_config_errors_are_one_line(settings: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        create_anomaly_model("draem_severity", **{"image_size": (SIZE, SIZE), **TINY, **settings})
    assert "\n" not in str(info.value)


def _cfg(root: Path, epochs: int = 1) -> AnomalyConfig:
    return from_dict(AnomalyConfig, {
        "model": {"name": "draem_severity", **TINY},
        "data": {"root": str(root), "image_size": [SIZE, SIZE], "train_fraction": 0.75, "val_fraction": 0.25},
        "train": {"epochs": epochs, "batch_size": 4, "drop_last": True},
        "batch_size": 8,
        "device": "cpu",
    })


@pytest.fixture(scope="module")
def severity_run(inspection_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("severity_run")
    fit(_cfg(inspection_root), run)
    return run


def test_fit_logs_each_loss_term_and_predict_writes_severity(severity_run: Path, inspection_root: Path,
                                                             tmp_path: Path) -> None:
    metrics = pd.read_csv(severity_run / "metrics.csv")
    for key in ("loss", "loss_l2_ssim", "loss_focal", "loss_severity"):
        assert key in metrics.columns and metrics[key].notna().any()
    predict(severity_run, [str(inspection_root / "Spot")], tmp_path, overlays=False)
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert {"score", "anomalous", "grade", "severity"} <= set(table.columns) and len(table) == 6
    assert table["severity"].between(0.0, 10.0).all()
    fitted = load_fitted(severity_run)
    with torch.no_grad():
        direct = fitted.model(panels(1)).pred_severity
    assert direct.shape == (1,)


def test_models_without_a_head_have_no_severity_column(inspection_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(inspection_root)
    cfg.model = {"name": "autoencoder", "channels": [4, 8]}
    fit(cfg, tmp_path / "ae")
    assert "severity" not in pd.read_csv(evaluate(tmp_path / "ae", figures=False).out_dir / "predictions.csv").columns


def test_onnx_export_includes_severity_with_parity(severity_run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    report = export(severity_run, tmp_path / "severity.onnx")
    assert report.max_severity_diff is not None and report.max_severity_diff <= 1e-4
    parity = json.loads(report.parity.read_text())
    assert parity["max_severity_diff"] <= 1e-4
    # the raw score matches torch, and the graph normalises it exactly as the run's normaliser does
    assert parity["max_raw_score_diff"] <= 1e-4 and parity["max_score_normalisation_diff"] <= 1e-4
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["score", "anomaly_map", "raw_score", "severity"]
    image = (panels(2) * 255.0).numpy()
    score, _, _, severity = session.run(None, {"image": image})
    fitted = load_fitted(severity_run)
    with torch.no_grad():
        expected = fitted.model(torch.from_numpy(image) / 255.0).pred_severity.numpy()
    assert severity.shape == (2,) and np.abs(severity - expected).max() < 1e-4


def test_normalisation_gap_catches_a_graph_normaliser_that_is_not_the_runs(severity_run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from dataclasses import replace

    from fabml.anomaly.export import normalisation_gap

    report = export(severity_run, tmp_path / "severity.onnx")
    fitted = load_fitted(severity_run)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"image": (panels(2) * 255.0).numpy()})))
    assert normalisation_gap(outputs, fitted.normalizer) <= 1e-4
    spread = fitted.normalizer.image_max - fitted.normalizer.image_min
    moved = replace(fitted.normalizer, image_threshold=fitted.normalizer.image_threshold + spread)
    assert normalisation_gap(outputs, moved) > 0.05  # another threshold: the check sees it


def test_resume_is_exact(inspection_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the middle of epoch 2 and resumed: the same faults, dropout and weights as a straight run."""
    cfg = _cfg(inspection_root, epochs=2)  # 4 steps per epoch (18 training images, batch 4, drop_last)
    fit(cfg, tmp_path / "straight")
    real_step, calls = DraemSeverityMethod.training_step, []

    def killed_in_epoch_2(self, batch):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(DraemSeverityMethod, "training_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "killed")
    monkeypatch.setattr(DraemSeverityMethod, "training_step", real_step)
    fit(cfg, tmp_path / "killed", resume=True)
    a = load_fitted(tmp_path / "straight").model.state_dict()
    b = load_fitted(tmp_path / "killed").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
