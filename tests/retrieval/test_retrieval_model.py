"""Retrieval model: embedding shape and norm, normalisation inside, the ArcFace logit by hand, fp32 weights."""

from __future__ import annotations

import math

import pytest
import torch

from fabml.errors import ConfigError, DataError
from fabml.retrieval.arcface import ArcFaceHead, arcface_logits
from fabml.retrieval.config import RetrievalModelConfig
from fabml.retrieval.model import PooledBackbone, RetrievalModel
from fabml.weights import load_pretrained

TINY = RetrievalModelConfig(backbone="resnet18", pretrained=False, embedding_dim=16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_embeddings_have_the_configured_size_and_unit_norm() -> None:
    torch.manual_seed(0)
    model = RetrievalModel(TINY, num_classes=3).eval()
    images = torch.rand(5, 3, 32, 32)
    emb = model.embed(images)
    assert emb.shape == (5, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.equal(model(images), emb)
    assert model.backbone.num_features == 512 and model.head.weight.shape == (3, 16)
    # the model sees raw [0, 1] images and normalises them with the backbone's ImageNet statistics
    raw = model.backbone.model((images - model.backbone.mean) / model.backbone.std)
    assert torch.allclose(model.backbone(images), raw)
    assert torch.allclose(model.backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_efficientnet_lite_inputs_are_mapped_to_minus_one_one_and_pretrained_weights_load() -> None:
    cfg = RetrievalModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=8)
    model = RetrievalModel(cfg, num_classes=2)
    assert torch.equal(model.backbone.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(model.backbone.std.flatten(), torch.full((3,), 0.5))
    before = model.backbone.model.conv_head.weight.detach().clone()
    reports = load_pretrained(model)  # the bundled EfficientNet-Lite0 weights, conv_head included
    assert len(reports) == 1 and not reports[0].skipped
    assert not torch.equal(model.backbone.model.conv_head.weight, before)
    assert model.backbone.num_features == 1280
    assert all(p.requires_grad for p in model.parameters())  # trainable: the method freezes by epoch


def test_auto_backbone_must_be_resolved_and_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="resolve_backbone"):
        RetrievalModel(RetrievalModelConfig(backbone="auto"), 3)
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet_18'"):
        PooledBackbone("resnet_18")
    with pytest.raises(DataError, match=r"expects images \[B, 3, H, W\]"):
        RetrievalModel(TINY, 3).eval().embed(torch.rand(2, 1, 32, 32))


def test_arcface_logit_matches_the_hand_computed_value() -> None:
    s, m = 2.0, 0.5
    # embedding at angle 0; class 0 at angle 0.3, class 1 at angle 1.2, class 2 at angle 3.0 (past pi - m)
    angles = torch.tensor([0.3, 1.2, 3.0])
    head = ArcFaceHead(2, 3, s=s, m=m)
    with torch.no_grad():
        head.weight.copy_(torch.stack([torch.cos(angles), torch.sin(angles)], 1) * torch.tensor([[3.0], [0.5], [7.0]]))
    x = torch.tensor([[4.0, 0.0], [4.0, 0.0]])  # not unit length: the head normalises both sides
    logits = head(x, torch.tensor([0, 2]))
    # row 0, target 0: s cos(0.3 + 0.5); the others s cos(theta)
    assert logits[0].tolist() == pytest.approx([s * math.cos(0.8), s * math.cos(1.2), s * math.cos(3.0)], abs=1e-5)
    # row 1, target 2: theta + m > pi, so the fallback s (cos(theta) - m sin(m))
    assert logits[1, 2].item() == pytest.approx(s * (math.cos(3.0) - m * math.sin(m)), abs=1e-5)
    assert logits[1, :2].tolist() == pytest.approx([s * math.cos(0.3), s * math.cos(1.2)], abs=1e-5)
    head.margin = 0.0  # no margin: the plain scaled cosine
    assert torch.allclose(head(x, torch.tensor([0, 2])), s * head.cosine(x))


def test_arcface_gradient_is_finite_at_a_perfect_match_and_margin_and_labels_are_checked() -> None:
    cosine = torch.tensor([[1.0, -1.0]], requires_grad=True)
    arcface_logits(cosine, torch.tensor([0]), 64.0, 0.5).sum().backward()
    assert torch.isfinite(cosine.grad).all()
    head = ArcFaceHead(4, 3)
    with pytest.raises(ConfigError, match=r"margin 2.0 must be in \[0, pi/2\]"):
        head.margin = 2.0
    with pytest.raises(DataError, match=r"training labels must lie in \[0, 3\), got -1..1"):
        head(torch.rand(2, 4), torch.tensor([-1, 1]))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ArcFaceHead(4, 1)


def test_saved_weights_are_fp32_whatever_the_model_dtype() -> None:
    torch.manual_seed(0)
    model = RetrievalModel(TINY, num_classes=3)
    reference = model.fp32_state_dict()
    state = model.to(torch.bfloat16).fp32_state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert state["neck.2.num_batches_tracked"].dtype == torch.int64
    fresh = RetrievalModel(TINY, num_classes=3)
    fresh.load_state_dict(state)  # a bf16-trained model loads into an fp32 one
    assert torch.allclose(fresh.head.weight, reference["head.weight"], atol=1e-2)
