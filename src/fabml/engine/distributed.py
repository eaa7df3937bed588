"""torchrun / DDP helpers: NCCL on GPU, gloo on CPU; every helper is a no-op in a single process."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size`` 1 and ``is_distributed`` False when alone)."""

    rank: int
    local_rank: int
    world_size: int
    is_distributed: bool
    local_world_size: int = 1


def init_distributed() -> DistInfo:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Idempotent. Without those variables (or with WORLD_SIZE=1) nothing is initialised.
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
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(cleanup)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), True, local_world_size)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


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


def cleanup() -> None:
    """Leave the process group (safe to call twice)."""
    if is_initialized():
        dist.destroy_process_group()
