"""WarmupCosineRestarts and cosine_momentum against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fabml.engine.schedules import WarmupCosineRestarts, cosine_momentum
from fabml.errors import ConfigError


def _opt(lr: float = 123.0, groups: int = 1) -> torch.optim.SGD:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _lrs(sched: WarmupCosineRestarts, steps: int) -> list[float]:
    """Learning rate in force for optimizer steps 0 .. steps-1."""
    out = []
    for _ in range(steps):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_cosine_and_gamma_restarts() -> None:
    sched = WarmupCosineRestarts(_opt(), T_0=10, T_mult=1, eta_max=1.0, T_up=2, gamma=0.5, eta_min=0.0)
    lrs = _lrs(sched, 23)
    expected = {
        0: 0.0,  # warm-up starts at eta_min
        1: 0.5,  # halfway up
        2: 1.0,  # peak after T_up steps
        6: 0.5,  # cos(pi/2): half the cosine leg (4 of 8 steps)
        9: (1 + math.cos(7 * math.pi / 8)) / 2,  # 0.0380602...
        10: 0.0,  # restart: warm-up again
        11: 0.25,  # towards peak 1.0 * 0.5
        12: 0.5,
        16: 0.25,
        22: 0.25,  # third cycle peaks at 0.25
    }
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, abs=1e-12), step


def test_t_mult_grows_cycles_and_eta_min_floor() -> None:
    sched = WarmupCosineRestarts(_opt(), T_0=4, T_mult=2, eta_max=1.0, T_up=0, eta_min=0.1)
    lrs = _lrs(sched, 29)
    half = 0.1 + 0.9 * 0.5
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(half)  # 2 of 4
    assert lrs[4] == pytest.approx(1.0)  # cycle 1 (length 8) starts
    assert lrs[8] == pytest.approx(half)  # 4 of 8
    assert lrs[11] == pytest.approx(0.1 + 0.9 * (1 + math.cos(7 * math.pi / 8)) / 2)
    assert lrs[12] == pytest.approx(1.0)  # cycle 2 (length 16) starts
    assert lrs[20] == pytest.approx(half)
    assert lrs[28] == pytest.approx(1.0)
    assert min(lrs) >= 0.1
    assert sched.cycle_position(27) == (2, 15, 16)


def test_resume_restores_exactly() -> None:
    kwargs = dict(T_0=5, T_mult=2, eta_max=3e-4, T_up=2, gamma=0.7, eta_min=1e-6)
    ref = WarmupCosineRestarts(_opt(), **kwargs)
    ref_lrs = _lrs(ref, 30)

    first = WarmupCosineRestarts(_opt(), **kwargs)
    head = _lrs(first, 13)
    state = first.state_dict()
    # A scheduler built with other settings takes the saved ones on load.
    opt = _opt()
    resumed = WarmupCosineRestarts(opt, T_0=99, eta_max=1.0)
    opt.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(state)
    tail = _lrs(resumed, 17)
    assert head + tail == ref_lrs  # bit-identical floats


def test_lr_scale_per_param_group() -> None:
    opt = _opt(groups=2)
    opt.param_groups[1]["lr_scale"] = 0.1
    sched = WarmupCosineRestarts(opt, T_0=4, eta_max=2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.0, 0.2])
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(T_0=0), "T_0=0"),
        (dict(T_0=4, T_up=4), "warm-up T_up=4"),
        (dict(T_0=4, T_mult=0), "T_mult=0"),
        (dict(T_0=4, eta_max=0.1, eta_min=0.2), "below eta_min"),
    ],
)
def test_invalid_settings(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        WarmupCosineRestarts(_opt(), **kwargs)


def test_cosine_momentum_endpoints_and_midpoints() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.9975)
    assert cosine_momentum(25, 100) == pytest.approx(0.999 - 0.003 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(100, 100) == pytest.approx(0.999)
    assert cosine_momentum(150, 100) == pytest.approx(0.999)  # clamped
    assert cosine_momentum(3, 10, start=0.0, end=1.0) == pytest.approx((1 - math.cos(0.3 * math.pi)) / 2)
    with pytest.raises(ConfigError, match="total_steps"):
        cosine_momentum(0, 0)


def test_cosine_restarts_is_a_pure_function_matching_the_scheduler() -> None:
    from fabml.engine.schedules import ConstantLR, CosineRestarts, apply_lr

    kwargs = dict(T_0=5, T_mult=2, eta_max=3e-4, T_up=2, gamma=0.7, eta_min=1e-6)
    curve = CosineRestarts(**kwargs)
    assert [curve.lr_at(s) for s in range(30)] == _lrs(WarmupCosineRestarts(_opt(), **kwargs), 30)
    assert ConstantLR(0.003).lr_at(12345) == 0.003
    opt = _opt(groups=3)
    opt.param_groups[1]["lr_scale"] = 0.1
    opt.param_groups[2]["lr_scale"] = 0.0
    apply_lr(opt, 2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.0, 0.2, 0.0])


def test_stage_plan_lays_out_stages_and_caps_the_last_schedule_at_max_steps() -> None:
    from fabml.engine.schedules import CosineRestarts
    from fabml.engine.stages import StagePlan
    from fabml.engine.train_config import StageConfig, TrainConfig

    stages = [StageConfig("vae", epochs=2, lr=1.0), StageConfig("cond", epochs=3)]
    plan = StagePlan(TrainConfig(stages=stages, lr=0.5, warmup_epochs=0.5, max_steps=40), steps_per_epoch=10)
    assert [(s.first_epoch, s.end_epoch, s.first_step, s.steps) for s in plan.spans] == [(0, 2, 0, 20), (2, 5, 20, 20)]
    assert plan.total_epochs == 5 and plan.total_steps == 40
    assert plan.span_at(1).stage.name == "vae" and plan.span_at(2).stage.name == "cond"
    assert plan.lr_at(0, 0) == 0.0 and plan.lr_at(0, 5) == 1.0  # warm-up of 5 steps up to the stage's lr
    assert plan.lr_at(2, 20) == 0.0 and plan.lr_at(2, 25) == 0.5  # the second stage: its own warm-up, peak train.lr
    assert plan.lr_at(3, 33) == CosineRestarts(T_0=20, eta_max=0.5, T_up=5).lr_at(13)
    single = StagePlan(TrainConfig(epochs=3, max_steps=25), steps_per_epoch=10)
    assert single.total_steps == 25 and single.spans[0].steps == 25 and single.spans[0].stage.name == "train"
