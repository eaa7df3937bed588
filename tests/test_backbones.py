"""Backbones: shapes, offline weight resolution and key mapping (fabml.weights), 1-channel modes, freezing, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fabml  # noqa: F401  (torchvision shim before timm)
import timm
from fabml.backbones import FeatureExtractor, create_backbone
from fabml.errors import ConfigError, DataError
from fabml.weights import (
    load_backbone_weights,
    load_pretrained,
    load_pretrained_backbone,
    read_state_dict,
    resolve_weights,
)

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery"
IMAGENET_MEAN = (0.485, 0.456, 0.406)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine's cores are shared: one thread avoids oversubscription stalls."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    monkeypatch.delenv("FABML_WEIGHTS_DIR", raising=False)


def _randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Same keys and shapes, non-trivial values (positive running variances)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


def test_random_resnet18_shapes():
    fe = FeatureExtractor("resnet18", [1, 2, 3], pretrained=False)
    assert fe.name == "resnet18"
    assert fe.channels == [64, 128, 256] and fe.reductions == [4, 8, 16]
    feats = fe(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert torch.allclose(fe.mean.flatten(), torch.tensor(IMAGENET_MEAN))


def test_random_lite0_shapes():
    fe = FeatureExtractor("tf_efficientnet_lite0", [0, 1, 2, 3, 4], pretrained=False)
    assert fe.channels == [16, 24, 40, 112, 320] and fe.reductions == [2, 4, 8, 16, 32]
    feats = fe(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    half = torch.full((3,), 0.5)  # the lite weights take [-1, 1]
    assert torch.equal(fe.mean.flatten(), half) and torch.equal(fe.std.flatten(), half)


def test_lite0_package_weights_load_every_tensor_in_order():
    path = resolve_weights("tf_efficientnet_lite0")
    assert path.name == "efficientnet-lite0-57934424.pth"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    report = load_backbone_weights(model, path, "tf_efficientnet_lite0")
    assert report.mode == "order" and report.skipped == ()
    file_tensors = list(torch.load(path, map_location="cpu", weights_only=True).values())
    model_tensors = list(model.state_dict().values())
    assert len(file_tensors) == len(model_tensors) == 296
    assert all(torch.equal(a, b) for a, b in zip(file_tensors, model_tensors))

    pretrained = FeatureExtractor("tf_efficientnet_lite0", [2], pretrained=True)
    assert [r.path for r in load_pretrained(pretrained)] == [path]
    full = model.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in pretrained.model.state_dict().items())
    random = FeatureExtractor("tf_efficientnet_lite0", [2], pretrained=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = pretrained(x)[0], random(x)[0]
    assert torch.equal(a, pretrained(x)[0])  # eval mode: deterministic
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.skipif(not GROCERY.is_dir(), reason="shared grocery photos not present")
def test_lite0_pretrained_classifier_recognises_a_real_banana():
    from PIL import Image

    model = create_backbone("tf_efficientnet_lite0")
    load_pretrained_backbone(model)  # the architecture comes from the timm model
    model.eval()
    image = Image.open(GROCERY / "val/Fruit/Banana/Banana_001.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    x = (x - 0.5) / 0.5  # the lite weights take [-1, 1]
    with torch.no_grad():
        logits = model(torch.cat([x, x.flip(-1)]))
    assert logits.argmax(1).tolist() == [954, 954]  # ImageNet class 954 = banana


@pytest.mark.parametrize("file_name", ["resnet18-f37072fd.pth", "resnet18.safetensors", "resnet18-0000.pth"])
def test_torchvision_style_resnet18_from_weights_folder(tmp_path, monkeypatch, file_name):
    source = timm.create_model("resnet18", pretrained=False)
    # torchvision ResNet keys equal timm's; old torchvision files carry no num_batches_tracked
    state = {k: v for k, v in _randomised(source.state_dict()).items() if "num_batches" not in k}
    if file_name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / file_name))
    elif file_name == "resnet18-0000.pth":  # a training checkpoint saved from DDP
        wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}
        torch.save(wrapped, tmp_path / file_name)
    else:
        torch.save(state, tmp_path / file_name)
    monkeypatch.setenv("FABML_WEIGHTS_DIR", str(tmp_path))
    fe = FeatureExtractor("resnet18", [1, 2], in_chans=1)
    assert load_pretrained(fe)[0].path == tmp_path / file_name
    loaded = fe.model.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer2.1.bn2.running_var"], state["layer2.1.bn2.running_var"])
    assert "layer3.0.conv1.weight" not in loaded  # features_only truncates after the last layer


def test_torchvision_efficientnet_keys_map_in_order(tmp_path):
    import torchvision

    tv = torchvision.models.efficientnet_b0(weights=None)
    tv.load_state_dict(_randomised(tv.state_dict()))
    tv.eval()
    torch.save(tv.state_dict(), tmp_path / "efficientnet_b0_rwightman-7f5810bc.pth")
    assert next(iter(tv.state_dict())) == "features.0.0.weight"

    model = create_backbone("efficientnet_b0")
    load_pretrained_backbone(model, weights_dir=str(tmp_path))
    model.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = tv(x), model(x)
    assert expected.abs().max() > 1e-2  # a non-trivial function
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    fe = FeatureExtractor("efficientnet_b0", [1, 3])
    load_pretrained(fe, weights=str(next(tmp_path.glob("*.pth"))))
    assert torch.equal(fe.model.state_dict()["conv_stem.weight"], tv.state_dict()["features.0.0.weight"])


def test_classifier_head_of_other_size_is_skipped_and_first_conv_adapted(tmp_path):
    state = _randomised(timm.create_model("resnet18", pretrained=False).state_dict())
    torch.save(state, tmp_path / "r18.pth")
    model = create_backbone("resnet18", num_classes=5, in_chans=1)
    load_pretrained_backbone(model, "resnet18", weights=str(tmp_path / "r18.pth"))
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    report = load_backbone_weights(model, tmp_path / "r18.pth", "resnet18")
    assert report.mode == "name" and set(report.skipped) == {"fc.weight", "fc.bias"}


def test_file_of_another_architecture_is_a_clear_error(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(state, tmp_path / "resnet34-b627a593.pth")
    with pytest.raises(ConfigError, match=r"resnet34-b627a593\.pth does not fit the backbone: model tensor "):
        load_pretrained(FeatureExtractor("resnet34", [1]), weights_dir=str(tmp_path))


def test_missing_weights_errors_name_file_and_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("FABML_WEIGHTS_DIR", str(tmp_path))
    extractor = FeatureExtractor("wide_resnet50_2", [1, 2])  # building looks for nothing
    with pytest.raises(ConfigError) as err:
        load_pretrained(extractor)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'wide_resnet50_2'", "wide_resnet50_2-95faca4d.pth", str(tmp_path), "model.weights_dir",
                 "FABML_WEIGHTS_DIR", "model.weights=PATH", "model.pretrained=false"):
        assert part in msg
    with pytest.raises(ConfigError, match=r"weights file not found: .*nope\.pth \(setting model\.weights\)"):
        resolve_weights("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match=r"folder not found: .*absent \(setting model\.weights_dir\)"):
        resolve_weights("resnet18", weights_dir=str(tmp_path / "absent"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read weights file .*junk\.pth"):
        read_state_dict(tmp_path / "junk.pth")


def test_resolution_order(tmp_path, monkeypatch):
    env, setting = tmp_path / "env", tmp_path / "setting"
    env.mkdir(), setting.mkdir()
    for folder in (env, setting):
        (folder / "efficientnet-lite0-57934424.pth").write_bytes(b"")
    (tmp_path / "explicit.pth").write_bytes(b"")
    monkeypatch.setenv("FABML_WEIGHTS_DIR", str(env))
    name = "tf_efficientnet_lite0"
    assert resolve_weights(name, weights=str(tmp_path / "explicit.pth")) == tmp_path / "explicit.pth"
    assert resolve_weights(name, weights_dir=str(setting)).parent == setting
    assert resolve_weights(name).parent == env
    monkeypatch.delenv("FABML_WEIGHTS_DIR")
    assert resolve_weights(name).name == "efficientnet-lite0-57934424.pth"  # the bundled package


@pytest.mark.parametrize(("name", "layers"), [("resnet18", [1, 2]), ("tf_efficientnet_lite0", [1, 3])])
def test_fold_equals_repeat_for_gray_images(name, layers):
    repeat = FeatureExtractor(name, layers, in_chans=1, pretrained=name != "resnet18", channel_mode="repeat")
    load_pretrained(repeat)
    fold = FeatureExtractor(name, layers, in_chans=1, pretrained=False, channel_mode="fold")
    fold.load_state_dict(repeat.state_dict())  # checkpoints are interchangeable between modes
    colour = FeatureExtractor(name, layers, in_chans=3, pretrained=False)
    colour.load_state_dict(repeat.state_dict())
    gray = torch.rand(2, 1, 48, 64, generator=torch.Generator().manual_seed(2))
    for a, b, c in zip(fold(gray), repeat(gray), colour(gray.repeat(1, 3, 1, 1))):
        torch.testing.assert_close(b, c)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_frozen_extractor_stays_in_eval_mode():
    fe = FeatureExtractor("resnet18", [1], pretrained=False)
    parent = torch.nn.Sequential(fe)
    parent.train()
    assert not any(m.training for m in fe.modules())
    assert not any(p.requires_grad for p in fe.parameters())
    before = fe.model.bn1.running_mean.clone()
    fe(torch.rand(2, 3, 32, 32))
    assert torch.equal(before, fe.model.bn1.running_mean)

    fe.unfreeze().train()
    assert all(m.training for m in fe.modules()) and all(p.requires_grad for p in fe.parameters())
    fe(torch.rand(2, 3, 32, 32))
    assert not torch.equal(before, fe.model.bn1.running_mean)
    fe.freeze()
    assert fe.frozen and not fe.training


def test_bad_input_and_settings():
    fe = FeatureExtractor("resnet18", [1], in_chans=1, pretrained=False)
    with pytest.raises(DataError, match=r"expects images \[B, 1, H, W\], got \[2, 3, 32, 32\]"):
        fe(torch.rand(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="model.channel_mode='tile'"):
        FeatureExtractor("resnet18", [1], in_chans=1, pretrained=False, channel_mode="tile")
    with pytest.raises(ConfigError, match=r"model.layers=\[9\]"):
        FeatureExtractor("resnet18", [9], pretrained=False)
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet_nope'"):
        FeatureExtractor("resnet_nope", [1], pretrained=False)


@pytest.mark.parametrize(("in_chans", "mode"), [(3, "repeat"), (1, "fold")])
def test_onnx_export_matches_torch(tmp_path, in_chans, mode):
    ort = pytest.importorskip("onnxruntime")
    fe = FeatureExtractor("resnet18", [1, 2], in_chans=in_chans, pretrained=False, channel_mode=mode)
    fe.model.load_state_dict(_randomised(fe.model.state_dict()))
    x = torch.rand(2, in_chans, 64, 64, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "fe.onnx"
    torch.onnx.export(fe, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["f1", "f2"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = fe(x)
    assert len(outputs) == 2
    for got, want in zip(outputs, expected):
        assert np.abs(got - want.numpy()).max() < 1e-4


def test_feature_extractor_skips_blocks_after_its_last_layer_with_the_same_features() -> None:
    import timm

    extractor = FeatureExtractor("tf_efficientnet_lite0", [2, 3], pretrained=False)
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3)).eval()
    assert list(extractor.model.state_dict()) == list(full.state_dict())  # weights load as before
    full.load_state_dict(extractor.model.state_dict())
    ran: list[int] = []
    for i, block in enumerate(extractor.model.blocks._modules.values()):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = extractor(x)
        theirs = full((x - extractor.mean) / extractor.std)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert ran == [0, 1, 2, 3, 4]  # stage 3 (112 channels) is block 4; blocks 5 and 6 never run
