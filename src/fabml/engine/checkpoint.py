"""Atomic checkpoints (tmp file + fsync + rename), latest/best bookkeeping, RNG capture."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, BinaryIO

import numpy as np
import torch

from fabml.errors import DataError


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically; returns the path."""
    path = Path(path)
    _atomic_write(path, lambda handle: torch.save(state, handle))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights-only unpickling).

    A missing, truncated or corrupt file raises :class:`DataError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle/zip errors for bad files
        raise DataError(
            f"checkpoint {path} is corrupt or incomplete ({type(err).__name__}); delete it or start over with --fresh"
        ) from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path} does not hold a dict of training state")
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python ``random``, numpy's global generator, torch CPU and every CUDA device.

    Only plain types and tensors, so it loads with ``weights_only=True``.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored for as many devices as both have)."""
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _to_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; a round trip through some serialisers yields lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value


class CheckpointManager:
    """``run_dir/checkpoints/latest.pt`` every epoch, ``best.pt`` when the monitored metric improves."""

    def __init__(self, run_dir: str | Path, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"monitor mode must be 'min' or 'max', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.mode = mode

    @property
    def latest_path(self) -> Path:
        return self.dir / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def has_checkpoint(self) -> bool:
        return self.latest_path.is_file() or self.best_path.is_file()

    def is_better(self, value: float, best: float | None) -> bool:
        """Strict improvement of ``value`` over ``best`` in this manager's mode; NaN never improves."""
        if value != value:
            return False
        if best is None or best != best:
            return True
        return value < best if self.mode == "min" else value > best

    def save(self, state: dict[str, Any], is_best: bool = False) -> Path:
        """Write ``latest.pt`` and, when ``is_best``, an identical ``best.pt``; returns latest's path."""
        save_checkpoint(state, self.latest_path)
        if is_best:
            _atomic_write(self.best_path, lambda handle: _copy_into(self.latest_path, handle))
        return self.latest_path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.latest_path, map_location)

    def load_best(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.best_path, map_location)

    def clear(self) -> None:
        """Delete every checkpoint (``--fresh``)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)


def _copy_into(source: Path, handle: BinaryIO) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, handle)
