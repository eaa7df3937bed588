"""Convolutional autoencoder: shapes, map values, training, errors, round trip, ONNX, trainer."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from kornia.losses import ssim_loss
from torch.utils.data import Dataset

import fabml  # noqa: F401  (torchvision shim before anything imports timm)
from fabml.anomaly.method import ANOMALY_METHODS
from fabml.anomaly.methods.autoencoder import AutoencoderMethod
from fabml.anomaly.models.autoencoder import Autoencoder, AutoencoderConfig
from fabml.anomaly.models.base import AnomalyOutput
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.engine.trainer import Trainer, TrainConfig
from fabml.errors import ConfigError, DataError




def tiny(in_chans: int = 1, size: int = 32, **kw: object) -> Autoencoder:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(image_size=(size, size), in_chans=in_chans, channels=[8, 16], latent_channels=8, **kw)
    return Autoencoder(cfg)


def normal_images(n: int, in_chans: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth horizontal ramps with a little noise: the 'good panels'."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.7, size).view(1, 1, 1, size).expand(n, in_chans, size, size)
    return (ramp + 0.02 * torch.randn(n, in_chans, size, size, generator=g)).clamp(0, 1)


def test_registered() -> None:
    assert ANOMALY_MODELS.get("autoencoder") is Autoencoder
    assert ANOMALY_METHODS.get("autoencoder") is AutoencoderMethod
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(AutoencoderMethod.default_train) <= fields


@pytest.mark.parametrize("in_chans", [1, 3])
def test_eval_output_shapes(in_chans: int) -> None:
    model = tiny(in_chans).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_chans, 32, 32))
    assert isinstance(out, AnomalyOutput)
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 1, 32, 32)
    assert (out.anomaly_map >= 0).all() and (out.anomaly_map <= 1).all()
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).max(dim=1).values)
    model.train()
    recon = model(torch.rand(2, in_chans, 32, 32))
    assert recon.shape == (2, in_chans, 32, 32) and 0 <= recon.min() and recon.max() <= 1


def test_anomaly_map_values() -> None:
    model = tiny(in_chans=3, blur_sigma=0.0)
    x = torch.zeros(1, 3, 32, 32)
    r = torch.zeros(1, 3, 32, 32)
    r[0, 0, 5, 7] = 0.6  # error 0.36 in one channel -> channel mean 0.12
    r[0, 1, 5, 7] = 0.3  # + 0.09 -> (0.36 + 0.09) / 3 = 0.15
    amap = model.compute_anomaly_map(x, r)
    assert amap[0, 0, 5, 7].item() == pytest.approx(0.15)
    assert amap.sum().item() == pytest.approx(0.15)
    # a blur keeps a uniform error uniform and spreads a point error without losing its mass far from borders
    blurred = tiny(in_chans=3, blur_sigma=1.0)
    r = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(blurred.compute_anomaly_map(x, r), torch.full((1, 1, 32, 32), 0.25))
    r = torch.zeros(1, 3, 32, 32)
    r[:, :, 16, 16] = 1.0
    point = blurred.compute_anomaly_map(x, r)
    assert point.sum().item() == pytest.approx(1.0, rel=1e-5)
    assert point[0, 0, 16, 16] < 1.0 and point.argmax().item() == 16 * 32 + 16


def test_loss_decreases_and_ssim_term() -> None:
    method = AutoencoderMethod(tiny(in_chans=1)).train()
    batch = {"image": normal_images(4)}
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        out = method.training_step(batch)
        assert torch.isfinite(out["loss"]) and set(out) == {"loss", "mse"}
        losses.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert losses[-1] < losses[0]

    ssim_method = AutoencoderMethod(tiny(in_chans=1, ssim_weight=0.5, ssim_window=7)).train()
    torch.manual_seed(1)
    out = ssim_method.training_step(batch)
    torch.manual_seed(1)
    recon = ssim_method.model(batch["image"])
    expected_ssim = ssim_loss(recon, batch["image"], window_size=7)
    assert out["ssim_loss"].item() == pytest.approx(expected_ssim.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["mse"].item() + 0.5 * expected_ssim.item(), rel=1e-5)


def test_defect_scores_above_normal_after_tiny_fit() -> None:
    torch.manual_seed(0)
    method = AutoencoderMethod(tiny(in_chans=1, blur_sigma=1.0)).train()
    train = normal_images(8, seed=1)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    for _ in range(60):
        loss = method.training_step({"image": train})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = method.model.eval()
    test_normal = normal_images(4, seed=2)
    defect = test_normal.clone()
    defect[:, :, 10:16, 12:18] = 1.0  # a bright 6x6 spot
    with torch.no_grad():
        normal_scores = model(test_normal).pred_score
        defect_out = model(defect)
    assert defect_out.pred_score.min() > normal_scores.max()
    # the map peaks on the spot
    peak = defect_out.anomaly_map[0, 0].argmax().item()
    assert 9 <= peak // 32 <= 16 and 11 <= peak % 32 <= 18


def test_bad_input_and_config_errors() -> None:
    model = tiny(in_chans=1).eval()
    with pytest.raises(DataError, match=r"expects images \[B, 1, 32, 32\]"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(DataError):
        model(torch.rand(2, 1, 40, 32))
    with pytest.raises(ConfigError, match=r"model.image_size=\[36, 36\] must be divisible by 2\^3 = 8"):
        Autoencoder(AutoencoderConfig(image_size=(36, 36), channels=[8, 16, 32]))
    with pytest.raises(ConfigError, match="model.ssim_window"):
        Autoencoder(AutoencoderConfig(image_size=(32, 32), ssim_window=4))


def test_state_dict_round_trip() -> None:
    model = tiny(in_chans=3)
    AutoencoderMethod(model).training_step({"image": torch.rand(4, 3, 32, 32)})  # moves BN running stats
    model.eval()
    clone = Autoencoder(dataclasses.replace(model.config))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), clone(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_onnx_export_parity(tmp_path) -> None:
    model = tiny(in_chans=1, size=64, blur_sigma=2.0).eval()
    x = torch.rand(2, 1, 64, 64)
    path = tmp_path / "ae.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["pred_score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.rand(3, 1, 64, 64)
    score, amap = session.run(None, {"image": x2.numpy()})
    with torch.no_grad():
        ref = model(x2)
    assert np.abs(score - ref.pred_score.numpy()).max() < 1e-4
    assert np.abs(amap - ref.anomaly_map.numpy()).max() < 1e-4


class RampDataset(Dataset):
    """Batch dicts of normal ramps, as the anomaly pipeline's datasets yield them."""

    def __init__(self, n: int = 8) -> None:
        self.images = normal_images(n)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i],
            "mask": torch.zeros(1, 32, 32),
            "label": torch.tensor(0),
            "index": torch.tensor(i),
        }


def test_runs_under_trainer(tmp_path) -> None:
    method = AutoencoderMethod(tiny(in_chans=1))
    cfg = TrainConfig(
        **{**AutoencoderMethod.default_train, "epochs": 2, "batch_size": 4},
        device="cpu", num_workers=0, precision="fp32",
    )
    result = Trainer(method, cfg, tmp_path, RampDataset()).fit()
    assert result.epochs_completed == 2 and result.global_step == 4
    assert all(np.isfinite(row["loss"]) and "mse" in row for row in result.history)
    # the checkpoint restores the trained model exactly
    ckpt = torch.load(result.checkpoint_dir / "latest.pt", map_location="cpu", weights_only=False)
    restored = AutoencoderMethod(Autoencoder(method.model.config))
    restored.load_state_dict(ckpt["method"])
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a, b = method.model.eval()(x), restored.model.eval()(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and a.anomaly_map.shape == (2, 1, 32, 32)
