"""Atomic checkpoint writes, clear errors on bad files, RNG capture, latest/best bookkeeping."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fabml.engine import checkpoint
from fabml.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fabml.errors import DataError


def _state(value: float) -> dict:
    return {"weights": torch.full((1000,), value), "epoch": int(value), "history": [{"loss": value}]}


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(_state(3.0), tmp_path / "deep" / "latest.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.full((1000,), 3.0))
    assert loaded["history"] == [{"loss": 3.0}]


def test_crash_during_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(_state(1.0), path)
    real_save = torch.save

    def half_then_crash(obj: object, handle: io.BufferedWriter) -> None:
        buf = io.BytesIO()
        real_save(obj, buf)
        handle.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.full((1000,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_missing_and_corrupt_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    good = save_checkpoint(_state(1.0), tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match=r"bad.pt is corrupt or incomplete .*--fresh"):
        load_checkpoint(bad)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="does not hold a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_rng_capture_restore_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave a cached gaussian in numpy's state
    path = save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")

    def draw() -> tuple:
        return random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    first = draw()
    restore_rng_state(load_checkpoint(path)["rng"])
    assert draw() == first


def test_manager_latest_best_and_clear(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, mode="min")
    assert not manager.has_checkpoint()
    manager.save(_state(1.0), is_best=True)
    manager.save(_state(2.0), is_best=False)
    assert manager.load_latest()["epoch"] == 2
    assert manager.load_best()["epoch"] == 1
    assert manager.latest_path == tmp_path / "checkpoints" / "latest.pt"
    assert manager.has_checkpoint()
    manager.clear()
    assert not manager.has_checkpoint() and not manager.dir.exists()


def test_is_better_modes_and_nan() -> None:
    low, high = CheckpointManager(".", "min"), CheckpointManager(".", "max")
    assert low.is_better(1.0, None) and low.is_better(0.5, 1.0) and not low.is_better(1.0, 1.0)
    assert high.is_better(2.0, 1.0) and not high.is_better(0.5, 1.0)
    assert not low.is_better(float("nan"), 1.0) and low.is_better(1.0, float("nan"))
    with pytest.raises(ValueError, match="'min' or 'max'"):
        CheckpointManager(".", "lowest")


def test_fsync_dir_tolerates_missing_directory(tmp_path: Path) -> None:
    checkpoint._fsync_dir(tmp_path / "does-not-exist")  # no exception
