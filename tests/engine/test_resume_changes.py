"""Resume under changed settings: the schedule follows the new length; a max_steps stop inside an epoch resumes there."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import SimulatedCrash, ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.engine.checkpoint import load_checkpoint  # noqa: E402
from fabml.engine.schedules import CosineRestarts, cosine_momentum  # noqa: E402
from fabml.engine.trainer import MEASURED_KEYS, Trainer  # noqa: E402


def _method(seed: int = 0, **kwargs: object) -> ToyMethod:
    torch.manual_seed(seed)
    return ToyMethod(**kwargs)  # type: ignore[arg-type]


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in history]


def _assert_same_training_state(ref: Trainer, got: Trainer) -> None:
    for key, value in ref.method.state_dict().items():
        assert torch.equal(value, got.method.state_dict()[key]), key
    ref_opt, got_opt = ref.optimizer.state_dict(), got.optimizer.state_dict()
    assert ref_opt["param_groups"] == got_opt["param_groups"]
    for index, slots in ref_opt["state"].items():
        for name, value in slots.items():
            assert torch.equal(value, got_opt["state"][index][name]), (index, name)


def test_longer_epochs_on_resume_continue_the_new_cosine(tmp_path: Path) -> None:
    """epochs 4 -> 8 after epoch 2: the rate at step s is the 32-step cosine's, never back to the peak."""
    cfg = toy_config(epochs=4, lr=0.01)
    with pytest.raises(SimulatedCrash):
        Trainer(_method(crash_at_call=9), cfg, tmp_path, toy_dataset()).fit()  # dies at the start of epoch 3
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["epoch"] == 2

    method = _method()
    trainer = Trainer(method, toy_config(epochs=8, lr=0.01), tmp_path, toy_dataset())
    assert trainer.total_steps == 32
    result = trainer.fit(resume=True)
    curve = CosineRestarts(T_0=32, eta_max=0.01)
    # An epoch row's lr is the rate of the epoch's last step (step 4e - 1, 0-based).
    got = [row["lr"] for row in result.history[2:]]
    assert got == [curve.lr_at(4 * e - 1) for e in range(3, 9)]
    assert all(a >= b for a, b in zip(got, got[1:]))  # monotone: no restart at the old length (step 16)
    assert got[0] < 0.01 * 0.9
    # The method's step hook gets the same new total (BYOL's tau follows the rate's length).
    assert method.step_log[0] == (9, 32) and method.step_log[-1] == (32, 32)


def test_shorter_max_steps_on_resume_ends_the_cosine_at_the_new_length(tmp_path: Path) -> None:
    Trainer(_method(), toy_config(epochs=4, max_steps=8), tmp_path, toy_dataset()).fit()
    trainer = Trainer(_method(), toy_config(epochs=4, max_steps=12), tmp_path, toy_dataset())
    result = trainer.fit(resume=True)
    assert result.global_step == 12 and result.stopped_reason == "max_steps"
    assert result.history[-1]["lr"] == CosineRestarts(T_0=12, eta_max=0.01).lr_at(11)


def test_max_steps_stop_inside_an_epoch_resumes_there_bit_identical(tmp_path: Path) -> None:
    # A schedule that does not depend on the run's length (fixed 1-epoch cycles), so the straight
    # run with the final settings and the stopped-and-resumed run see the same rates.
    common = dict(epochs=4, t0_epochs=1, warmup_epochs=0.5, gamma=0.5, grad_clip=1.0)
    straight = Trainer(_method(), toy_config(**common), tmp_path / "a", toy_dataset())
    straight_result = straight.fit()

    first = _method()
    stopped = Trainer(first, toy_config(max_steps=6, **common), tmp_path / "b", toy_dataset()).fit()
    assert stopped.stopped_reason == "max_steps" and stopped.epochs_completed == 1 and stopped.batches_into_epoch == 2
    state = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 6)
    assert first.epoch_calls == [0]  # the unfinished epoch did not run the epoch-end hook

    method = _method(seed=7)  # different init: everything must come from the checkpoint
    resumed = Trainer(method, toy_config(max_steps=0, **common), tmp_path / "b", toy_dataset())
    result = resumed.fit(resume=True)
    _assert_same_training_state(straight, resumed)
    assert _strip(result.history) == _strip(straight_result.history)
    assert method.step_log[0] == (7, 16)
    # The resumed run trained exactly the batches the stopped one had not: same order as the straight run.
    assert first.seen_indices + method.seen_indices == straight.method.seen_indices
    with open(tmp_path / "b" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # the partial row was replaced by the full one


def test_byol_tau_is_set_from_the_step_count_on_resume() -> None:
    from fabml.wafer.augment import AugmentConfig
    from fabml.wafer.method import BYOLConfig, BYOLMethod
    from fabml.wafer.model import EncoderConfig

    method = BYOLMethod(EncoderConfig(preset="tiny"), BYOLConfig(), AugmentConfig())
    method.on_fit_start(300, 1000)
    assert method.tau == cosine_momentum(300, 1000, 0.996, 0.999)
    method.on_fit_start(0, 1000)
    assert method.tau == 0.996


class NoisyDataset(torch.utils.data.Dataset):
    """The toy samples plus noise drawn from torch's global generator in ``__getitem__`` (an augmentation)."""

    def __init__(self) -> None:
        self.base = toy_dataset()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, i = self.base[index]
        return x + 0.1 * torch.randn_like(x), y, i


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_replays_random_augmentations(tmp_path: Path, workers: int) -> None:
    """In the main process (workers=0) and in loader workers, the augmentations after the resume
    are those of the uninterrupted run."""
    common = dict(epochs=2, scheduler="constant", num_workers=workers)
    straight = Trainer(_method(), toy_config(**common), tmp_path / "a", NoisyDataset())
    straight_result = straight.fit()
    Trainer(_method(), toy_config(max_steps=3, **common), tmp_path / "b", NoisyDataset()).fit()
    resumed = Trainer(_method(seed=3), toy_config(**common), tmp_path / "b", NoisyDataset())
    result = resumed.fit(resume=True)
    _assert_same_training_state(straight, resumed)
    assert _strip(result.history) == _strip(straight_result.history)
