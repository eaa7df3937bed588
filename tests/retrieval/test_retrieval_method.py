"""Retrieval training: margin schedule, frozen warm-up, parameter groups, and exact resume through the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from fabml.config import to_dict
from fabml.engine.trainer import Trainer
from fabml.errors import ConfigError, TrainingError
from fabml.retrieval.config import RetrievalConfig, RetrievalModelConfig, RetrievalTrainConfig
from fabml.retrieval.method import RetrievalMethod, build_method, margin_at


class SimulatedCrash(RuntimeError):
    pass


class Images(Dataset):
    """4 classes x 8 random 32x32 images, each class with its own mean colour (learnable)."""

    def __init__(self, n_classes: int = 4, per_class: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n_classes).repeat_interleave(per_class)
        colours = torch.rand(n_classes, 3, 1, 1, generator=g)
        noise = torch.rand(len(self.labels), 3, 32, 32, generator=g)
        self.images = (0.5 * colours[self.labels] + 0.5 * noise).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}


class Recording(RetrievalMethod):
    """Keeps a copy of the weights after each epoch and can crash at the N-th training step."""

    def __init__(self, *args: Any, crash_at_call: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_at_call, self.calls, self.snapshots = crash_at_call, 0, []

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise SimulatedCrash(f"crash at step call {self.calls}")
        return super().training_step(batch)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return {}


def tiny_config(**model: Any) -> RetrievalConfig:
    base = dict(backbone="test_resnet", pretrained=False, embedding_dim=16, arcface_s=16.0, warmup_epochs=2)
    base.update(model)
    train = RetrievalTrainConfig(epochs=4, batch_size=8, lr=1e-3, device="cpu", num_workers=0, precision="fp32",
                                 monitor="loss", monitor_mode="min", early_stop_patience=0, auto_resume=False)
    return RetrievalConfig(model=RetrievalModelConfig(**base), train=train)


def make(cfg: RetrievalConfig, **kwargs: Any) -> Recording:
    torch.manual_seed(0)
    method = build_method(cfg, num_classes=4)
    return Recording(method.model, cfg, **kwargs)


def fit(method: RetrievalMethod, cfg: RetrievalConfig, run: Path, resume: bool = False):
    trainer = Trainer(method, cfg.train, run, Images(), job_config=to_dict(cfg))
    return trainer, trainer.fit(resume=resume)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_margin_schedule_steps_or_ramps_after_the_warm_up() -> None:
    step = RetrievalModelConfig(warmup_epochs=2, arcface_m_warmup=0.0, arcface_m_finetune=0.5)
    assert [margin_at(e, step) for e in range(5)] == [0.0, 0.0, 0.5, 0.5, 0.5]
    ramp = RetrievalModelConfig(warmup_epochs=2, arcface_m_warmup=0.1, arcface_m_finetune=0.5, margin_ramp_epochs=4)
    assert [margin_at(e, ramp) for e in range(8)] == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5])
    assert [margin_at(e, RetrievalModelConfig(warmup_epochs=0)) for e in range(2)] == [0.5, 0.5]
    method = build_method(tiny_config(), 4)
    assert method.frozen_prefixes(1) == {"model.backbone"} and method.frozen_prefixes(2) == set()
    method.on_epoch_start(3)
    assert method.model.head.margin == 0.5
    with pytest.raises(ConfigError, match="model.margin_ramp_epochs=-1 must be >= 0"):
        build_method(tiny_config(margin_ramp_epochs=-1), 4)


def test_param_groups_exclude_biases_and_norms_from_decay_and_scale_the_backbone_lr() -> None:
    method = build_method(tiny_config(backbone_lr_scale=0.1), 4)
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr_scale"] == groups["backbone_no_decay"]["lr_scale"] == 0.1
    assert groups["head"]["lr_scale"] == 1.0
    assert groups["backbone_no_decay"]["weight_decay"] == groups["head_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for name in ("backbone_no_decay", "head_no_decay") for p in groups[name]["params"])
    assert {id(p) for g in groups.values() for p in g["params"]} == {id(p) for p in method.parameters()}
    assert any(p is method.model.head.weight for p in groups["head"]["params"])


def test_training_step_returns_loss_accuracy_and_margin_and_fp32_logits_under_bf16_autocast() -> None:
    method = build_method(tiny_config(), 4)
    data = Images()
    batch = {"image": data.images[:8], "label": data.labels[:8]}
    method.on_epoch_start(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.training_step(batch)
    assert set(out) == {"loss", "accuracy", "margin"} and out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"]) and 0.0 <= out["accuracy"].item() <= 1.0 and out["margin"].item() == 0.5
    out["loss"].backward()
    assert all(p.dtype == torch.float32 for p in method.parameters())


def test_backbone_is_frozen_in_the_warm_up_then_trained_and_the_margin_is_logged(tmp_path: Path) -> None:
    cfg = tiny_config()
    method = make(cfg)
    init = {k: v.detach().clone() for k, v in method.model.state_dict().items()}
    _, result = fit(method, cfg, tmp_path / "run")
    backbone = [k for k in init if k.startswith("backbone.")]
    neck = [k for k in init if k.startswith("neck.1.") or k == "head.weight"]
    for epoch in (0, 1):  # weights and BatchNorm statistics untouched, no weight decay either
        assert all(torch.equal(method.snapshots[epoch][k], init[k]) for k in backbone)
        assert not any(torch.equal(method.snapshots[epoch][k], init[k]) for k in neck)
    assert not torch.equal(method.snapshots[2]["backbone.model.conv1.0.weight"], init["backbone.model.conv1.0.weight"])
    assert not torch.equal(method.snapshots[2]["backbone.model.conv1.1.running_mean"], init["backbone.model.conv1.1.running_mean"])
    assert [row["margin"] for row in result.history] == pytest.approx([0.0, 0.0, 0.5, 0.5])
    assert result.history[3]["loss"] < result.history[2]["loss"] and result.history[3]["accuracy"] >= 0.75  # it learns
    assert all(p.requires_grad for p in method.parameters())


@pytest.mark.parametrize("crash_at_call", [6, 14], ids=["mid-warm-up", "mid-fine-tune"])
def test_resume_after_a_crash_equals_a_straight_run(tmp_path: Path, crash_at_call: int) -> None:
    cfg = tiny_config()  # 32 images / batch 8 = 4 steps per epoch; call 6 is in epoch 2 (warm-up), 14 in epoch 4
    straight = make(cfg)
    _, reference = fit(straight, cfg, tmp_path / "straight")
    with pytest.raises(SimulatedCrash):
        fit(make(cfg, crash_at_call=crash_at_call), cfg, tmp_path / "crashed")
    torch.manual_seed(123)  # the resume must not depend on the process's random state
    resumed = make(cfg)
    _, result = fit(resumed, cfg, tmp_path / "crashed", resume=True)
    final, expected = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert resumed.model.head.margin == straight.model.head.margin == 0.5
    assert [r["loss"] for r in result.history] == [r["loss"] for r in reference.history]
    assert [r["margin"] for r in result.history] == [0.0, 0.0, 0.5, 0.5]


def test_cached_backbone_features_give_the_same_warm_up_step_and_are_refused_after_it() -> None:
    method = build_method(tiny_config(), 4)
    data = Images()
    images, labels = data.images[:8], data.labels[:8]
    method.model.backbone.freeze()  # what the trainer's warm-up does: no gradients, eval mode
    method.on_epoch_start(0)
    method.train()
    with torch.no_grad():
        features = method.model.backbone(images)
    from_images = method.training_step({"image": images, "label": labels})
    from_features = method.training_step({"features": features, "label": labels})
    assert torch.allclose(from_images["loss"], from_features["loss"], atol=1e-6)
    method.model.backbone.unfreeze()
    with pytest.raises(TrainingError, match="frozen warm-up epochs only"):
        method.training_step({"features": features, "label": labels})
