"""torchrun / DDP helpers: NCCL on GPU, gloo on CPU; every helper is a no-op in a single process.

This module is the one place that reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
imports ``torch.distributed``. A job asks it two questions only: :func:`is_main_process` (may I write files and
print results?) and :func:`main_process_only` (run this step once, on rank 0, while the other ranks wait).
"""

from __future__ import annotations

import atexit
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from fabml.errors import TrainingError

T = TypeVar("T")
# How long the other ranks wait for a step that runs on rank 0 only (a memory-bank fit of a large set can take hours).
MAIN_ONLY_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size`` 1 and ``is_distributed`` False when alone)."""

    rank: int
    local_rank: int
    world_size: int
    is_distributed: bool
    local_world_size: int = 1


def init_distributed(timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Idempotent. Without those variables (or with WORLD_SIZE=1) nothing is initialised.
    ``timeout`` bounds every collective of the group (torch's default when None; set at the first call only).
    The group is destroyed at interpreter exit; :func:`cleanup` does it earlier.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if world_size <= 1:
        return DistInfo(0, 0, 1, False, 1)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        extra = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend=backend, init_method="env://", **extra)
        atexit.register(cleanup)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), True, local_world_size)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank: from the process group once joined, before that from torchrun's ``RANK``."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process), also before the process group is joined.

    Only the main process writes a run's files (config, run.json, the artefact) and prints results.
    """
    return get_rank() == 0


def main_process_only(fn: Callable[[], T], what: str = "this step") -> T | None:
    """Run ``fn()`` on the main process only; under torchrun the other ranks wait until it has finished.

    In a single process this is ``fn()``. Under torchrun every rank joins the process group (with
    :data:`MAIN_ONLY_TIMEOUT` when this call creates it), rank 0 runs ``fn`` and then all ranks meet in one
    broadcast of rank 0's outcome. Returns ``fn``'s result on rank 0 and None on the others; when ``fn`` raises
    on rank 0 it is re-raised there, and the other ranks raise :class:`TrainingError` naming ``what``.
    """
    info = init_distributed(timeout=MAIN_ONLY_TIMEOUT)
    if not info.is_distributed:
        return fn()
    if info.rank == 0:
        try:
            result = fn()
        except BaseException as err:
            broadcast_object(f"{type(err).__name__}: {err}")
            raise
        broadcast_object(None)
        return result
    failure = broadcast_object(None)
    if failure is not None:
        raise TrainingError(f"rank 0 failed during {what} ({failure}); see rank 0's output")
    return None


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is left untouched)."""
    out = tensor.detach().clone()
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not is_initialized() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_initialized() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running stats) into every rank's ``module``.

    DDP does this at the start of each forward; doing it at epoch end makes every
    rank hold the same state for validation, checkpoints and the returned model.
    """
    if not is_initialized() or get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


#: seconds :func:`cleanup` hands the GIL to gloo's worker threads after leaving the group (see there)
GLOO_DRAIN_SECONDS = 0.2


def cleanup() -> None:
    """Leave the process group (safe to call twice).

    Why the pause after leaving: a gloo worker thread frees each collective's work *after* the caller's
    ``wait()`` has returned, and freeing a work whose tensors were made in Python needs the GIL. DDP keeps a
    C++ reference to the group (torch 2.13), so ``destroy_process_group`` cannot join those threads; a
    worker that reaches the GIL only once the interpreter is finalising aborts the process ("terminate
    called without an active exception", SIGABRT; seen about once in 15 two-rank runs on a loaded
    2-core machine, from a core dump). Sleeping releases the GIL while the interpreter is still whole,
    so the worker finishes its free before finalisation starts.
    """
    if is_initialized():
        dist.destroy_process_group()
        time.sleep(GLOO_DRAIN_SECONDS)
