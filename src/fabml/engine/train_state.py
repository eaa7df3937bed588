"""What a training checkpoint holds (``checkpoints/latest.pt`` and ``best.pt``) and how it is read back.

Format 2 (written now)::

    format        2
    method        method.state_dict()                 (every network, online and target); with
                  train.ema_decay the weight average's state (what a job loads)
    training_weights  with train.ema_decay only: the weights the optimizer trains (a resume continues them)
    ema_updates   with train.ema_decay only: updates of the average since it (re)started
    optimizer     optimizer.state_dict()              (moments; the rate is recomputed each step)
    scaler        GradScaler state or None
    rng           [capture_rng_state() of each rank]
    epoch         finished epochs
    batch         batches of epoch ``epoch`` already trained (0 = at an epoch boundary;
                  > 0 when ``train.max_steps`` stopped the run inside the epoch)
    partial       running sums of that unfinished epoch ({"sums", "n_seen", "samples"}) or None
    global_step   optimizer steps taken
    stage         name of the active stage
    best_metric, best_epoch, bad_epochs, history (finished epochs' rows)
    config        the TrainConfig as a dict;  job_config: the job's whole config (or None)
    world_size

No LR-scheduler state is stored or read: the schedule is rebuilt from the current config
(format 1 files, which hold one, resume the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from fabml.engine.train_config import config_changes
from fabml.errors import TrainingError

FORMAT = 2


@dataclass
class LoopState:
    """Where the loop stands: finished epochs, the position inside the next one, best-metric bookkeeping."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None


def make_checkpoint(
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loop: LoopState,
    stage: str,
    rng_states: list[dict[str, Any]],
    config: dict[str, Any],
    job_config: dict[str, Any] | None,
    world_size: int,
) -> dict[str, Any]:
    """The checkpoint dict of the current training state (plain types and tensors only)."""
    return {
        "format": FORMAT,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_states,
        "epoch": loop.epoch,
        "batch": loop.batch,
        "partial": loop.partial,
        "global_step": loop.global_step,
        "stage": stage,
        "best_metric": loop.best,
        "best_epoch": loop.best_epoch,
        "bad_epochs": loop.bad_epochs,
        "history": loop.history,
        "config": config,
        "job_config": job_config,
        "world_size": world_size,
    }


def load_training_state(
    ckpt: dict[str, Any], method: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> LoopState:
    """Load weights, optimizer moments and scaler from ``ckpt``; return the loop state it records.

    The weights are the training weights (``training_weights`` when the run kept a weight
    average, else ``method``); the trainer restores the average itself.

    The optimizer's per-group settings other than its moments (``lr_scale``, ``weight_decay``,
    ``name``) are kept from the groups just built from the current method and config.
    """
    live = ckpt.get("training_weights")
    method.load_state_dict(ckpt["method"] if live is None else live)
    current = [{k: v for k, v in group.items() if k in ("lr_scale", "weight_decay", "name")} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as err:
        raise TrainingError(
            f"the checkpoint's optimizer does not fit the method's parameter groups ({err}); "
            "resume with the code that wrote it, or start over with --fresh"
        ) from None
    for group, settings in zip(optimizer.param_groups, current):
        group.update(settings)
    if scaler.is_enabled() and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    best = ckpt.get("best_metric")
    return LoopState(
        epoch=int(ckpt["epoch"]),
        batch=int(ckpt.get("batch", 0)),
        global_step=int(ckpt["global_step"]),
        best=None if best is None else float(best),
        best_epoch=ckpt.get("best_epoch"),
        bad_epochs=int(ckpt.get("bad_epochs", 0)),
        history=list(ckpt.get("history") or []),
        partial=ckpt.get("partial"),
    )


def changed_settings(
    ckpt: Mapping[str, Any],
    train_config: Mapping[str, Any],
    job_config: Mapping[str, Any] | None,
    ignore: frozenset[str],
) -> list[str]:
    """``"setting old -> new"`` for each setting that differs between a checkpoint and now.

    The train section is compared as ``train.KEY`` (keys in ``ignore`` skipped); the job's
    config, when both sides have one, key by key without its ``train`` entry.
    """
    old_train = {k: v for k, v in (ckpt.get("config") or {}).items() if k not in ignore}
    new_train = {k: v for k, v in train_config.items() if k not in ignore}
    changed = config_changes(old_train, new_train, "train.")
    old_job = ckpt.get("job_config")
    if old_job is not None and job_config is not None:
        changed += config_changes(
            {k: v for k, v in old_job.items() if k != "train"}, {k: v for k, v in job_config.items() if k != "train"}
        )
    return changed
