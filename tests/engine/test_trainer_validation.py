"""Trainer settings for validation cadence, the overfitting warning and torch.compile."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.engine.train_config import StageConfig  # noqa: E402
from fabml.engine.trainer import Trainer  # noqa: E402
from fabml.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


class CountingValidator:
    """A validate callback that records the epochs it ran in and returns a scripted val_loss."""

    def __init__(self, values: dict[int, float] | None = None, factor: float = 1.0) -> None:
        self.calls: list[int] = []
        self.values = values or {}
        self.factor = factor

    def __call__(self, method: ToyMethod) -> dict[str, float]:
        epoch = len(method.epoch_calls)  # on_epoch_end ran for this epoch already
        self.calls.append(epoch)
        return {"val_loss": self.values.get(epoch, 1.0) * self.factor}


def test_validate_every_runs_on_every_nth_and_last_epoch_and_only_those_select_the_best(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = ToyMethod()
    # val_loss by 1-based epoch: epoch 2 would be best, but it is not a validation epoch
    validator = CountingValidator({2: 0.01, 3: 0.5, 6: 0.2, 7: 0.3})
    cfg = toy_config(epochs=7, validate_every=3, monitor="val_loss", early_stop_patience=2)
    result = Trainer(method, cfg, tmp_path, toy_dataset(), validate=validator).fit()
    assert validator.calls == [3, 6, 7]
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows if r.get("val_loss")] == ["3", "6", "7"]
    assert result.best_epoch == 6 and result.best_metric == pytest.approx(0.2)
    # patience 2 counts validation epochs only: 7 is the first bad one, so the run completes
    assert result.stopped_reason == "completed" and result.epochs_completed == 7


def test_validate_every_counts_within_each_stage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = ToyMethod()
    validator = CountingValidator()
    stages = [StageConfig(name="a", epochs=3), StageConfig(name="b", epochs=4)]
    cfg = toy_config(stages=stages, validate_every=2, monitor="val_loss")
    Trainer(method, cfg, tmp_path, toy_dataset(), validate=validator).fit()
    # stage a: its 2nd epoch and its last (3); stage b (epochs 4-7): its 2nd (5), 4th (7) = last
    assert validator.calls == [2, 3, 5, 7]


def test_monitor_missing_from_validation_is_still_an_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = toy_config(epochs=2, validate_every=1, monitor="val_typo")
    with pytest.raises(ConfigError, match="val_typo"):
        Trainer(ToyMethod(), cfg, tmp_path, toy_dataset(), validate=CountingValidator()).fit()


def test_validate_every_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validate_every"):
        Trainer(ToyMethod(), toy_config(validate_every=0), tmp_path, toy_dataset())


@pytest.mark.parametrize("ratio, warnings", [(3.0, 1), (0.0, 0), (1e6, 0)])
def test_overfit_warning_once_per_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], ratio: float,
                                      warnings: int) -> None:
    torch.manual_seed(0)
    validator = CountingValidator(factor=1000.0)  # val_loss = 1000 >> training loss (~1)
    cfg = toy_config(epochs=3, overfit_ratio=ratio, monitor="val_loss")
    Trainer(ToyMethod(), cfg, tmp_path, toy_dataset(), validate=validator).fit()
    captured = capsys.readouterr()
    assert captured.err.count("possible overfitting") == warnings
    assert "possible overfitting" not in captured.out
    if warnings:
        assert "train.overfit_ratio=3" in captured.err


def test_compile_wraps_the_loop_model_and_trains_like_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile is called on the loop's model; the default inductor backend takes ~30 s on 2 CPU
    cores for the first step, so the test compiles with dynamo's eager backend (same graph capture)."""
    calls: list[type] = []
    real = torch.compile

    def spy(model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        calls.append(type(model))
        return real(model, backend="eager")

    torch.manual_seed(0)
    plain = Trainer(ToyMethod(dropout=0.0), toy_config(epochs=1), tmp_path / "plain", toy_dataset()).fit()
    monkeypatch.setattr(torch, "compile", spy)
    torch.manual_seed(0)
    method = ToyMethod(dropout=0.0)
    trainer = Trainer(method, toy_config(epochs=1, compile=True), tmp_path / "compiled", toy_dataset())
    compiled = trainer.fit()
    assert calls == [ToyMethod]
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in plain.history], rel=1e-4)
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "latest.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in ckpt["method"])  # the method's own state dict
