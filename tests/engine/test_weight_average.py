"""The weight average (``train.ema_decay``): its arithmetic, and what the trainer does with it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import SimulatedCrash, ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.engine.checkpoint import load_checkpoint  # noqa: E402
from fabml.engine.train_config import StageConfig  # noqa: E402
from fabml.engine.trainer import MEASURED_KEYS, Trainer  # noqa: E402
from fabml.engine.weight_average import WeightAverage  # noqa: E402
from fabml.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_the_average_follows_the_warm_up_formula_and_copies_integer_buffers() -> None:
    module = Scalar()
    average = WeightAverage(module, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        with torch.no_grad():
            module.w.fill_(value)
        module.count.fill_(n)
        decay = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, ... then capped at 0.9
        expected = decay * expected + (1 - decay) * value
        average.update(module)
        assert average.updates == n
        assert average.average["w"].item() == pytest.approx(expected, rel=1e-6)
    assert "count" not in average.average
    state = average.averaged_state(module)
    assert state["count"].item() == 5 and state["w"].item() == pytest.approx(expected, rel=1e-6)


def test_swapped_in_shows_the_average_and_gives_the_weights_back() -> None:
    module = Scalar()
    average = WeightAverage(module, decay=0.5)
    with torch.no_grad():
        module.w.fill_(4.0)
    average.update(module)  # decay min(0.5, 2/11): a = 2/11 * 0 + 9/11 * 4
    with average.swapped_in(module):
        assert module.w.item() == pytest.approx(36 / 11)
    assert module.w.item() == 4.0
    average.restart(module)
    assert average.updates == 0 and average.average["w"].item() == 4.0
    with pytest.raises(ValueError, match="ema decay 1.0 must be in"):
        WeightAverage(module, decay=1.0)


def test_ema_decay_outside_0_1_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.ema_decay=1.0 must be in \[0, 1\)"):
        Trainer(ToyMethod(), toy_config(ema_decay=1.0), tmp_path, toy_dataset())


class Watched(ToyMethod):
    """Records the first layer's weight that the validation callback sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validated: list[torch.Tensor] = []


def _validate(method: Watched) -> dict[str, float]:
    method.validated.append(method.net[0].weight.detach().clone())
    return {"val_loss": float(method.net[0].weight.abs().mean())}


def test_validation_checkpoints_and_the_final_weights_are_the_average(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = Watched()
    cfg = toy_config(epochs=3, ema_decay=0.8, monitor="val_loss")
    trainer = Trainer(method, cfg, tmp_path, toy_dataset(), validate=_validate)
    live_after_epoch: list[torch.Tensor] = []
    original = trainer._train_epoch

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        live_after_epoch.append(method.net[0].weight.detach().clone())
        return out

    trainer._train_epoch = spy  # type: ignore[method-assign]
    trainer.fit()
    ema = trainer.ema
    assert ema is not None and ema.updates == 12  # 4 steps x 3 epochs
    # what validation saw is not the live weights, and the method ends on the average
    for seen, live in zip(method.validated, live_after_epoch):
        assert not torch.equal(seen, live)
    assert torch.equal(method.validated[-1], method.net[0].weight)
    latest = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert latest["ema_updates"] == 12
    assert torch.equal(latest["method"]["net.0.weight"], method.net[0].weight)
    assert torch.equal(latest["training_weights"]["net.0.weight"], live_after_epoch[-1])
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert torch.equal(best["method"]["net.0.weight"], method.validated[best["best_epoch"] - 1])


def test_resume_with_the_average_is_exact(tmp_path: Path) -> None:
    cfg = toy_config(epochs=4, ema_decay=0.9, grad_clip=1.0)
    torch.manual_seed(0)
    straight = ToyMethod()
    ref = Trainer(straight, cfg, tmp_path / "a", toy_dataset())
    ref_result = ref.fit()
    torch.manual_seed(0)
    with pytest.raises(SimulatedCrash):
        Trainer(ToyMethod(crash_at_call=10), cfg, tmp_path / "b", toy_dataset()).fit()
    torch.manual_seed(123)
    resumed = ToyMethod()
    got = Trainer(resumed, cfg, tmp_path / "b", toy_dataset())
    got_result = got.fit(resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert got.ema is not None and ref.ema is not None and got.ema.updates == ref.ema.updates == 16
    for key, value in ref.ema.average.items():
        assert torch.equal(value, got.ema.average[key]), key
    strip = [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in ref_result.history]
    assert strip == [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in got_result.history]


def test_each_stage_starts_from_the_previous_stage_average(tmp_path: Path) -> None:
    stages = [StageConfig(name="first", epochs=2, lr=0.02), StageConfig(name="second", epochs=1, lr=0.005)]
    torch.manual_seed(0)
    method = ToyMethod()
    trainer = Trainer(method, toy_config(stages=stages, ema_decay=0.7), tmp_path, toy_dataset())
    first_average: list[dict[str, torch.Tensor]] = []
    enter = trainer._enter_stage

    def spy(previous: Any, loop: Any, first: bool) -> Any:
        if loop.epoch == 2 and loop.batch == 0 and not first_average:
            assert trainer.ema is not None
            first_average.append({k: v.clone() for k, v in trainer.ema.average.items()})
        span = enter(previous, loop, first)
        if first_average and loop.epoch == 2:
            state = method.state_dict()
            for key, value in first_average[0].items():
                assert torch.equal(state[key], value), key
        return span

    trainer._enter_stage = spy  # type: ignore[method-assign]
    trainer.fit()
    assert first_average and trainer.ema is not None and trainer.ema.updates == 4  # restarted: stage 2's 4 steps
