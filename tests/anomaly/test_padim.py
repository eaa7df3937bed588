"""PaDiM: shapes, random channel subset, Mahalanobis map against numpy, streaming fit equals
one-shot fit, a synthetic defect, state-dict round trip, ONNX, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before anything imports timm)
from fabml.anomaly.method import ANOMALY_METHODS
from fabml.anomaly.methods.padim import GaussianSums, PadimMethod
from fabml.anomaly.models.base import AnomalyOutput
from fabml.anomaly.models.padim import Padim, PadimConfig, mahalanobis_map
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.engine.trainer import TrainConfig
from fabml.errors import ConfigError, DataError, TrainingError

SIZE = 32




def make_model(in_chans: int = 1, **kw: object) -> Padim:
    torch.manual_seed(0)
    kw.setdefault("n_features", 12)
    cfg = PadimConfig(image_size=(SIZE, SIZE), in_chans=in_chans, pretrained=False, **kw)
    return Padim(cfg)


def normal_images(n: int, in_chans: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth horizontal ramps with a jittered level and a little noise: the 'good panels'."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.6, SIZE).view(1, 1, 1, SIZE)
    level = 0.1 * torch.rand(n, 1, 1, 1, generator=g)
    return (ramp + level + 0.01 * torch.randn(n, in_chans, SIZE, SIZE, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def fitted() -> Padim:
    model = make_model()
    train = normal_images(16)
    PadimMethod(model).fit([{"image": train[:8]}, {"image": train[8:]}])
    return model.eval()


def test_registered_and_defaults() -> None:
    assert ANOMALY_MODELS.get("padim") is Padim
    assert ANOMALY_METHODS.get("padim") is PadimMethod and PadimMethod.memory_bank
    assert set(PadimMethod.default_train) <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = PadimConfig()
    assert (cfg.backbone, cfg.layers, cfg.n_features, cfg.eps) == ("tf_efficientnet_lite0", [1, 2, 3], 100, 0.01)


def test_shapes_and_buffers(fitted: Padim) -> None:
    # lite0 layers 1, 2, 3 = strides 4, 8, 16 -> an 8 x 8 grid at 32 px, 24 + 40 + 112 channels
    assert fitted.mean.shape == (12, 64) and fitted.inv_covariance.shape == (64, 12, 12)
    assert fitted.channel_index.shape == (12,) and int(fitted.channel_index.max()) < 176
    with torch.no_grad():
        out = fitted(normal_images(3, seed=3))
    assert isinstance(out, AnomalyOutput)
    assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert torch.allclose(out.pred_score, out.anomaly_map.flatten(1).amax(1))


def test_three_channels_and_fixed_channel_subset() -> None:
    a, b = make_model(in_chans=3), make_model(in_chans=3, seed=0)
    assert torch.equal(a.channel_index, b.channel_index)
    assert not torch.equal(a.channel_index, make_model(in_chans=3, seed=1).channel_index)
    assert a.channel_index.unique().numel() == 12
    stats = PadimMethod(a).fit([normal_images(3, in_chans=3)])
    assert stats == {"n_images": 3, "positions": 64, "n_features": 12, "fit_seconds": stats["fit_seconds"]}
    a.train()
    assert not a.feature_extractor.training
    assert a(normal_images(2, in_chans=3)).shape == (2, 12, 8, 8)
    assert a.eval()(normal_images(2, in_chans=3)).anomaly_map.shape == (2, 1, SIZE, SIZE)


def test_mahalanobis_matches_numpy(fitted: Padim) -> None:
    train = normal_images(16)
    test = normal_images(2, seed=7)
    with torch.no_grad():
        emb_train = fitted.embed(train).double().numpy()  # [N, d, h, w]
        emb_test = fitted.embed(test)
        got = mahalanobis_map(emb_test, fitted.mean, fitted.inv_covariance).numpy()
    d = emb_train.shape[1]
    x = emb_train.reshape(16, d, -1)
    y = emb_test.double().numpy().reshape(2, d, -1)
    expected = np.empty((2, x.shape[2]))
    for i in range(x.shape[2]):
        cov = np.cov(x[:, :, i], rowvar=False) + 0.01 * np.eye(d)
        delta = y[:, :, i] - x[:, :, i].mean(axis=0)
        expected[:, i] = np.sqrt(np.einsum("bi,ij,bj->b", delta, np.linalg.inv(cov), delta))
    assert np.allclose(got.reshape(2, -1), expected, rtol=1e-5, atol=1e-5)


def test_streaming_fit_equals_one_batch_fit(fitted: Padim) -> None:
    one = make_model()
    PadimMethod(one).fit([normal_images(16)])
    assert torch.allclose(one.mean, fitted.mean, atol=1e-6)
    assert torch.allclose(one.inv_covariance, fitted.inv_covariance, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("flush_images", [256, 5])
def test_streaming_covariance_matches_numpy_float64(flush_images: int) -> None:
    # float32 batch products into float64 sums: far-from-zero features (mean 50), uneven batches,
    # partial sums flushed into the float64 totals once at the end or every few batches
    rng = np.random.default_rng(3)
    x = 50.0 + rng.standard_normal((37, 5, 3, 2)) * rng.uniform(0.1, 3.0, (1, 5, 1, 1))
    sums = GaussianSums(flush_images=flush_images)
    for part in np.split(x, [4, 15, 16, 30]):
        sums.add(torch.from_numpy(part).float())
    data = x.astype(np.float32).astype(np.float64).reshape(37, 5, 6)  # what the model sees
    got = sums.covariance(0.01).numpy()
    for i in range(6):
        want = np.cov(data[:, :, i], rowvar=False) + 0.01 * np.eye(5)
        assert np.allclose(got[i], want, rtol=1e-5, atol=1e-6)
    mean, inv = sums.gaussian(0.01)
    assert np.allclose(mean.numpy(), data.mean(axis=0), rtol=1e-6)
    assert np.allclose(inv[0].numpy(), np.linalg.inv(np.cov(data[:, :, 0], rowvar=False) + 0.01 * np.eye(5)),
                       rtol=1e-4, atol=1e-5)


def test_mahalanobis_hand_case() -> None:
    # one position, d = 2: delta = (1, 2), inverse covariance diag(4, 1) -> sqrt(4 + 4)
    emb = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    dist = mahalanobis_map(emb, torch.zeros(2, 1), torch.diag(torch.tensor([4.0, 1.0])).unsqueeze(0))
    assert float(dist) == pytest.approx(8**0.5)


def test_synthetic_defect_scores_higher(fitted: Padim) -> None:
    held_out = normal_images(4, seed=1)
    defects = normal_images(4, seed=2)
    defects[:, :, 12:20, 14:22] = 1.0
    with torch.no_grad():
        normal_out, defect_out = fitted(held_out), fitted(defects)
    assert defect_out.pred_score.min() > normal_out.pred_score.max()


def test_state_dict_round_trip(fitted: Padim) -> None:
    fresh = make_model()
    assert not fresh.fitted
    fresh.load_state_dict(fitted.state_dict())
    images = normal_images(2, seed=4)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images).pred_score, fitted(images).pred_score)


def test_onnx_export_matches_torch(fitted: Padim, tmp_path) -> None:
    import onnxruntime as ort

    images = normal_images(2, seed=5)
    path = tmp_path / "padim.onnx"
    torch.onnx.export(
        fitted, (images,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["pred_score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "pred_score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )  # fmt: skip
    probe = normal_images(3, seed=6)
    probe[0, :, 4:10, 4:10] = 1.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, amap = session.run(None, {"image": probe.numpy()})
    with torch.no_grad():
        ref = fitted(probe)
    assert np.abs(score - ref.pred_score.numpy()).max() < 1e-4 * max(1.0, float(ref.pred_score.abs().max()))
    assert np.abs(amap - ref.anomaly_map.numpy()).max() < 1e-4 * max(1.0, float(ref.anomaly_map.abs().max()))


def test_errors(fitted: Padim) -> None:
    model = make_model().eval()
    with pytest.raises(TrainingError, match="Padim is not fitted: run fit first"):
        model(normal_images(1))
    with pytest.raises(DataError, match=r"expects images \[B, 1, 32, 32\]"):
        fitted(torch.rand(1, 1, 64, 64))
    with pytest.raises(DataError, match="at least 2 normal images"):
        PadimMethod(model).fit([normal_images(1)])
    with pytest.raises(ConfigError, match=r"n_features=500 must be in \[1, 176\]"):
        make_model(n_features=500)
    with pytest.raises(ConfigError, match="model.eps=0.0 must be > 0"):
        make_model(eps=0.0)
