"""Retrieval config: the seed's defaults survive a partial train: section; the shipped presets load."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.config import to_dict
from fabml.errors import ConfigError
from fabml.retrieval.config import RetrievalConfig, resolve_backbone, retrieval_config
from fabml.retrieval.hardware import explicit_train_keys

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_a_partial_train_section_keeps_the_other_seed_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n", encoding="utf-8")
    cfg = retrieval_config(path, ["sampler.num_classes_per_batch=8"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.weight_decay, cfg.train.early_stop_patience) == (1e-3, 50, 1e-4, 10)
    assert (cfg.train.monitor, cfg.train.monitor_mode, cfg.train.t0_epochs, cfg.train.t_mult) == ("val_recall_at_1", "max", 10, 2)
    assert cfg.sampler.num_classes_per_batch == 8 and cfg.sampler.samples_per_class == 4
    m = cfg.model
    assert (m.embedding_dim, m.arcface_s, m.arcface_m_warmup, m.arcface_m_finetune, m.warmup_epochs) == (512, 64.0, 0.0, 0.5, 5)
    with pytest.raises(ConfigError, match="unknown setting 'model.arcface_m'"):
        retrieval_config(None, ["model.arcface_m=0.3"])


def test_the_default_preset_is_the_seed_and_leaves_the_hardware_settings_free() -> None:
    cfg = retrieval_config(CONFIGS / "retrieval_default.yaml")
    expected = to_dict(RetrievalConfig())
    expected["model"]["backbone"] = "auto"
    assert to_dict(cfg) == expected
    assert not {"precision", "num_workers", "grad_accum_steps"} & explicit_train_keys(CONFIGS / "retrieval_default.yaml", [])
    assert resolve_backbone(cfg.model) in ("tf_efficientnetv2_l", "tf_efficientnet_lite0")


def test_the_cpu_preset_uses_the_bundled_backbone_at_224_or_less() -> None:
    cfg = retrieval_config(CONFIGS / "retrieval_cpu.yaml")
    assert cfg.model.backbone == "tf_efficientnet_lite0" and cfg.data.image_size <= 224
    assert cfg.train.max_minutes == 30 and cfg.train.weight_decay == 1e-4


def test_auto_backbone_is_the_seed_one_only_when_its_weights_are_found(tmp_path: Path) -> None:
    cfg = RetrievalConfig().model
    cfg.backbone, cfg.weights_dir = "auto", str(tmp_path)
    assert resolve_backbone(cfg) == "tf_efficientnet_lite0"
    (tmp_path / "tf_efficientnetv2_l.safetensors").write_bytes(b"")
    assert resolve_backbone(cfg) == "tf_efficientnetv2_l"
    cfg.backbone = "resnet50"
    assert resolve_backbone(cfg) == "resnet50"
