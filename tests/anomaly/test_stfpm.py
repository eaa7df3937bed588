"""STFPM: shapes, hand-computed maps and loss, frozen teacher, errors, round trip, ONNX."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before timm)
from fabml.anomaly.method import ANOMALY_METHODS
from fabml.anomaly.methods.stfpm import StfpmMethod, stfpm_loss
from fabml.anomaly.models.base import AnomalyOutput
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.anomaly.models.stfpm import Stfpm, StfpmConfig
from fabml.engine.trainer import TrainConfig
from fabml.errors import ConfigError, DataError




def tiny(in_chans: int = 3, backbone: str = "resnet18", size: int = 32, **kw: object) -> Stfpm:
    torch.manual_seed(0)
    cfg = StfpmConfig(image_size=(size, size), in_chans=in_chans, backbone=backbone, pretrained=False, **kw)
    return Stfpm(cfg)


def ramps(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """1-channel smooth horizontal ramps with a little noise: the 'good panels'."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.7, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return (ramp + 0.02 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def test_registered_and_defaults() -> None:
    assert ANOMALY_MODELS.get("stfpm") is Stfpm
    assert ANOMALY_METHODS.get("stfpm") is StfpmMethod
    assert set(StfpmMethod.default_train) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert StfpmMethod.default_train["optimizer"] == "sgd" and StfpmMethod.default_train["lr"] == 0.4
    cfg = StfpmConfig()
    assert (cfg.backbone, cfg.layers) == ("tf_efficientnet_lite0", [1, 2, 3])


@pytest.mark.parametrize(
    ("in_chans", "backbone", "channel_mode"), [(1, "resnet18", "fold"), (3, "tf_efficientnet_lite0", "repeat")]
)
def test_eval_output_shapes(in_chans: int, backbone: str, channel_mode: str) -> None:
    model = tiny(in_chans, backbone, channel_mode=channel_mode).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_chans, 32, 32))
    assert isinstance(out, AnomalyOutput)
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, 1, 32, 32)
    # product of three layer maps, each in [0, 2]
    assert (out.anomaly_map >= 0).all() and (out.anomaly_map <= 8).all()
    model.train()
    teacher, student = model(torch.rand(2, in_chans, 32, 32))
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert [t.shape[-1] for t in teacher] == [8, 4, 2]  # strides 4, 8, 16
    assert not any(t.requires_grad for t in teacher) and all(s.requires_grad for s in student)


def test_anomaly_map_and_loss_hand_computed() -> None:
    model = tiny()
    # one layer: teacher (1, 0), student (0, 1) at every position -> 0.5 * |(1, -1)|^2 = 1
    t1 = torch.zeros(1, 2, 4, 4)
    t1[:, 0] = 3.0
    s1 = torch.zeros(1, 2, 4, 4)
    s1[:, 1] = 0.5
    # second layer: student = 2 x teacher except one position where it is opposite -> 0.5 * 4 = 2
    t2 = torch.randn(1, 5, 2, 2)
    s2 = 2.0 * t2.clone()
    s2[0, :, 1, 1] = -t2[0, :, 1, 1]
    amap = model.compute_anomaly_map([t1, t2], [s1, s2])
    assert amap.shape == (1, 1, 32, 32)
    # bilinear upsampling of a 2x2 map with a single 2 at (1, 1): the far corner stays 0 and the near one 2
    assert amap[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert amap[0, 0, -1, -1].item() == pytest.approx(2.0, rel=1e-5)
    # per-image loss: layer 1 -> mean of 1 = 1; layer 2 -> (0 + 0 + 0 + 2) / 4 = 0.5; batch-averaged
    batch = [t.expand(3, -1, -1, -1) for t in (t1, t2, s1, s2)]
    loss = stfpm_loss(batch[:2], batch[2:])
    assert loss.item() == pytest.approx(1.5, rel=1e-5)


def test_training_moves_student_only_and_loss_decreases() -> None:
    method = StfpmMethod(tiny()).train()
    model = method.model
    assert not model.teacher.training and model.student.training
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    params = method.trainable_parameters()
    assert {id(p) for p in params} == {id(p) for p in model.student.parameters()}
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    batch = {"image": torch.rand(4, 3, 32, 32)}
    losses = []
    for _ in range(5):
        out = method.training_step(batch)
        assert set(out) == {"loss", "loss_layer1", "loss_layer2", "loss_layer3"}
        assert torch.isfinite(out["loss"])
        losses.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert losses[-1] < losses[0]
    for k, v in model.teacher.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in model.student.state_dict().items())


def test_check_input_and_config_errors() -> None:
    model = tiny(in_chans=1).eval()
    with pytest.raises(DataError, match=r"Stfpm expects images \[B, 1, 32, 32\]"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(DataError):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="model.layers"):
        Stfpm(StfpmConfig(image_size=(32, 32), backbone="resnet18", pretrained=False, layers=[]))


def test_state_dict_round_trip() -> None:
    method = StfpmMethod(tiny())
    method.train().training_step({"image": torch.rand(2, 3, 32, 32)})  # moves the student's BN statistics
    model = method.model.eval()
    torch.manual_seed(123)
    clone = Stfpm(dataclasses.replace(model.config)).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), clone(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_onnx_export_parity(tmp_path) -> None:
    model = tiny(in_chans=1, size=64).eval()
    x = torch.rand(2, 1, 64, 64)
    path = tmp_path / "stfpm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, amap = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert np.abs(score - ref.pred_score.numpy()).max() < 1e-4
    assert np.abs(amap - ref.anomaly_map.numpy()).max() < 1e-4


def test_defect_scores_above_normal_after_tiny_fit() -> None:
    """A bright spot on smooth ramps: after 10 paper-setting SGD steps the student misses it."""
    method = StfpmMethod(tiny(in_chans=1)).train()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.4, momentum=0.9, weight_decay=1e-4)
    train = ramps(8, seed=1)
    for _ in range(10):
        loss = method.training_step({"image": train})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = method.model.eval()
    normal = ramps(4, seed=2)
    defect = normal.clone()
    defect[:, :, 10:16, 12:18] = 1.0
    with torch.no_grad():
        normal_scores = model(normal).pred_score
        out = model(defect)
    assert out.pred_score.min() > normal_scores.max()
    spot = torch.zeros(32, 32, dtype=torch.bool)
    spot[10:16, 12:18] = True
    assert out.anomaly_map[:, 0][:, spot].mean() > out.anomaly_map[:, 0][:, ~spot].mean()


def test_standardise_map_fits_on_held_out_images_and_round_trips(round_trip_and_onnx) -> None:
    from fabml.anomaly.models.base import PositionStandardiser

    model = tiny(in_chans=1, layers=[2, 3], standardise_map=True)
    method = StfpmMethod(model)
    held_out = ramps(6, seed=4)
    info = method.finalize([{"image": held_out[:4]}, {"image": held_out[4:]}])
    assert info == {"standardised_images": 6.0}
    assert not model.training and model.position_norm.mean.shape == (1, 1, 32, 32)
    with torch.no_grad():
        raw = model.raw_anomaly_map(*model.features(held_out))
        z = model(held_out).anomaly_map
    # the map is the raw product map in standard deviations of the held-out images at each pixel
    assert torch.allclose(z, (raw - raw.mean(dim=0, keepdim=True)) / raw.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6),
                          atol=1e-4)
    # finalize again gives the same statistics (it fits on raw maps, not on already standardised ones)
    mean = model.position_norm.mean.clone()
    method.finalize([{"image": held_out}])
    assert torch.allclose(model.position_norm.mean, mean)
    round_trip_and_onnx(model, torch.rand(2, 1, 32, 32), atol=1e-3)
    # off by default: finalize does nothing; on with no held-out images: a one-line error naming the setting
    assert StfpmMethod(tiny(in_chans=1, layers=[2, 3])).finalize([{"image": held_out}]) == {}
    with pytest.raises(DataError, match="model.standardise_map needs held-out normal images"):
        method.finalize([])
    with pytest.raises(DataError, match="at least 2 held-out normal images"):
        PositionStandardiser().fit(torch.rand(1, 1, 4, 4))
