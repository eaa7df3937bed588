"""Trainer on a toy method: learning, exact resume, NaN handling, accumulation, stopping rules, run files."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import SimulatedCrash, ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.engine.checkpoint import load_checkpoint  # noqa: E402
from fabml.engine.trainer import MEASURED_KEYS, Trainer, TrainConfig, move_to_device  # noqa: E402
from fabml.errors import ConfigError, TrainingError  # noqa: E402

TIMING_KEYS = set(MEASURED_KEYS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread


def _method(seed: int = 0, **kwargs: object) -> ToyMethod:
    torch.manual_seed(seed)
    return ToyMethod(**kwargs)  # type: ignore[arg-type]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _strip_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def test_loss_decreases_and_run_files_are_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    method = _method()
    trainer = Trainer(method, toy_config(epochs=6, warmup_epochs=0.5), tmp_path, toy_dataset())
    assert trainer.steps_per_epoch == 4 and trainer.total_steps == 24
    (tmp_path / "metrics.csv").write_text("epoch,loss\n9,9.0\n")  # stale rows, no checkpoint
    result = trainer.fit()
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.epochs_completed == 6 and result.stopped_reason == "completed" and result.global_step == 24
    assert method.step_log == [(s, 24) for s in range(1, 25)]  # on_step_end(step from 1, total)
    assert method.epoch_calls == list(range(6))  # on_epoch_end gets the 0-based epoch
    rows = _csv_rows(tmp_path)
    assert len(rows) == 6 and [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"loss", "mae", "lr", "ema_norm", "step", "samples_per_s"} <= set(rows[0])
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["seed"] == 0 and info["world_size"] == 1 and "torch" in info["versions"]
    assert info["train_config"]["epochs"] == 6 and isinstance(info["argv"], list)
    assert (tmp_path / "checkpoints" / "latest.pt").is_file() and (tmp_path / "checkpoints" / "best.pt").is_file()
    err = capsys.readouterr().err
    assert "device cpu" in err and "precision fp32" in err and "batch 16/rank" in err
    assert "epoch 6/6 | loss" in err


def test_resume_after_crash_is_bit_identical(tmp_path: Path) -> None:
    cfg = toy_config(epochs=4, t0_epochs=2, warmup_epochs=0.5, gamma=0.5, grad_clip=1.0)
    straight = _method()
    straight_trainer = Trainer(straight, cfg, tmp_path / "a", toy_dataset())
    straight_result = straight_trainer.fit()

    crashing = _method(crash_at_call=10)  # 4 batches per epoch: dies in epoch 3
    with pytest.raises(SimulatedCrash):
        Trainer(crashing, cfg, tmp_path / "b", toy_dataset()).fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["epoch"] == 2

    resumed = _method(seed=123)  # different init: everything must come from the checkpoint
    resumed_trainer = Trainer(resumed, cfg, tmp_path / "b", toy_dataset())
    resumed_result = resumed_trainer.fit(resume=True)

    ref, got = straight.state_dict(), resumed.state_dict()
    assert ref.keys() == got.keys() and any(k.startswith("ema.") for k in ref)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    ref_opt, got_opt = straight_trainer.optimizer.state_dict(), resumed_trainer.optimizer.state_dict()
    assert ref_opt["param_groups"] == got_opt["param_groups"]
    for index, slots in ref_opt["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, got_opt["state"][index][name]), (index, name)
    assert _strip_timing(resumed_result.history) == _strip_timing(straight_result.history)
    assert resumed_result.epochs_completed == 4 and resumed_result.global_step == 16
    assert resumed.step_log[0] == (9, 16)  # continued at the next optimizer step
    assert len(_csv_rows(tmp_path / "b")) == 4
    assert len(json.loads((tmp_path / "b" / "run.json").read_text())["resumes"]) == 1


def test_existing_checkpoint_needs_resume_or_fresh(tmp_path: Path) -> None:
    Trainer(_method(), toy_config(epochs=1), tmp_path, toy_dataset()).fit()
    trainer = Trainer(_method(), toy_config(epochs=2), tmp_path, toy_dataset())
    with pytest.raises(ConfigError, match=f"run dir {tmp_path} already has a checkpoint: pass --resume .* --fresh"):
        trainer.fit()
    with pytest.raises(ConfigError, match="not both"):
        trainer.fit(resume=True, fresh=True)
    result = trainer.fit(fresh=True)
    assert result.epochs_completed == 2 and len(_csv_rows(tmp_path)) == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["epoch"] == 2


def test_resume_of_finished_run_does_nothing(tmp_path: Path) -> None:
    Trainer(_method(), toy_config(epochs=2), tmp_path, toy_dataset()).fit()
    method = _method()
    result = Trainer(method, toy_config(epochs=2), tmp_path, toy_dataset()).fit(resume=True)
    assert result.epochs_completed == 2 and len(result.history) == 2 and method.calls == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(_method(nan_at_call=6), toy_config(epochs=3), tmp_path, toy_dataset())
    latest = tmp_path / "checkpoints" / "latest.pt"
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    assert str(err.value) == (
        f"loss became nan at epoch 2 step 6; the last good checkpoint is {latest}; "
        "lower the lr or enable grad_clip"
    )
    state = load_checkpoint(latest)
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert len(_csv_rows(tmp_path)) == 1


def test_nan_in_first_epoch_says_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="loss became nan at epoch 1 step 1; the last good checkpoint is none"):
        Trainer(_method(nan_at_call=1), toy_config(epochs=1), tmp_path, toy_dataset()).fit()


def test_grad_accumulation_matches_bigger_batch(tmp_path: Path) -> None:
    plain = dict(dropout=0.0, batchnorm=False)
    big, small = _method(**plain), _method(**plain)
    assert all(torch.equal(a, b) for a, b in zip(big.parameters(), small.parameters()))
    common = dict(epochs=2, grad_clip=0.5, warmup_epochs=0.5, optimizer="sgd", lr=0.05)
    Trainer(big, toy_config(batch_size=16, grad_accum_steps=1, **common), tmp_path / "big", toy_dataset()).fit()
    trainer = Trainer(small, toy_config(batch_size=8, grad_accum_steps=2, **common), tmp_path / "small", toy_dataset())
    assert trainer.steps_per_epoch == 4 and trainer.batches_per_epoch == 8
    trainer.fit()
    for a, b in zip(big.state_dict().values(), small.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_early_stopping_and_best_checkpoint(tmp_path: Path) -> None:
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.9, 0.6, 0.1])
    trainer = Trainer(
        _method(),
        toy_config(epochs=7, monitor="val_acc", monitor_mode="max", early_stop_patience=3),
        tmp_path,
        toy_dataset(),
        validate=lambda method: {"val_acc": next(scores)},
    )
    result = trainer.fit()
    assert result.stopped_reason == "early_stopping"
    assert result.epochs_completed == 5 and result.best_epoch == 2 and result.best_metric == pytest.approx(0.9)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 2
    assert [float(r["val_acc"]) for r in _csv_rows(tmp_path)] == pytest.approx([0.5, 0.9, 0.8, 0.7, 0.9])
    again = _method()
    result = Trainer(again, trainer.cfg, tmp_path, toy_dataset(), validate=lambda m: {"val_acc": 1.0}).fit(resume=True)
    assert result.stopped_reason == "early_stopping" and result.epochs_completed == 5 and again.calls == 0


def test_unknown_monitor_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.monitor='val_loss' is not a logged metric; available: epoch, step"):
        Trainer(_method(), toy_config(epochs=1, monitor="val_loss"), tmp_path, toy_dataset()).fit()


def test_max_steps_and_time_budget(tmp_path: Path) -> None:
    method = _method()
    trainer = Trainer(method, toy_config(epochs=5, max_steps=6), tmp_path / "steps", toy_dataset())
    assert trainer.total_steps == 6
    result = trainer.fit()
    # 4 steps per epoch: step 6 is 2 batches into epoch 2, which is not a finished epoch.
    assert result.stopped_reason == "max_steps" and result.global_step == 6 and result.epochs_completed == 1
    assert result.batches_into_epoch == 2 and len(result.history) == 2 and result.history[-1]["epoch"] == 2
    assert method.step_log[-1] == (6, 6)
    state = load_checkpoint(tmp_path / "steps" / "checkpoints" / "latest.pt")
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 6)
    assert len(state["history"]) == 1 and len(_csv_rows(tmp_path / "steps")) == 2  # the partial row is shown
    again = Trainer(_method(), toy_config(epochs=5, max_steps=6), tmp_path / "steps", toy_dataset()).fit(resume=True)
    assert again.global_step == 6 and again.history == result.history  # nothing to do: nothing lost
    assert len(_csv_rows(tmp_path / "steps")) == 2
    result = Trainer(_method(), toy_config(epochs=5, max_minutes=1e-9), tmp_path / "time", toy_dataset()).fit()
    assert result.stopped_reason == "time_budget" and result.epochs_completed == 1


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smaller than one batch of 128 per rank"):
        Trainer(_method(), toy_config(batch_size=128), tmp_path, toy_dataset())
    with pytest.raises(ConfigError, match="train.optimizer 'lamb' is unknown; choose one of: adamw, adam, sgd"):
        Trainer(_method(), toy_config(optimizer="lamb"), tmp_path, toy_dataset())
    with pytest.raises(ConfigError, match="train.warmup_epochs needs train.scheduler=cosine_restarts"):
        Trainer(_method(), toy_config(scheduler="constant", warmup_epochs=1), tmp_path, toy_dataset())
    with pytest.raises(ConfigError, match="warm-up T_up=8 steps"):
        Trainer(_method(), toy_config(t0_epochs=1, warmup_epochs=2), tmp_path, toy_dataset()).fit()


def test_constant_schedule_keeps_lr(tmp_path: Path) -> None:
    result = Trainer(_method(), toy_config(epochs=2, scheduler="constant", lr=0.003), tmp_path, toy_dataset()).fit()
    assert [row["lr"] for row in result.history] == [0.003, 0.003]


def test_move_to_device_handles_nesting_and_channels_last() -> None:
    batch = {"x": torch.zeros(2, 3, 4, 5), "meta": ["a", "b"], "pair": (torch.ones(2), 7)}
    out = move_to_device(batch, torch.device("cpu"), channels_last=True)
    assert out["x"].is_contiguous(memory_format=torch.channels_last)
    assert out["meta"] == ["a", "b"] and out["pair"][1] == 7 and isinstance(out["pair"], tuple)


def test_train_config_defaults_follow_the_seed() -> None:
    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.optimizer) == (256, 1e-4, 0.01, "adamw")
