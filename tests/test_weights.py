"""The weights step: models build with random weights and touch no file; pretrained weights are loaded
by fabml.weights into a built model; reloading a fitted model searches for nothing."""

from __future__ import annotations

import builtins
import os
import pathlib
from pathlib import Path

import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before timm)
import fabml.weights as weights_module
import timm
from fabml.anomaly.config import AnomalyConfig
from fabml.anomaly.method import create_anomaly_method
from fabml.anomaly.models import create_anomaly_model
from fabml.anomaly.models.efficient_ad import PatchDescriptionNetwork
from fabml.anomaly.models.registry import MODEL_MODULES, import_all_models
from fabml.anomaly.runs import FittedModel, load_fitted, save_fitted
from fabml.anomaly.threshold import GradeConfig, ScoreNormalizer
from fabml.backbones import FeatureExtractor
from fabml.errors import ConfigError
from fabml.weights import load_pretrained

SIZE = 64
SMALL = {  # per model: settings that keep it small on a CPU
    "patchcore": {"backbone": "resnet18", "layers": [1, 2]},
    "padim": {"backbone": "resnet18", "layers": [1, 2], "n_features": 16},
    "stfpm": {"backbone": "resnet18", "layers": [1, 2]},
    "fastflow": {"backbone": "resnet18", "layers": [1, 2], "flow_steps": 2},
    "draem": {"base_width": 8, "disc_base_width": 8},
    "draem_severity": {"base_width": 8, "disc_base_width": 8, "severity_width": 4},
    "efficient_ad": {"out_channels": 8, "width_scale": 1 / 16},
    "autoencoder": {},
    "reference": {"backbone": "resnet18", "layers": [1, 2]},
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABML_WEIGHTS_DIR", raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _no_file_access(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a model could look for or read a weights file raises."""

    def boom(*args, **kwargs):
        raise AssertionError(f"file access while building a model: {args[:2]}")

    for name in ("is_file", "is_dir", "exists", "glob", "rglob", "iterdir", "open", "read_bytes", "stat"):
        monkeypatch.setattr(pathlib.Path, name, boom)
    monkeypatch.setattr(builtins, "open", boom)
    monkeypatch.setattr(os, "scandir", boom)
    monkeypatch.setattr(torch, "load", boom)
    for name in ("resolve_weights", "read_state_dict", "package_weights", "find_pretrained_file", "load_pretrained"):
        monkeypatch.setattr(weights_module, name, boom)


def _save_resnet18(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return state


@pytest.mark.parametrize("name", sorted(MODEL_MODULES))
def test_building_a_pretrained_model_touches_no_file(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import_all_models()
    create_anomaly_model(name, image_size=(SIZE, SIZE), in_chans=1, pretrained=False, **SMALL[name])  # imports
    _no_file_access(monkeypatch)
    settings = {"weights": "/no/such/file.pth", "weights_dir": "/no/such/folder", "pretrained": True}
    if name == "efficient_ad":
        settings["teacher_weights"] = "/no/such/teacher.pth"
    model = create_anomaly_model(name, image_size=(SIZE, SIZE), in_chans=1, **settings, **SMALL[name])
    assert model.image_size == (SIZE, SIZE)


def test_weights_step_fills_the_backbones_that_ask(tmp_path: Path) -> None:
    state = _save_resnet18(tmp_path / "weights")
    stfpm = create_anomaly_model("stfpm", image_size=(SIZE, SIZE), in_chans=1, weights_dir=str(tmp_path / "weights"),
                                 **SMALL["stfpm"])
    student_before = {k: v.clone() for k, v in stfpm.student.state_dict().items()}
    reports = load_pretrained(stfpm)
    assert [r.path.name for r in reports] == ["resnet18-f37072fd.pth"]  # the teacher only
    assert torch.equal(stfpm.teacher.model.state_dict()["conv1.weight"], state["conv1.weight"])
    for key, value in stfpm.student.state_dict().items():  # the student stays random
        assert torch.equal(value, student_before[key])
    draem = create_anomaly_model("draem", image_size=(SIZE, SIZE), pretrained=True, weights_dir=str(tmp_path),
                                 **SMALL["draem"])
    assert load_pretrained(draem) == []  # no pretrained part
    random = create_anomaly_model("padim", image_size=(SIZE, SIZE), pretrained=False, **SMALL["padim"])
    assert load_pretrained(random) == []


def test_folded_gray_backbone_loads_the_same_weights_as_repeat(tmp_path: Path) -> None:
    _save_resnet18(tmp_path)
    repeat = FeatureExtractor("resnet18", [1, 2], in_chans=1, channel_mode="repeat")
    fold = FeatureExtractor("resnet18", [1, 2], in_chans=1, channel_mode="fold")
    for extractor in (repeat, fold):
        load_pretrained(extractor, weights_dir=str(tmp_path))
    gray = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(fold(gray), repeat(gray)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_missing_weights_is_one_line_naming_file_and_setting(tmp_path: Path) -> None:
    model = create_anomaly_model("patchcore", image_size=(SIZE, SIZE), in_chans=1,
                                 weights=str(tmp_path / "absent.pth"), **SMALL["patchcore"])
    with pytest.raises(ConfigError) as err:
        create_anomaly_method("patchcore", model)  # a new fit runs the weights step
    assert str(err.value).count("\n") == 0
    assert "absent.pth" in str(err.value) and "model.weights" in str(err.value)
    folder = tmp_path / "empty"
    folder.mkdir()
    model = create_anomaly_model("padim", image_size=(SIZE, SIZE), weights_dir=str(folder), **SMALL["padim"])
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth.*model\.weights_dir"):
        create_anomaly_method("padim", model)


def test_efficient_ad_teacher_comes_from_the_weights_step(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = PatchDescriptionNetwork("small", 1, 8, width_scale=1 / 16)
    (tmp_path / "efficientad_pretrained_weights").mkdir()
    path = tmp_path / "efficientad_pretrained_weights" / "pretrained_teacher_small.pth"
    torch.save(source.state_dict(), path)
    model = create_anomaly_model("efficient_ad", image_size=(SIZE, SIZE), in_chans=1, weights_dir=str(tmp_path),
                                 **SMALL["efficient_ad"])
    assert not bool(model.teacher_ready)  # built: nothing read yet
    reports = load_pretrained(model)
    assert [r.path for r in reports] == [path] and bool(model.teacher_ready)
    for key, value in source.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[key], value)


def test_loading_a_fitted_model_searches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_resnet18(tmp_path / "weights")
    settings = {"image_size": [SIZE, SIZE], "in_chans": 1, "weights_dir": str(tmp_path / "weights"),
                **SMALL["stfpm"]}
    model = create_anomaly_model("stfpm", **settings)
    create_anomaly_method("stfpm", model)  # a new fit: pretrained teacher loaded
    cfg = AnomalyConfig(model={"name": "stfpm", **SMALL["stfpm"]})
    fitted = FittedModel("stfpm", model.eval(), ScoreNormalizer(0.5, 0.0, 1.0, 0.5, 0.0, 1.0), GradeConfig(), cfg,
                         settings, {})
    save_fitted(tmp_path / "run", fitted)
    (tmp_path / "weights" / "resnet18-f37072fd.pth").unlink()  # the pretrained file is gone

    def boom(*args, **kwargs):
        raise AssertionError("the weights step ran while loading a fitted model")

    for name in ("resolve_weights", "read_state_dict", "package_weights", "find_pretrained_file", "load_pretrained",
                 "load_backbone_weights"):
        monkeypatch.setattr(weights_module, name, boom)
    monkeypatch.setattr(pathlib.Path, "glob", boom)
    loaded = load_fitted(tmp_path / "run")
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).anomaly_map, model(x).anomaly_map)
