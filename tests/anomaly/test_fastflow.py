"""FastFlow: shapes, invertible flows, hand-computed map and loss, frozen backbone, ONNX parity."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before timm)
from fabml.anomaly.method import ANOMALY_METHODS
from fabml.anomaly.methods.fastflow import FastflowMethod, fastflow_loss
from fabml.anomaly.models.base import AnomalyOutput
from fabml.anomaly.models.fastflow import Fastflow, FastflowConfig
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.engine.trainer import TrainConfig
from fabml.errors import ConfigError, DataError




def tiny(in_chans: int = 3, backbone: str = "resnet18", size: int = 32, **kw: object) -> Fastflow:
    torch.manual_seed(0)
    kw.setdefault("flow_steps", 4)
    cfg = FastflowConfig(image_size=(size, size), in_chans=in_chans, backbone=backbone, pretrained=False, **kw)
    return Fastflow(cfg)


def ramps(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """1-channel smooth horizontal ramps with a little noise: the 'good panels'."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.7, size).view(1, 1, 1, size).expand(n, 1, size, size)
    return (ramp + 0.02 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def test_registered_and_defaults() -> None:
    assert ANOMALY_MODELS.get("fastflow") is Fastflow
    assert ANOMALY_METHODS.get("fastflow") is FastflowMethod
    assert set(FastflowMethod.default_train) <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = FastflowConfig()
    assert (cfg.backbone, cfg.layers, cfg.flow_steps, cfg.hidden_ratio, cfg.clamp) == (
        "tf_efficientnet_lite0", [1, 2, 3], 8, 1.0, 2.0
    )


@pytest.mark.parametrize(("in_chans", "backbone"), [(1, "resnet18"), (3, "tf_efficientnet_lite0")])
def test_eval_output_shapes(in_chans: int, backbone: str) -> None:
    model = tiny(in_chans, backbone).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_chans, 32, 32))
    assert isinstance(out, AnomalyOutput)
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, 1, 32, 32)
    assert (out.anomaly_map >= 0).all() and (out.anomaly_map <= 1).all()
    model.train()
    zs, jacs = model(torch.rand(2, in_chans, 32, 32))
    assert [tuple(z.shape[1:]) for z in zs] == [(c, 32 // r, 32 // r) for c, r in zip(
        model.feature_extractor.channels, model.feature_extractor.reductions)]
    assert all(j.shape == (2,) for j in jacs)


def test_flow_is_invertible_and_subnets_alternate() -> None:
    model = tiny(flow_steps=4).eval()
    flow = model.flows[1]
    kernels = [block.subnet[0].kernel_size[0] for block in flow]
    assert kernels == [3, 1, 3, 1]
    x = torch.randn(2, *flow.shapes[0])
    with torch.no_grad():
        z, log_jac = flow(x)
        x_back, log_jac_rev = flow(z, rev=True)
    assert torch.allclose(x_back, x, atol=1e-4)
    assert torch.allclose(log_jac, -log_jac_rev, atol=1e-3)
    only3 = tiny(flow_steps=2, conv3x3_only=True)
    assert [b.subnet[0].kernel_size[0] for b in only3.flows[0]] == [3, 3]


def test_anomaly_map_and_loss_hand_computed() -> None:
    model = tiny()
    # layer 1: z = 0 -> p = 1; layer 2: mean_c z^2 = 2 -> p = exp(-1); map = 1 - (1 + e^-1) / 2
    z1 = torch.zeros(1, 4, 8, 8)
    z2 = torch.full((1, 3, 4, 4), math.sqrt(2.0))
    amap = model.compute_anomaly_map([z1, z2])
    assert amap.shape == (1, 1, 32, 32)
    assert torch.allclose(amap, torch.full_like(amap, 1 - (1 + math.exp(-1)) / 2))
    # loss: mean over the batch of 0.5 * sum z^2 - log_jac, summed over layers
    za = torch.ones(2, 2, 2, 2)  # 0.5 * 8 = 4 per image
    zb = torch.zeros(2, 1, 2, 2)
    loss = fastflow_loss([za, zb], [torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5])])
    assert loss.item() == pytest.approx((4 - 2) + (0 - 0.5))


def test_training_moves_flows_only_and_loss_decreases() -> None:
    method = FastflowMethod(tiny()).train()
    model = method.model
    assert not model.feature_extractor.training and model.flows.training
    frozen_before = {k: v.clone() for k, v in model.feature_extractor.state_dict().items()}
    perm_before = model.flows[0][0].w_perm.clone()
    params = method.trainable_parameters()
    expected = {id(p) for m in (model.norms, model.flows) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in params} == expected
    assert not any(p is model.flows[0][0].w_perm for p in params)
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
    batch = {"image": torch.rand(4, 3, 32, 32)}
    losses = []
    for _ in range(4):
        out = method.training_step(batch)
        assert set(out) == {"loss", "z_sq_mean", "log_jac_per_dim"} and torch.isfinite(out["loss"])
        losses.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert losses[-1] < losses[0]
    for k, v in model.feature_extractor.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k
    assert torch.equal(model.flows[0][0].w_perm, perm_before)


def test_construction_is_seeded_by_torch() -> None:
    state = np.random.get_state()
    a, b = tiny(), tiny()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global stream untouched


def test_check_input_and_config_errors() -> None:
    model = tiny(in_chans=1).eval()
    with pytest.raises(DataError, match=r"Fastflow expects images \[B, 1, 32, 32\]"):
        model(torch.rand(1, 1, 48, 32))
    with pytest.raises(ConfigError, match="model.flow_steps"):
        tiny(flow_steps=0)
    with pytest.raises(ConfigError, match="model.hidden_ratio"):
        tiny(hidden_ratio=0.0)


def test_state_dict_round_trip() -> None:
    method = FastflowMethod(tiny())
    loss = method.train().training_step({"image": torch.rand(2, 3, 32, 32)})["loss"]
    loss.backward()
    torch.optim.Adam(method.trainable_parameters(), lr=1e-2).step()
    model = method.model.eval()
    torch.manual_seed(99)  # a different random init and permutation: all must come from the state dict
    clone = Fastflow(dataclasses.replace(model.config)).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), clone(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_onnx_export_parity(tmp_path) -> None:
    torch.manual_seed(0)
    model = Fastflow(FastflowConfig(image_size=(64, 64), in_chans=1, backbone="tf_efficientnet_lite0",
                                    pretrained=False, channel_mode="fold", flow_steps=4))
    method = FastflowMethod(model).train()
    loss = method.training_step({"image": torch.rand(2, 1, 64, 64)})["loss"]
    loss.backward()
    torch.optim.Adam(method.trainable_parameters(), lr=1e-2).step()  # move the flows off their init
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    path = tmp_path / "fastflow.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.rand(2, 1, 64, 64)
    score, amap = session.run(None, {"image": x2.numpy()})
    with torch.no_grad():
        ref = model(x2)
    assert np.abs(score - ref.pred_score.numpy()).max() < 1e-4
    assert np.abs(amap - ref.anomaly_map.numpy()).max() < 1e-4


def test_defect_scores_above_normal_after_tiny_fit() -> None:
    """A bright spot on smooth ramps: after 10 paper-setting Adam steps its features are unlikely."""
    method = FastflowMethod(tiny(in_chans=1)).train()
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-3, weight_decay=1e-5)
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
