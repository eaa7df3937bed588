"""DRAEM: shapes, scoring, config errors, loss wiring (synthetic masks), resume, state dict, ONNX parity."""

from __future__ import annotations

import fabml  # noqa: F401  (torchvision shim before kornia/timm)
import pytest
import torch
from torch.nn import functional as F

import fabml.anomaly.methods.draem as draem_method
from fabml.anomaly.methods.draem import DraemMethod, focal_loss, reconstruction_loss
from fabml.anomaly.models.draem import DraemConfig, DraemModel
from fabml.anomaly.synthetic import SyntheticAnomalyConfig
from fabml.errors import ConfigError, DataError

SIZE = 64


SMALL = 32  # training tests: the smallest size DRAEM accepts keeps them fast


def tiny(in_chans: int = 1, size: int = SIZE, **kw) -> DraemModel:
    torch.manual_seed(0)
    cfg = DraemConfig(image_size=(size, size), in_chans=in_chans, base_width=4, disc_base_width=4, **kw)
    return DraemModel(cfg)


def images(n: int = 2, c: int = 1, seed: int = 1, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_eval_shapes_and_paper_score(in_chans: int) -> None:
    model = tiny(in_chans).eval()
    with torch.no_grad():
        out = model(images(2, in_chans))
        reconstruction = model.reconstructive(images(2, in_chans))
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 1, SIZE, SIZE)
    assert reconstruction.shape == (2, in_chans, SIZE, SIZE)
    assert 0.0 <= float(out.anomaly_map.min()) and float(out.anomaly_map.max()) <= 1.0
    # paper: image score = max of the 21x21 average-pooled (zero-padded) map
    expected = F.avg_pool2d(out.anomaly_map, 21, stride=1, padding=10).flatten(1).max(dim=1).values
    torch.testing.assert_close(out.pred_score, expected)


def test_train_mode_returns_reconstruction_and_logits() -> None:
    model = tiny(3, SMALL).train()
    reconstruction, logits = model(images(2, 3, size=SMALL))
    assert reconstruction.shape == (2, 3, SMALL, SMALL)
    assert logits.shape == (2, 2, SMALL, SMALL)


def test_map_smoothing_and_pooling_settings() -> None:
    model = tiny(1, map_smoothing=3, score_smoothing=0).eval()
    logits = torch.zeros(1, 2, SIZE, SIZE)
    logits[0, 1, 10, 10] = 50.0  # one pixel certain, all others at probability 0.5
    amap = model.compute_anomaly_map(logits)
    # 3x3 mean filter (zero padding): centre (1 + 8 * 0.5) / 9; a border pixel sees 4 valid cells
    assert float(amap[0, 0, 10, 10]) == pytest.approx(5.0 / 9.0, abs=1e-6)
    assert float(amap[0, 0, 0, 0]) == pytest.approx(4 * 0.5 / 9.0, abs=1e-6)
    assert float(model.compute_anomaly_score(amap)[0]) == pytest.approx(float(amap.max()))


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"image_size": (48, 64)}, "multiples of 32"),
        ({"in_chans": 2}, "1- or 3-channel"),
        ({"score_smoothing": 20}, "model.score_smoothing=20"),
        ({"focal_alpha": 1.5}, "model.focal_alpha"),
    ],
)
def test_config_errors(settings: dict, text: str) -> None:
    cfg = DraemConfig(**{"image_size": (SIZE, SIZE), "base_width": 4, "disc_base_width": 4, **settings})
    with pytest.raises(ConfigError, match=text):
        DraemModel(cfg)


def test_wrong_input_shape_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"expects images \[B, 1, 64, 64\]"):
        tiny(1).eval()(images(1, 3))


def test_focal_and_reconstruction_losses_hand_computed() -> None:
    logits = torch.tensor([[[[0.0]], [[0.0]]]])  # p = 0.5 for both classes
    target = torch.tensor([[[1]]])
    # -(1 - 0.5)^2 * log 0.5
    assert float(focal_loss(logits, target, gamma=2.0)) == pytest.approx(0.25 * 0.6931472, rel=1e-6)
    assert float(focal_loss(logits, target, gamma=2.0, alpha=0.25)) == pytest.approx(0.25 * 0.25 * 0.6931472, rel=1e-6)
    x = images(1, 1)
    assert float(reconstruction_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(reconstruction_loss(x * 0.5, x)) > 0.01


def test_training_uses_the_synthesized_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(1, SMALL, synthetic=SyntheticAnomalyConfig(probability=1.0, texture_source="noise"))
    method = DraemMethod(model).train()
    seen: dict[str, torch.Tensor] = {}
    real_synth, real_focal = draem_method.synthesize_anomalies, draem_method.focal_loss

    def synth(x, cfg, generator):
        out = real_synth(x, cfg, generator)
        seen["augmented"], seen["masks"] = out[0], out[1]
        return out

    def focal(logits, target, gamma, alpha):
        seen["target"] = target
        return real_focal(logits, target, gamma, alpha)

    forward = model.forward

    def spy_forward(x):
        seen["input"] = x
        return forward(x)

    monkeypatch.setattr(draem_method, "synthesize_anomalies", synth)
    monkeypatch.setattr(draem_method, "focal_loss", focal)
    monkeypatch.setattr(model, "forward", spy_forward)
    batch = images(2, 1, size=SMALL)
    out = method.training_step({"image": batch})
    assert torch.isfinite(out["loss"])
    assert float(seen["masks"].sum()) > 0
    assert torch.equal(seen["target"], seen["masks"][:, 0].long())
    assert torch.equal(seen["input"], seen["augmented"])  # the networks see the augmented images
    assert not torch.equal(seen["augmented"], batch)
    assert int(method.rng.step) == 1 and int(method.rng.seed) >= 0


def test_loss_decreases_on_a_fixed_batch() -> None:
    method = DraemMethod(tiny(1, SMALL)).train()
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=3e-3)
    batch = {"image": images(2, 1, size=SMALL)}
    losses = []
    for _ in range(3):
        method.rng.step.zero_()  # the same synthetic anomalies every step
        loss = method.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_resume_draws_the_same_anomalies() -> None:
    torch.manual_seed(7)
    first = DraemMethod(tiny(1, SMALL))
    batch = images(2, 1, size=SMALL)
    first.synthesize(batch)  # step 0 fixes the seed from torch.initial_seed()
    second = DraemMethod(tiny(1, SMALL))
    second.load_state_dict(first.state_dict())
    torch.manual_seed(123)  # a resumed process is seeded differently; the buffers decide
    a, b = first.synthesize(batch), second.synthesize(batch)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    model = tiny(3)
    generator = torch.Generator().manual_seed(0)
    for name, buffer in model.named_buffers():  # BN statistics away from their init, as after training
        if name.endswith("running_mean") or name.endswith("running_var"):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    copy = DraemModel(model.config)
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    x = images(2, 3, seed=5)
    with torch.no_grad():
        a, b = model(x), copy(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_onnx_export_parity(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny(1).eval()
    x = images(2, 1, seed=3)
    path = tmp_path / "draem.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["pred_score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "pred_score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, amap = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        out = model(x)
    assert abs(score - out.pred_score.numpy()).max() < 1e-4
    assert abs(amap - out.anomaly_map.numpy()).max() < 1e-4
