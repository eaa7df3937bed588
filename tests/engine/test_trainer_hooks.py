"""What the next jobs need from the trainer: param groups, freezing, stages, no-grad work, auto-resume."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import SimulatedCrash, ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.config import to_dict  # noqa: E402
from fabml.engine.checkpoint import load_checkpoint  # noqa: E402
from fabml.engine.param_groups import decay_groups  # noqa: E402
from fabml.engine.schedules import CosineRestarts  # noqa: E402
from fabml.engine.train_config import StageConfig  # noqa: E402
from fabml.engine.trainer import MEASURED_KEYS, Trainer  # noqa: E402
from fabml.errors import ConfigError, TrainingError  # noqa: E402


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in history]


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _assert_identical(ref: Trainer, got: Trainer) -> None:
    for key, value in ref.method.state_dict().items():
        assert torch.equal(value, got.method.state_dict()[key]), key
    ref_opt, got_opt = ref.optimizer.state_dict(), got.optimizer.state_dict()
    assert ref_opt["param_groups"] == got_opt["param_groups"]
    assert ref_opt["state"].keys() == got_opt["state"].keys()
    for index, slots in ref_opt["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, got_opt["state"][index][name]), (index, name)


# ------------------------------------------------------------------ param groups
class ZeroGradMethod(ToyMethod):
    """Loss with a zero gradient for every parameter: SGD then only applies weight decay,
    ``p <- p * (1 - lr_group * wd_group)`` per step, which shows each group's lr and decay."""

    def param_groups(self) -> list[dict[str, Any]]:
        first = decay_groups(self.net[0].named_parameters(), lr_scale=0.5, name="first")
        rest = decay_groups([(n, p) for n, p in self.net.named_parameters() if not n.startswith("0.")], name="rest")
        return first + rest

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        out = super().training_step(batch)
        zero = sum(p.sum() for p in self.net.parameters()) * 0.0
        return {"loss": out["loss"].detach() + zero}


def test_decay_groups_put_biases_and_norm_weights_in_a_no_decay_group() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))
    groups = decay_groups(model.named_parameters(), lr_scale=0.1, name="backbone")
    assert [g["name"] for g in groups] == ["backbone", "backbone_no_decay"]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[4].weight)}
    no_decay = {id(p) for p in groups[1]["params"]}
    for module in (model[0], model[1], model[3], model[4]):
        assert id(module.bias) in no_decay
    assert id(model[1].weight) in no_decay and id(model[3].weight) in no_decay
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]  # decayed: train.weight_decay
    assert groups[0]["lr_scale"] == groups[1]["lr_scale"] == 0.1


def test_param_groups_get_their_lr_scale_and_no_decay_on_biases_and_norms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = ZeroGradMethod()
    before = _snapshot(method)
    lr, wd = 0.1, 0.5
    cfg = toy_config(epochs=1, optimizer="sgd", momentum=0.0, scheduler="constant", lr=lr, weight_decay=wd)
    trainer = Trainer(method, cfg, tmp_path, toy_dataset())
    trainer.fit()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [lr * 0.5, lr * 0.5, lr, lr]
    after = _snapshot(method)
    steps = trainer.global_step
    torch.testing.assert_close(after["net.0.weight"], before["net.0.weight"] * (1 - 0.5 * lr * wd) ** steps)
    torch.testing.assert_close(after["net.4.weight"], before["net.4.weight"] * (1 - lr * wd) ** steps)
    for name in ("net.0.bias", "net.1.weight", "net.1.bias", "net.4.bias"):  # biases and BatchNorm: no decay
        assert torch.equal(after[name], before[name]), name


def test_param_groups_are_checked(tmp_path: Path) -> None:
    class Twice(ToyMethod):
        def param_groups(self) -> list[dict[str, Any]]:
            return [{"params": list(self.net.parameters())}, {"params": [self.net[0].weight]}]

    with pytest.raises(TrainingError, match="more than one param group"):
        Trainer(Twice(), toy_config(epochs=1), tmp_path, toy_dataset()).fit()


# --------------------------------------------------------------------- freezing
class WarmupFrozen(ToyMethod):
    """The first layer stays frozen for the first two epochs (ArcFace's frozen-backbone warm-up)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_layer: list[torch.Tensor] = []

    def frozen_prefixes(self, epoch: int) -> set[str]:
        return {"net.0"} if epoch < 2 else set()

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.first_layer.append(self.net[0].weight.detach().clone())
        return super().on_epoch_end(epoch)


def test_frozen_part_is_unchanged_until_its_epoch_and_resume_across_it_is_exact(tmp_path: Path) -> None:
    cfg = toy_config(epochs=4, weight_decay=0.1)
    torch.manual_seed(0)
    straight = WarmupFrozen()
    init, head_init = straight.net[0].weight.detach().clone(), straight.net[4].weight.detach().clone()
    ref = Trainer(straight, cfg, tmp_path / "a", toy_dataset())
    ref_result = ref.fit()
    assert torch.equal(straight.first_layer[0], init) and torch.equal(straight.first_layer[1], init)  # no decay either
    assert not torch.equal(straight.first_layer[2], init)  # trains from epoch 3 (0-based 2)
    assert not torch.equal(straight.net[4].weight, head_init)
    assert all(p.requires_grad for p in straight.net.parameters())  # flags restored after fit

    torch.manual_seed(0)
    with pytest.raises(SimulatedCrash):  # 4 batches per epoch: dies in epoch 3, the first unfrozen one
        Trainer(WarmupFrozen(crash_at_call=10), cfg, tmp_path / "b", toy_dataset()).fit()
    torch.manual_seed(5)
    resumed = Trainer(WarmupFrozen(), cfg, tmp_path / "b", toy_dataset())
    result = resumed.fit(resume=True)
    _assert_identical(ref, resumed)
    assert _strip(result.history) == _strip(ref_result.history)


def test_unknown_frozen_prefix_is_a_config_error(tmp_path: Path) -> None:
    class Typo(ToyMethod):
        def frozen_prefixes(self, epoch: int) -> set[str]:
            return {"backbone"}

    with pytest.raises(ConfigError, match="'backbone' .* matches no parameter of the method; module names start with: ema, net"):
        Trainer(Typo(), toy_config(epochs=1), tmp_path, toy_dataset()).fit()


# ----------------------------------------------------------------------- stages
class StagedToy(ToyMethod):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_calls: list[str] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def set_stage(self, stage: StageConfig) -> None:
        super().set_stage(stage)
        self.stage_calls.append(stage.name)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.weights.append(_snapshot(self.net))
        return super().on_epoch_end(epoch)


STAGES = [
    StageConfig(name="first", epochs=1, lr=0.02, trainable=["net.0", "net.1"]),
    StageConfig(name="second", epochs=2, lr=0.005, trainable=["net.4"]),
    StageConfig(name="all", epochs=1, lr=0.001),
]


def test_stages_run_in_sequence_with_their_lr_and_trainable_part(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = StagedToy()
    start = _snapshot(method.net)
    trainer = Trainer(method, toy_config(epochs=99, stages=STAGES), tmp_path, toy_dataset())
    assert trainer.total_epochs == 4 and trainer.total_steps == 16  # train.epochs is not used
    result = trainer.fit()
    assert method.stage_calls == ["first", "second", "all"] and method.active_stage == "all"
    w = method.weights
    assert torch.equal(w[0]["4.weight"], start["4.weight"]) and not torch.equal(w[0]["0.weight"], start["0.weight"])
    assert torch.equal(w[2]["0.weight"], w[0]["0.weight"]) and not torch.equal(w[2]["4.weight"], w[0]["4.weight"])
    assert not torch.equal(w[3]["0.weight"], w[2]["0.weight"])
    rows = _csv_rows(tmp_path)
    assert [r["stage"] for r in rows] == ["first", "second", "second", "all"]
    # Each stage has its own cosine over its own steps, peaking at the stage's lr.
    assert result.history[1]["lr"] == CosineRestarts(T_0=8, eta_max=0.005).lr_at(3)
    assert result.history[3]["lr"] == CosineRestarts(T_0=4, eta_max=0.001).lr_at(3)
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["stage"] == "all"
    assert result.stage == "all" and result.best_epoch == 4  # best restarts with each stage


def test_resume_inside_a_stage_continues_that_stage_exactly(tmp_path: Path) -> None:
    cfg = toy_config(stages=STAGES)
    torch.manual_seed(0)
    ref = Trainer(StagedToy(), cfg, tmp_path / "a", toy_dataset())
    ref_result = ref.fit()
    torch.manual_seed(0)
    with pytest.raises(SimulatedCrash):  # dies in epoch 3: the second epoch of stage "second"
        Trainer(StagedToy(crash_at_call=10), cfg, tmp_path / "b", toy_dataset()).fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["stage"] == "second"
    method = StagedToy()
    resumed = Trainer(method, cfg, tmp_path / "b", toy_dataset())
    result = resumed.fit(resume=True)
    assert method.stage_calls == ["second", "all"]
    _assert_identical(ref, resumed)
    assert _strip(result.history) == _strip(ref_result.history)
    assert [r["stage"] for r in _csv_rows(tmp_path / "b")] == ["first", "second", "second", "all"]


def test_stages_come_from_the_train_section_of_a_yaml_config(tmp_path: Path) -> None:
    from fabml.config import from_dict, load_config, save_config
    from fabml.engine.trainer import TrainConfig

    data = {"stages": [{"name": "vae", "epochs": 2, "lr": 1e-3, "trainable": ["vae"]}, {"name": "e2e", "epochs": 1}]}
    cfg = from_dict(TrainConfig, data, where="train")
    assert [(s.name, s.epochs, s.lr, s.trainable) for s in cfg.stages] == [("vae", 2, 1e-3, ["vae"]), ("e2e", 1, None, [])]
    path = save_config(cfg, tmp_path / "train.yaml")
    assert load_config(TrainConfig, path) == cfg


def test_stage_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.stages\[1\].epochs=0 must be >= 1"):
        Trainer(ToyMethod(), toy_config(stages=[StageConfig("a"), StageConfig("b", epochs=0)]), tmp_path, toy_dataset())
    with pytest.raises(ConfigError, match="must be non-empty and unique"):
        Trainer(ToyMethod(), toy_config(stages=[StageConfig("a"), StageConfig("a")]), tmp_path, toy_dataset())


# ---------------------------------------------------------------- no-grad work
class IndexBuilder(ToyMethod):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work: list[tuple[int, bool, bool]] = []
        self.index: torch.Tensor | None = None

    def no_grad_work(self, epoch: int) -> dict[str, float]:
        self.work.append((epoch, torch.is_grad_enabled(), self.training))
        self.index = self.net(torch.eye(4))  # e.g. embed a gallery
        return {"index_rows": float(self.index.shape[0] + epoch)}


def test_no_grad_work_runs_after_each_epoch_without_grad_in_eval_mode(tmp_path: Path) -> None:
    method = IndexBuilder()
    seen: list[bool] = []

    def validate(m: IndexBuilder) -> dict[str, float]:
        seen.append(m.index is not None and not m.index.requires_grad)
        return {"val": 1.0}

    Trainer(method, toy_config(epochs=2), tmp_path, toy_dataset(), validate=validate).fit()
    assert method.work == [(0, False, False), (1, False, False)]
    assert seen == [True, True] and method.training
    assert [float(r["index_rows"]) for r in _csv_rows(tmp_path)] == [4.0, 5.0]


# ------------------------------------------------------------------ auto-resume
def test_auto_resume_continues_an_unchanged_run_and_names_changed_settings(tmp_path: Path) -> None:
    job = {"model": {"width": 16}, "train": {"epochs": 2}}
    cfg = toy_config(epochs=2, auto_resume=True)
    with pytest.raises(SimulatedCrash):
        Trainer(ToyMethod(crash_at_call=6), cfg, tmp_path, toy_dataset(), job_config=job).fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["job_config"] == job

    changed = toy_config(epochs=2, auto_resume=True, lr=0.02)
    with pytest.raises(ConfigError) as err:
        Trainer(ToyMethod(), changed, tmp_path, toy_dataset(), job_config={**job, "model": {"width": 32}}).fit()
    message = str(err.value)
    assert "\n" not in message and "train.lr 0.01 -> 0.02" in message and "model.width 16 -> 32" in message
    assert "pass --resume" in message and "--fresh" in message

    method = ToyMethod()  # same settings (log_every only changes how the run is logged): resumes by itself
    same = toy_config(epochs=2, auto_resume=True, log_every=3)
    result = Trainer(method, same, tmp_path, toy_dataset(), job_config=job).fit()
    assert result.epochs_completed == 2 and method.calls == 4  # only epoch 2 ran
    assert to_dict(same)["auto_resume"] is True


def test_auto_resume_without_a_checkpoint_starts_and_off_still_needs_a_flag(tmp_path: Path) -> None:
    result = Trainer(ToyMethod(), toy_config(epochs=1, auto_resume=True), tmp_path, toy_dataset()).fit()
    assert result.epochs_completed == 1
    with pytest.raises(ConfigError, match="already has a checkpoint: pass --resume to continue or --fresh"):
        Trainer(ToyMethod(), toy_config(epochs=1), tmp_path, toy_dataset()).fit()
