"""metrics.csv bookkeeping, optional TensorBoard, and the progress bar."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from fabml.engine import logging as flog
from fabml.engine.logging import MetricsLogger, progress_bar
from fabml.errors import ConfigError


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_csv_header_grows_and_resume_appends(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path)
    logger.log({"epoch": 1, "loss": torch.tensor(0.5)})
    logger.log({"epoch": 2, "loss": 0.4, "val": 0.9})  # new key: file rewritten with the wider header
    MetricsLogger(tmp_path).log({"epoch": 3, "loss": 0.3})  # a new logger (resume) appends
    header, rows = _read(tmp_path / "metrics.csv")
    assert header == ["epoch", "loss", "val"]
    assert rows == [
        {"epoch": "1", "loss": "0.5", "val": ""},
        {"epoch": "2", "loss": "0.4", "val": "0.9"},
        {"epoch": "3", "loss": "0.3", "val": ""},
    ]
    logger.rewrite([{"epoch": 1, "loss": 0.5}])
    assert _read(tmp_path / "metrics.csv")[1] == [{"epoch": "1", "loss": "0.5"}]


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path / "run", tensorboard=True, enabled=False)
    logger.log({"epoch": 1, "loss": 1.0})
    logger.rewrite([{"epoch": 1}])
    assert not (tmp_path / "run").exists()


def test_tensorboard_events_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log({"epoch": 1, "loss": 0.5}, step=4)
    logger.log_step({"lr": 1e-3}, step=2)
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install fabml\[tensorboard\]"):
        MetricsLogger(tmp_path, tensorboard=True)


def test_progress_bar_on_a_terminal_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    with progress_bar(3, "epoch 1/1", enabled=False) as bar:
        bar.update(1, loss=0.5, lr=1e-4, samples_per_s=100.0)
    assert bar._progress is None
    monkeypatch.setattr(flog.console, "_force_terminal", True)
    with progress_bar(3, "epoch 1/1") as bar:
        for _ in range(3):
            bar.update(1, loss=0.5, lr=1e-4, samples_per_s=1234.0)
        task = bar._progress.tasks[0]
        assert task.completed == 3 and task.fields == {"loss": "0.5", "lr": "1.00e-04", "speed": "1,234"}


def test_trainer_console_is_the_package_stderr_console() -> None:
    from fabml import console as fc

    assert flog.console is fc.err and flog.console.stderr


def test_progress_bar_in_a_file_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    """stderr redirected to a file: no bar, and no empty line left behind by a transient one."""
    assert not flog.console.is_terminal
    with progress_bar(3, "epoch 1/2") as bar:
        for _ in range(3):
            bar.update(1, loss=0.5, lr=1e-4, samples_per_s=10.0)
    assert not bar.enabled and bar._progress is None
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
