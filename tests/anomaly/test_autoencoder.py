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
from fabml.anomaly.models.feature_utils import concat_feature_maps
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
    x = torch.rand(2, in_chans, 32, 32)
    target, recon = model(x)
    assert torch.equal(target, x)  # input 'image' reconstructs the image itself
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
    _, recon = ssim_method.model(batch["image"])
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


def tiny_features(**kw: object) -> Autoencoder:
    """input 'features' on a random-weight lite0 (layers 2, 3 = strides 8, 16: a 4 x 4 grid at 32 px)."""
    torch.manual_seed(0)
    kw.setdefault("blur_sigma", 0.0)
    cfg = AutoencoderConfig(image_size=(32, 32), in_chans=1, input="features", layers=[2, 3], pretrained=False,
                            channels=[16], latent_channels=4, **kw)
    return Autoencoder(cfg)


def test_features_mode_shapes_frozen_backbone_and_map() -> None:
    model = tiny_features(feature_pool=3)
    assert model.feature_extractor is not None and model.feature_extractor.pretrained is False
    method = AutoencoderMethod(model).train()
    assert not model.feature_extractor.training  # the frozen extractor stays in eval mode in train mode
    x = normal_images(4)
    target, recon = model(x)
    assert target.shape == recon.shape == (4, 40 + 112, 4, 4) and not target.requires_grad
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.feature_extractor.parameters())
    model.eval()
    with torch.no_grad():
        target, recon = model.target(x), model.reconstruct(model.target(x))
        out = model(x)
    assert out.anomaly_map.shape == (4, 1, 32, 32)
    # the map is the channel-mean squared feature error, bilinearly upsampled from the 4 x 4 grid
    grid = (target - recon).pow(2).mean(dim=1, keepdim=True)
    expected = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out.anomaly_map, expected, atol=1e-6)


def test_features_are_standardised_with_statistics_of_every_training_batch() -> None:
    model = tiny_features(feature_pool=1)
    a, b = normal_images(4, seed=1), normal_images(6, seed=2)
    model.train()
    model(a)
    model(b)
    with torch.no_grad():
        raw = torch.cat([concat_feature_maps(model.feature_extractor(x)) for x in (a, b)])
    # cumulative average of the two batches' means (momentum=None), not an exponential one
    means = [concat_feature_maps(model.feature_extractor(x)).mean(dim=(0, 2, 3)) for x in (a, b)]
    assert torch.allclose(model.standardise.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    model.eval()
    with torch.no_grad():
        z = model.target(torch.cat([a, b]))
    assert z.shape[1] == raw.shape[1] and abs(z.mean().item()) < 0.5


def test_features_mode_learns_and_flags_a_defect() -> None:
    torch.manual_seed(0)
    model = tiny_features(feature_pool=1)
    method = AutoencoderMethod(model).train()
    train = normal_images(16, seed=1)
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        out = method.training_step({"image": train})
        assert set(out) == {"loss", "mse"}
        losses.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    normal = normal_images(4, seed=2)
    defect = normal.clone()
    defect[:, :, 8:20, 8:20] = 1.0
    with torch.no_grad():
        assert model(defect).pred_score.min() > model(normal).pred_score.max()


def test_features_mode_errors() -> None:
    with pytest.raises(ConfigError, match="model.input='pixels' is unknown; choose one of: image, features"):
        Autoencoder(AutoencoderConfig(image_size=(32, 32), input="pixels"))
    with pytest.raises(ConfigError, match="model.feature_pool=2 must be an odd number"):
        tiny_features(feature_pool=2)
    with pytest.raises(ConfigError, match="model.ssim_weight applies to input 'image' only"):
        tiny_features(ssim_weight=0.5)
    with pytest.raises(ConfigError, match="model.layers is empty"):
        Autoencoder(AutoencoderConfig(image_size=(32, 32), input="features", layers=[], pretrained=False))
    # the image-mode divisibility rule does not apply to features (the grid comes from the backbone)
    assert Autoencoder(AutoencoderConfig(image_size=(48, 48), input="features", layers=[3], pretrained=False,
                                         channels=[8, 8, 8, 8, 8, 8]))


def test_features_mode_round_trip_and_onnx(round_trip_and_onnx) -> None:
    model = tiny_features(blur_sigma=1.0)
    AutoencoderMethod(model).train().training_step({"image": normal_images(4)})  # moves the standardiser
    round_trip_and_onnx(model, torch.rand(3, 1, 32, 32))


def test_error_statistics_whiten_the_residual_and_standardise_each_position() -> None:
    model = tiny_features(normalise_error=True).eval()
    g = torch.Generator().manual_seed(0)
    d = 40 + 112
    residuals = torch.randn(6, d, 4, 4, generator=g) * torch.linspace(0.1, 3.0, d).view(1, d, 1, 1)
    info = model.set_error_statistics(residuals)
    assert info == {"error_images": 6.0, "error_positions": 16.0}
    vectors = residuals.permute(0, 2, 3, 1).reshape(-1, d).double()
    inverse = torch.linalg.inv(torch.cov(vectors.T) + 0.01 * torch.eye(d, dtype=torch.float64))
    # W W^T = (S + 0.01 I)^-1, so the whitened squared norm is the Mahalanobis form r^T (S + 0.01 I)^-1 r / D
    w = model.whitening.double()
    assert torch.allclose(w @ w.T, inverse, rtol=1e-4, atol=1e-6)
    r = residuals[:1]
    by_hand = torch.einsum("bchw,cd,bdhw->bhw", r.double(), inverse, r.double()) / d
    zero = torch.zeros_like(r)
    assert torch.allclose(model.squared_error(r, zero)[:, 0].double(), by_hand, rtol=1e-4)
    # each position's error over the held-out images has mean 0 and std 1 after standardisation
    errors = model.squared_error(residuals, torch.zeros_like(residuals))
    z = model.position_norm(errors)
    assert torch.allclose(z.mean(dim=0), torch.zeros(1, 4, 4), atol=1e-4)
    assert torch.allclose(z.std(dim=0, unbiased=False), torch.ones(1, 4, 4), atol=1e-4)
    with pytest.raises(ConfigError, match="at least 2 held-out normal images"):
        model.set_error_statistics(residuals[:1])


def test_finalize_installs_statistics_that_survive_a_round_trip_and_onnx(round_trip_and_onnx) -> None:
    model = tiny_features(normalise_error=True, blur_sigma=1.0)
    method = AutoencoderMethod(model).train()
    method.training_step({"image": normal_images(8)})
    held_out = normal_images(6, seed=3)
    info = method.finalize([{"image": held_out[:3]}, {"image": held_out[3:]}])
    assert info["error_images"] == 6.0 and model.whitening.shape == (152, 152)
    assert model.position_norm.mean.shape == model.position_norm.std.shape == (1, 1, 4, 4)
    with torch.no_grad():
        target = model.target(held_out)
        errors = model.squared_error(target, model.reconstruct(target))
    assert torch.allclose(errors.mean(dim=0, keepdim=True), model.position_norm.mean, atol=1e-5)
    # a fresh (unfinalised) model takes the fitted statistics from the state dict
    assert Autoencoder(dataclasses.replace(model.config)).whitening.numel() == 0
    round_trip_and_onnx(model, torch.rand(2, 1, 32, 32), atol=1e-3)  # random images: errors ~1e3
    # without normalise_error, finalize does nothing; an empty validation split is a one-line error
    assert AutoencoderMethod(tiny_features()).finalize([{"image": held_out}]) == {}
    with pytest.raises(DataError, match="model.normalise_error needs held-out normal images and the validation split is empty"):
        method.finalize([])
    with pytest.raises(ConfigError, match="model.normalise_error applies to input 'features' only"):
        tiny(normalise_error=True)
