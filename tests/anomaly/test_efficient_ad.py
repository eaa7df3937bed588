"""EfficientAD: shapes, frozen teacher, teacher files and errors, distillation, losses, quantile
normalisation, penalty images, state dict and ONNX parity (tiny widths, 64 px)."""

from __future__ import annotations

from pathlib import Path

import fabml  # noqa: F401  (torchvision shim before timm)
import numpy as np
import pytest
import torch
from PIL import Image

from fabml.anomaly.methods.efficient_ad import (
    EfficientAdMethod,
    backbone_targets,
    hard_feature_loss,
    linear_quantile,
)
from fabml.anomaly.models.efficient_ad import EfficientAdConfig, EfficientAdModel, PatchDescriptionNetwork
from fabml.backbones import FeatureExtractor
from fabml.errors import ConfigError, TrainingError
from fabml.weights import load_pretrained

SIZE = 64
TINY = {"image_size": (SIZE, SIZE), "out_channels": 8, "width_scale": 1 / 16}


def tiny(in_chans: int = 1, **kw) -> EfficientAdModel:
    torch.manual_seed(0)
    return EfficientAdModel(EfficientAdConfig(**{**TINY, "in_chans": in_chans, "pretrained": False, **kw}))


def images(n: int = 2, c: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def loader(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"image": x, "label": torch.zeros(x.shape[0], dtype=torch.long)}]


@pytest.fixture(autouse=True)
def no_weights_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABML_WEIGHTS_DIR", raising=False)


@pytest.mark.parametrize(("in_chans", "size"), [(1, "small"), (3, "medium")])
def test_eval_shapes(in_chans: int, size: str) -> None:
    model = tiny(in_chans, model_size=size).eval()
    assert model.grid == (8, 8)  # 64 px: 64 / 4 - 8
    with torch.no_grad():
        out = model(images(2, in_chans))
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).max(dim=1).values)
    model.train()
    teacher, student, ae = model(images(2, in_chans))
    assert teacher.shape == (2, 8, 8, 8) and student.shape == (2, 16, 8, 8) and ae.shape == (2, 8, 8, 8)


def test_paper_sizes_at_256_px() -> None:
    model = EfficientAdModel(EfficientAdConfig(image_size=(256, 256), in_chans=3, pretrained=False))
    assert model.grid == (56, 56)
    assert model.autoencoder.sizes == [(3, 3), (8, 8), (15, 15), (32, 32), (63, 63), (127, 127)]
    assert model.autoencoder.bottleneck.kernel_size == (8, 8)
    assert model.teacher.conv4.out_channels == 384 and model.student.conv4.out_channels == 768


@pytest.mark.parametrize(
    ("settings", "text"),
    [({"image_size": (48, 64)}, "at least 64 px"), ({"model_size": "large"}, "small, medium"),
     ({"map_quantiles": (0.9, 0.5)}, "model.map_quantiles")],
)
def test_config_errors(settings: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        EfficientAdModel(EfficientAdConfig(**{**TINY, "pretrained": False, **settings}))


def test_hard_loss_and_quantile_hand_computed() -> None:
    d = torch.arange(1000, dtype=torch.float32)
    assert float(hard_feature_loss(d, 0.999)) == 999.0
    assert float(hard_feature_loss(d, 0.99)) == pytest.approx(sum(range(990, 1000)) / 10)
    x = torch.rand(5001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.9, 0.995, 1.0):
        assert float(linear_quantile(x, q)) == pytest.approx(float(torch.quantile(x, q)), abs=1e-7)


def test_teacher_stays_frozen_and_losses_decrease() -> None:
    model = tiny(1)
    method = EfficientAdMethod(model)
    batch = images(2, 1)
    with pytest.raises(TrainingError, match="prepare"):
        method.training_step({"image": batch})
    stats = method.prepare(loader(batch))
    assert stats["teacher_stats_images"] == 2.0
    with torch.no_grad():
        standardised = model.teacher_features(batch)
    torch.testing.assert_close(standardised.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(dim=(0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.teacher.parameters())
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3, weight_decay=1e-5)
    method.train()
    losses = []
    for _ in range(4):
        method.rng.step.zero_()  # same augmentation every step
        torch.manual_seed(0)  # same dropout masks every step
        out = method.training_step({"image": batch})
        assert all(torch.isfinite(v) for v in out.values())
        assert float(out["loss_penalty"]) == 0.0  # no penalty_dir: the term is off
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]
    assert not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])


def test_finalize_sets_quantiles_and_normalises_maps() -> None:
    model = tiny(1)
    method = EfficientAdMethod(model)
    normal = images(3, 1)
    method.prepare(loader(normal))
    assert float(model.qa_st) == 0.0 and float(model.qb_st) == pytest.approx(0.1)  # identity before finalize
    values = method.finalize(loader(normal))
    model.eval()
    with torch.no_grad():
        st, ae = model.raw_maps(model.teacher_features(normal), model.student(normal), model.autoencoder(normal))
        out = model(normal)
    assert values["qa_st"] == pytest.approx(float(torch.quantile(st.flatten(), 0.9)), rel=1e-5)
    assert values["qb_ae"] == pytest.approx(float(torch.quantile(ae.flatten(), 0.995)), rel=1e-5)
    assert float(model.qb_st) == pytest.approx(values["qb_st"])
    norm_st = 0.1 * (st - model.qa_st) / (model.qb_st - model.qa_st)
    # the paper's normalisation: qa -> 0, qb -> 0.1 on the held-out normal images
    assert float(torch.quantile(norm_st.flatten(), 0.9)) == pytest.approx(0.0, abs=1e-5)
    assert float(torch.quantile(norm_st.flatten(), 0.995)) == pytest.approx(0.1, abs=1e-5)
    assert -1.0 < float(out.anomaly_map.min()) and float(out.anomaly_map.max()) < 1.0


def _write_pdn(path: Path, size: str, in_chans: int, sequential_keys: bool) -> PatchDescriptionNetwork:
    torch.manual_seed(3)
    pdn = PatchDescriptionNetwork(size, in_chans, 8, width_scale=1 / 16)
    state = pdn.state_dict()
    if sequential_keys:  # the original repository's nn.Sequential names: 0.weight, 0.bias, 3.weight ...
        state = {f"{i}.{k.split('.')[-1]}": v for i, (k, v) in enumerate(state.items())}
    torch.save(state, path)
    return pdn


@pytest.mark.parametrize("sequential_keys", [False, True])
def test_teacher_loads_from_a_state_dict_file(tmp_path: Path, sequential_keys: bool) -> None:
    path = tmp_path / "pretrained_teacher_small.pth"
    source = _write_pdn(path, "small", 3, sequential_keys)
    by_path = EfficientAdModel(EfficientAdConfig(**TINY, in_chans=3, teacher_weights=str(path)))
    by_folder = EfficientAdModel(EfficientAdConfig(**TINY, in_chans=3, weights_dir=str(tmp_path)))
    for model in (by_path, by_folder):
        assert not bool(model.teacher_ready)  # building reads nothing
        report = load_pretrained(model)
        assert bool(model.teacher_ready) and [r.path for r in report] == [path]
        assert report[0].mode == ("order" if sequential_keys else "name")
        for key, value in source.state_dict().items():
            assert torch.equal(model.teacher.state_dict()[key], value)


def test_rgb_teacher_folds_into_a_gray_model(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pth"
    rgb = _write_pdn(path, "small", 3, sequential_keys=False)
    gray = EfficientAdModel(EfficientAdConfig(**TINY, in_chans=1, teacher_weights=str(path)))
    load_pretrained(gray)
    x = images(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(gray.teacher(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


def test_missing_teacher_weights_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=r"not found: .*nope\.pth \(setting model\.teacher_weights\)"):
        load_pretrained(EfficientAdModel(EfficientAdConfig(**TINY, teacher_weights=str(missing))))
    wrong = tmp_path / "medium.pth"
    _write_pdn(wrong, "medium", 3, sequential_keys=False)
    with pytest.raises(ConfigError, match="model.model_size"):
        load_pretrained(EfficientAdModel(EfficientAdConfig(**TINY, teacher_weights=str(wrong))))
    # no teacher file and no local backbone weights to distil from
    folder = tmp_path / "weights"
    folder.mkdir()
    model = EfficientAdModel(EfficientAdConfig(**TINY, backbone="resnet18", weights_dir=str(folder)))
    assert load_pretrained(model) == [] and not bool(model.teacher_ready)
    with pytest.raises(ConfigError) as err:
        EfficientAdMethod(model).prepare(loader(images(1, 3)))
    text = str(err.value)
    assert "model.teacher_weights" in text and "pretrained_teacher_small.pth" in text and str(folder) in text
    assert "model.pretrained=false" in text


def test_distillation_regresses_backbone_features(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    extractor = FeatureExtractor("resnet18", [2, 3], in_chans=1, pretrained=False)
    x = images(2, 1)
    targets = backbone_targets(extractor, x, 8, (8, 8))
    assert targets.shape == (2, 8, 8, 8)
    model = EfficientAdModel(EfficientAdConfig(**TINY, in_chans=1, distill_steps=4, distill_lr=1e-2))
    assert not bool(model.teacher_ready)
    method = EfficientAdMethod(model)
    monkeypatch.setattr(method, "distillation_backbone", lambda: extractor)
    stats = method.prepare(loader(x))
    assert stats["distill_steps"] == 4.0
    assert stats["distill_loss_last"] < stats["distill_loss_first"]
    assert bool(model.teacher_ready) and bool(model.stats_ready)
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_penalty_images(tmp_path: Path) -> None:
    folder = tmp_path / "generic"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    model = tiny(1, penalty_dir=str(folder))
    method = EfficientAdMethod(model)
    generic = method.penalty.sample(2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert generic.shape == (2, 1, SIZE, SIZE) and 0.0 <= float(generic.min()) and float(generic.max()) <= 1.0
    method.prepare(loader(images(1, 1)))
    out = method.train().training_step({"image": images(1, 1)})
    assert float(out["loss_penalty"]) > 0.0
    with pytest.raises(ConfigError, match="model.penalty_dir"):
        EfficientAdMethod(tiny(1, penalty_dir=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        EfficientAdMethod(tiny(1, penalty_dir=str(tmp_path / "empty")))


def test_state_dict_round_trip_and_onnx_parity(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny(3)
    method = EfficientAdMethod(model)
    method.prepare(loader(images(2, 3)))
    method.finalize(loader(images(2, 3, seed=2)))
    copy = EfficientAdModel(model.config)
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    x = images(2, 3, seed=4)
    with torch.no_grad():
        a, b = model(x), copy(x)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)
    path = tmp_path / "efficient_ad.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["pred_score", "anomaly_map"])
    score, amap = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    assert abs(score - a.pred_score.numpy()).max() < 1e-4
    assert abs(amap - a.anomaly_map.numpy()).max() < 1e-4


def test_tiny_fit_scores_a_defect_above_normal_images() -> None:
    model = tiny(1)
    method = EfficientAdMethod(model)
    g = torch.Generator().manual_seed(0)
    normal = 0.5 + 0.05 * torch.rand(6, 1, SIZE, SIZE, generator=g)  # a flat panel with sensor noise
    method.prepare(loader(normal[:4]))
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    method.train()
    for step in range(8):
        loss = method.training_step({"image": normal[(step % 2) * 2:(step % 2) * 2 + 2]})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.finalize(loader(normal[:4]))
    test = normal[4:].clone()
    test[1, :, 20:36, 20:36] = 1.0  # a bright square defect
    model.eval()
    with torch.no_grad():
        out = model(test)
    assert float(out.pred_score[1]) > 10 * max(float(out.pred_score[0]), 0.1)
    defect, background = out.anomaly_map[1, 0, 20:36, 20:36].mean(), out.anomaly_map[1, 0, :, 48:].mean()
    assert float(defect) > float(background)


def test_backbone_teacher_is_the_frozen_backbone_targets_and_needs_no_distillation(tmp_path: Path) -> None:
    from fabml.anomaly.models.efficient_ad import BackboneTeacher

    model = tiny(teacher="backbone", backbone="resnet18", layers=[2, 3])
    assert isinstance(model.teacher, BackboneTeacher) and bool(model.teacher_ready)
    assert model.pretrained_files() == []  # the extractor gets the backbone's weights in the weights step
    x = images(4, 1)
    with torch.no_grad():
        expected = backbone_targets(model.teacher.extractor, x, 8, model.grid)
    torch.testing.assert_close(model.teacher(x), expected)
    method = EfficientAdMethod(model)
    stats = method.prepare(loader(x))
    assert "distill_steps" not in stats and stats["teacher_stats_images"] == 4.0
    # the teacher's output is standardised with its own channel statistics over the training images
    z = model.teacher_features(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4, rtol=0)
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.teacher.parameters())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    method.train()
    assert not model.teacher.training
    loss = method.training_step({"image": x})["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.teacher.state_dict().items())
    method.finalize(loader(images(3, 1, seed=5)))
    model.eval()
    clone = tiny(teacher="backbone", backbone="resnet18", layers=[2, 3]).eval()
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone(x).anomaly_map, model(x).anomaly_map)
    with pytest.raises(ConfigError, match="model.teacher='vit': choose one of pdn, backbone"):
        tiny(teacher="vit")
