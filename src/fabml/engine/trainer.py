"""The one training loop every job uses.

The trainer owns device, precision, DDP, the data loader, optimizer, LR schedule,
gradient accumulation and clipping, checkpoints, resume, early stopping and logging.
A job supplies a :class:`~fabml.engine.method.Method` (models + loss) and a dataset.

Beside it: :mod:`~fabml.engine.train_config` (``TrainConfig``, stages, checks),
:mod:`~fabml.engine.train_state` (what a checkpoint holds, restore, changed settings),
:mod:`~fabml.engine.stages` (stage layout, the rate at a step, what trains in an epoch),
:mod:`~fabml.engine.param_groups` (optimizer groups) and :mod:`~fabml.engine.schedules`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

import fabml
from fabml.config import to_dict
from fabml.engine import distributed as dist_utils
from fabml.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from fabml.engine.hardware import (
    HardwareInfo,
    device_name,
    enable_tf32,
    peak_rss_mb,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
    use_channels_last,
)
from fabml.engine.logging import MetricsLogger, console, progress_bar
from fabml.engine.method import Method
from fabml.engine.param_groups import check_groups
from fabml.engine.runs import recorded_job
from fabml.engine.schedules import apply_lr
from fabml.engine.stages import StagePlan, StageSpan, trainable_names
from fabml.engine.train_config import (  # noqa: F401  (TrainConfig and its checks are public here too)
    OPERATIONAL_KEYS,
    OPTIMIZERS,
    RESUMABLE_CHANGES,
    SCHEDULERS,
    StageConfig,
    TrainConfig,
    check_config,
)
from fabml.engine.train_state import LoopState, changed_settings, load_training_state, make_checkpoint
from fabml.engine.weight_average import WeightAverage
from fabml.errors import ConfigError, TrainingError

# Epoch-row columns that measure the machine, not the training: they differ between identical runs.
MEASURED_KEYS = ("samples_per_s", "epoch_seconds", "peak_rss_mb")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; the method itself is trained in place.

    ``epochs_completed`` counts finished epochs only. ``history`` has one row per finished
    epoch, plus a last row for the unfinished epoch when ``max_steps`` stopped the run inside it.
    """

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    epochs_completed: int
    global_step: int
    stopped_reason: str  # completed | early_stopping | time_budget | max_steps
    seconds: float
    checkpoint_dir: Path = field(default_factory=Path)
    batches_into_epoch: int = 0  # > 0: max_steps stopped the run this many batches into epoch epochs_completed + 1
    stage: str = "train"  # the stage active at the end


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors anywhere in (nested) tuples/lists/dicts to ``device``; 4-D float tensors to NHWC if asked."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if channels_last and out.dim() == 4 and out.is_floating_point():
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, channels_last) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    for value in values:
        n = _batch_len(value)
        if n:
            return n
    return 0


@runtime_checkable
class EpochBatchSampler(Protocol):
    """What ``Trainer(batch_sampler=...)`` needs: an iterable of index lists (one per batch, this
    rank's only), ``len`` (batches per epoch on this rank) and ``set_epoch(epoch)``, after which the
    batches are a function of the epoch alone (that is what makes a mid-epoch resume exact).
    ``batch_size`` and ``world_size`` are read when present (e.g.
    :class:`fabml.data.pk_sampler.PKBatchSampler`)."""

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def validates_in(epoch: int, span: StageSpan, every: int) -> bool:
    """Whether 0-based ``epoch`` of the stage ``span`` runs validation: every ``every``-th epoch of the
    stage (counted from its first epoch) and always the stage's last epoch."""
    return (epoch + 1 - span.first_epoch) % max(1, int(every)) == 0 or epoch + 1 >= span.end_epoch


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the loader generator for one (epoch, rank): fixes shuffling and worker seeds."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + epoch) % 2**63


class Trainer:
    """Train ``method`` on ``train_dataset`` with the settings ``cfg``, writing into ``run_dir``.

    Construction joins the torchrun process group (if any), picks device and
    precision, moves the method there and builds the data loader, so
    :attr:`total_steps`, :attr:`steps_per_epoch` and :attr:`hardware` are known
    before :meth:`fit`.

    What the loop offers a method (see :class:`~fabml.engine.method.Method` for the hooks):

    - **Parameter groups** from ``method.param_groups()``, each with an ``lr_scale`` (its rate is
      ``schedule(step) * lr_scale``) and its own ``weight_decay``
      (:func:`~fabml.engine.param_groups.decay_groups` puts biases and norm weights in a
      no-decay group).
    - **Freezing** by ``method.frozen_prefixes(epoch)``: the named parts get ``requires_grad=False``
      for that epoch and no optimizer update; every group parameter is in the optimizer from the
      start, so a resume across the unfreeze epoch is exact.
    - **Stages** (``train.stages``): a sequence of stages, each with its own epochs, peak lr,
      schedule and trainable part; ``method.set_stage`` is told the active one, checkpoints
      record it and ``metrics.csv`` gets a ``stage`` column. The best-checkpoint and
      early-stopping bookkeeping restarts with each stage (losses of different stages do not
      compare); early stopping ends the run.
    - **Work without gradients** after each epoch: ``method.no_grad_work(epoch)`` on the main
      process, in eval mode under ``torch.no_grad()``, logged with the epoch row.
    - **Resume** (``fit(resume=True)``, or ``train.auto_resume`` when the settings are
      unchanged). The learning-rate schedule is a function of the *current* config and the step
      count, rebuilt on every start: a run resumed with a changed ``epochs`` or ``max_steps``
      continues on the schedule of the new length at its current step (the cosine is defined
      over the new total steps, so the rate moves from the old curve to the new one at that step
      and never jumps back to the warm-up or the peak), and ``method.on_step_end`` /
      ``on_fit_start`` receive the same new total (BYOL's tau follows it). With settings unchanged
      a resumed run is bit-identical to an uninterrupted one, also when ``max_steps`` stopped it
      inside an epoch: that checkpoint records the batch position and the epoch's running sums,
      and the resumed run replays the epoch's seeded loader order, skips the batches already
      trained and restores the random state of the moment it stopped.
    - **Validation every N epochs** (``train.validate_every``): the ``validate`` callback runs every
      N-th epoch of a stage and in its last epoch; epochs without it keep no monitor value (no best
      checkpoint, no patience count). ``train.overfit_ratio`` > 0 warns once per fit on stderr when
      ``val_loss / loss`` exceeds it. ``train.compile`` runs the loop's model through ``torch.compile``.
    - **Weight average** (``train.ema_decay`` > 0, :mod:`fabml.engine.weight_average`): updated after
      every optimizer step; validation and the work without gradients run on it, checkpoints store
      it as ``method`` (the training weights beside it, so a resume is exact), and the method holds
      it when :meth:`fit` returns. Each stage starts from the previous stage's average.
    - **Batch sampler** (``batch_sampler``, e.g. P×K batches): the loader takes its batches from
      it instead of shuffling ``batch_size`` samples; it is told the epoch (``set_epoch``) before
      each one, and it must build each rank's own batches (its ``world_size`` is checked). Its
      ``batch_size`` (when it has one) is the per-rank batch; ``train.batch_size`` and
      ``drop_last`` are then not used for loading.
    """

    def __init__(
        self,
        method: Method,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        validate: Callable[[Method], Mapping[str, float]] | None = None,
        job_config: Mapping[str, Any] | None = None,
        batch_sampler: EpochBatchSampler | Callable[[int, int], EpochBatchSampler] | None = None,
    ) -> None:
        """``job_config``: the job's whole config as a dict (e.g. ``to_dict(cfg)``); saved in every
        checkpoint and compared by ``train.auto_resume`` (its ``train`` entry is compared as ``cfg``).
        ``batch_sampler``: batches of indices for this rank (see the class docstring), or a function
        ``(rank, world_size) -> sampler`` called once the process group is joined (what a job passes,
        since a job does not know its rank)."""
        check_config(cfg)
        self.method = method
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.validate = validate
        self.job_config = dict(job_config) if job_config is not None else None
        self.dist = dist_utils.init_distributed()
        self.is_main = self.dist.rank == 0
        if callable(batch_sampler) and not isinstance(batch_sampler, EpochBatchSampler):
            batch_sampler = batch_sampler(self.dist.rank, self.dist.world_size)
        self.batch_sampler = batch_sampler
        if batch_sampler is not None:
            if not isinstance(batch_sampler, EpochBatchSampler):
                raise ConfigError(f"batch_sampler {type(batch_sampler).__name__} needs __iter__, __len__ and set_epoch")
            sampler_world = int(getattr(batch_sampler, "world_size", self.dist.world_size))
            if sampler_world != self.dist.world_size:
                raise ConfigError(
                    f"the batch sampler was built for world size {sampler_world}, the job runs {self.dist.world_size} "
                    "processes: build it with this process's rank and the world size"
                )
        elif cfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} is not divisible by the world size {self.dist.world_size}; "
                "batch_size is global, pick a multiple"
            )
        self.per_rank_batch_size = cfg.batch_size // self.dist.world_size
        if batch_sampler is not None:
            self.per_rank_batch_size = int(getattr(batch_sampler, "batch_size", self.per_rank_batch_size))
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            enable_tf32()
        self.channels_last = use_channels_last(cfg.channels_last, self.device)
        self.num_workers = resolve_num_workers(cfg.num_workers, self.dist.local_world_size)

        method.to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        if cfg.sync_batchnorm and self.dist.is_distributed:
            if self.device.type != "cuda":
                raise ConfigError("train.sync_batchnorm=true needs CUDA devices; set it to false for CPU runs")
            nn.SyncBatchNorm.convert_sync_batchnorm(method)

        self._generator = torch.Generator()
        self.sampler: DistributedSampler | RandomSampler | None = None  # None: the batch sampler decides
        if batch_sampler is None and self.dist.is_distributed:
            self.sampler = DistributedSampler(
                train_dataset,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=cfg.seed,
                drop_last=cfg.drop_last,
            )
        elif batch_sampler is None:
            self.sampler = RandomSampler(train_dataset, generator=self._generator)
        loading: dict[str, Any] = (
            {"batch_sampler": batch_sampler} if batch_sampler is not None else
            {"batch_size": self.per_rank_batch_size, "sampler": self.sampler, "drop_last": cfg.drop_last}
        )
        self.loader = DataLoader(
            train_dataset,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            generator=self._generator,
            **loading,
        )
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"the training set ({len(train_dataset)} samples) is smaller than one batch of "
                f"{self.per_rank_batch_size} per rank: lower train.batch_size or set train.drop_last=false"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.plan = StagePlan(cfg, self.steps_per_epoch)
        self.total_epochs = self.plan.total_epochs
        self.total_steps = self.plan.total_steps
        self.hardware = HardwareInfo(
            device=str(self.device),
            device_name=device_name(self.device),
            precision=self.precision,
            world_size=self.dist.world_size,
            per_rank_batch=self.per_rank_batch_size,
            num_workers=self.num_workers,
            threads=torch.get_num_threads(),
            channels_last=self.channels_last,
            tf32=self.device.type == "cuda",
        )
        self.checkpoints = CheckpointManager(self.run_dir, cfg.monitor_mode)
        self.global_step = 0
        self._model: nn.Module | None = None
        self._latest: dict[str, Any] | None = None  # latest.pt, read once per fit
        self.ema: WeightAverage | None = None

    # --------------------------------------------------------------- resume
    def will_resume(self, resume: bool = False, fresh: bool = False) -> bool:
        """Whether :meth:`fit` with these flags continues the run dir's checkpoint.

        Raises :class:`ConfigError` for both flags, or for a checkpoint without either flag
        unless ``train.auto_resume`` is on and the checkpoint was written with the same
        settings (then True); with other settings the error names each changed setting.
        """
        if resume and fresh:
            raise ConfigError("pass either --resume or --fresh, not both")
        if resume or fresh or not self.checkpoints.has_checkpoint():
            return resume
        if self.cfg.auto_resume and self.checkpoints.latest_path.is_file():
            changed = changed_settings(self._load_latest(), to_dict(self.cfg), self.job_config, OPERATIONAL_KEYS)
            if not changed:
                return True
            raise ConfigError(
                f"train.auto_resume: the checkpoint in {self.run_dir} was written with other settings "
                f"({'; '.join(changed)}); pass --resume to continue it with the new settings or --fresh to start over"
            )
        raise ConfigError(
            f"run dir {self.run_dir} already has a checkpoint: pass --resume to continue or --fresh to start over"
        )

    def _load_latest(self) -> dict[str, Any]:
        if self._latest is None:
            self._latest = self.checkpoints.load_latest(map_location="cpu")
        return self._latest

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False, fresh: bool = False) -> TrainResult:
        """Train through every stage (``cfg.epochs`` without stages) or until a stop rule fires.

        ``resume`` continues from ``latest.pt`` (see the class docstring for what changes of
        settings mean); ``fresh`` deletes the run dir's checkpoints, metrics and TensorBoard logs
        first. With neither, an existing checkpoint is an error unless ``train.auto_resume``.
        """
        cfg = self.cfg
        started = time.monotonic()
        self._latest, self._model = None, None
        resume = self.will_resume(resume, fresh)
        if fresh and self.is_main:
            self.checkpoints.clear()
            (self.run_dir / "metrics.csv").unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        dist_utils.barrier()

        seed_everything(cfg.seed + self.dist.rank)
        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        loop, rng_at_stop, resumed = LoopState(), None, False
        if resume and self.checkpoints.latest_path.is_file():
            loop, rng_at_stop = self._restore()
            resumed = True
        elif resume and self.is_main:
            console.print(f"no checkpoint in {self.checkpoints.dir}; starting from scratch")
        self.ema = WeightAverage(self.method, cfg.ema_decay) if cfg.ema_decay > 0 else None
        if self.ema is not None and resumed:
            latest = self._load_latest()
            if "ema_updates" in latest:  # else the checkpoint had no average: it starts from the weights
                self.ema.load(latest["method"], latest["ema_updates"])
        self._latest = None
        self._overfit_warned = False
        self.global_step = loop.global_step
        self.method.on_fit_start(self.global_step, self.total_steps)

        stopped = "completed"
        if cfg.max_steps and self.global_step >= cfg.max_steps:
            stopped = "max_steps"
        elif cfg.early_stop_patience and loop.bad_epochs >= cfg.early_stop_patience:
            stopped = "early_stopping"  # a resumed run that had already stopped early
        history = loop.history
        # A run that stops where it starts keeps the row of the epoch its max_steps stop interrupted.
        tail_rows = [dict(loop.partial["row"])] if stopped != "completed" and loop.partial and "row" in loop.partial else []

        logger = MetricsLogger(
            self.run_dir, cfg.tensorboard, enabled=self.is_main, purge_step=self.global_step + 1 if resumed else None
        )
        # On resume: drop rows a crash (or a mid-epoch stop) left after the checkpoint; on a new run: stale rows.
        logger.rewrite(history + tail_rows)
        if self.is_main:
            self._write_run_info(loop, resumed)
            console.print(self.hardware.describe(), highlight=False)
            if self.plan.staged:
                plan = ", ".join(f"{s.stage.name} {s.stage.epochs} epochs" for s in self.plan.spans)
                console.print(f"stages: {plan} (train.epochs is not used)", highlight=False)
            if resumed:
                where = f"{loop.batch} batches into epoch {loop.epoch + 1}" if loop.batch else f"after epoch {loop.epoch}"
                console.print(f"resumed {self.run_dir} {where} (step {self.global_step})", highlight=False)

        span = self.plan.span_at(loop.epoch)
        trainable: frozenset[int] | None = None
        try:
            while loop.epoch < self.total_epochs and stopped == "completed":
                epoch = loop.epoch
                span = self._enter_stage(span, loop, first=trainable is None)
                trainable = self._apply_freezing(epoch, span, trainable)
                self.method.on_epoch_start(epoch)
                row, batches = self._train_epoch(self._wrap(), epoch, logger, span, loop, rng_at_stop)
                rng_at_stop = None
                if self.plan.staged:
                    row["stage"] = span.stage.name
                if batches < self.batches_per_epoch:  # max_steps inside the epoch: save the position
                    loop.batch, loop.global_step = batches, self.global_step
                    loop.partial = {**(loop.partial or {}), "row": row}
                    rng_states = dist_utils.all_gather_object(capture_rng_state())
                    if self.is_main:
                        self.checkpoints.save(self._checkpoint(loop, span, rng_states), False)
                        logger.log(row, step=self.global_step)
                        self._print_epoch(row, loop.best, loop.best_epoch, partial=batches)
                    tail_rows, stopped = [row], "max_steps"
                    break
                dist_utils.broadcast_buffers(self.method)
                row.update({k: float(v) for k, v in self.method.on_epoch_end(epoch).items()})
                if type(self.method).no_grad_work is not Method.no_grad_work:
                    row.update(self._main_no_grad(lambda: self.method.no_grad_work(epoch)))
                validated = self.validate is not None and validates_in(epoch, span, cfg.validate_every)
                if validated:
                    row.update(self._main_no_grad(lambda: self.validate(self.method)))
                    self._warn_overfit(row, epoch)
                skipped = self.validate is not None and not validated and cfg.monitor not in row
                if cfg.monitor not in row and not skipped:
                    raise ConfigError(
                        f"train.monitor='{cfg.monitor}' is not a logged metric; available: {', '.join(row)}"
                    )
                is_best = False
                if not skipped:  # an epoch without validation neither improves nor counts towards patience
                    value = float(row[cfg.monitor])
                    is_best = self.checkpoints.is_better(value, loop.best)
                    if is_best:
                        loop.best, loop.best_epoch, loop.bad_epochs = value, epoch + 1, 0
                    else:
                        loop.bad_epochs += 1
                history.append(row)
                loop.epoch, loop.batch, loop.partial, loop.global_step = epoch + 1, 0, None, self.global_step
                rng_states = dist_utils.all_gather_object(capture_rng_state())
                if self.is_main:
                    self.checkpoints.save(self._checkpoint(loop, span, rng_states), is_best)
                    logger.log(row, step=self.global_step)
                    self._print_epoch(row, loop.best, loop.best_epoch)
                reason = None
                if loop.epoch >= self.total_epochs:
                    pass  # the last epoch ran: the run is complete, whatever the clock or patience says
                elif cfg.early_stop_patience and loop.bad_epochs >= cfg.early_stop_patience:
                    reason = "early_stopping"
                elif cfg.max_steps and self.global_step >= cfg.max_steps:
                    reason = "max_steps"
                elif cfg.max_minutes and (time.monotonic() - started) / 60 >= cfg.max_minutes:
                    reason = "time_budget"
                # Rank 0 decides: clocks differ between ranks, and all must stop together.
                stopped = dist_utils.broadcast_object(reason) or "completed"
        finally:
            logger.close()
            self._unfreeze_all()
        if self.ema is not None:
            self.ema.copy_to(self.method)
        dist_utils.barrier()
        if self.is_main and stopped != "completed":
            where = f"{loop.batch} batches into epoch {loop.epoch + 1}" if loop.batch else f"after epoch {loop.epoch}"
            console.print(f"stopped {where}: {stopped.replace('_', ' ')}", highlight=False)
        return TrainResult(
            history=history + tail_rows,
            best_metric=loop.best,
            best_epoch=loop.best_epoch,
            epochs_completed=loop.epoch,
            global_step=self.global_step,
            stopped_reason=stopped,
            seconds=time.monotonic() - started,
            checkpoint_dir=self.checkpoints.dir,
            batches_into_epoch=loop.batch,
            stage=span.stage.name,
        )

    # --------------------------------------------------- stages and freezing
    def _enter_stage(self, previous: StageSpan, loop: LoopState, first: bool) -> StageSpan:
        """The stage of epoch ``loop.epoch``; at a stage's first batch: reset the optimizer's moments
        (``reset_optimizer``) and the best/patience bookkeeping. Tells the method when the stage changes."""
        span = self.plan.span_at(loop.epoch)
        if span.index == previous.index and not first:
            return span
        if loop.epoch == span.first_epoch and loop.batch == 0 and span.index > 0:
            if span.stage.reset_optimizer:
                self.optimizer.state.clear()
            loop.best, loop.best_epoch, loop.bad_epochs = None, None, 0
            if self.ema is not None:  # the stage continues from the previous stage's average
                self.ema.copy_to(self.method)
                self.ema.restart(self.method)
        self.method.set_stage(span.stage)
        if self.is_main and self.plan.staged:
            console.print(
                f"stage {span.index + 1}/{len(self.plan.spans)} '{span.stage.name}': epochs "
                f"{span.first_epoch + 1}-{span.end_epoch}", highlight=False,
            )
        return span

    def _apply_freezing(self, epoch: int, span: StageSpan, previous: frozenset[int] | None) -> frozenset[int]:
        """Set ``requires_grad`` of the optimizer's parameters for ``epoch``; rebuild DDP when the set changes."""
        names = list(self._param_names)
        train = trainable_names(names, span.stage, set(self.method.frozen_prefixes(epoch)), self._all_names)
        if not train:
            raise TrainingError(
                f"nothing trains in epoch {epoch + 1} (stage '{span.stage.name}'): its trainable part and "
                "the method's frozen prefixes leave no parameter of the optimizer"
            )
        ids = frozenset(id(param) for name, param in zip(names, self._params) if name in train)
        for param in self._params:
            param.requires_grad_(id(param) in ids)
        if previous is not None and ids != previous:
            self._model = None  # DDP registers the parameters that need gradients when it is built
        return ids

    def _unfreeze_all(self) -> None:
        """After fit: the optimizer's parameters need gradients again, as the method built them."""
        for param in getattr(self, "_params", []):
            param.requires_grad_(True)

    # ---------------------------------------------------------------- epoch
    def _train_epoch(
        self,
        model: nn.Module,
        epoch: int,
        logger: MetricsLogger,
        span: StageSpan,
        loop: LoopState,
        rng_at_stop: dict[str, Any] | None,
    ) -> tuple[dict[str, float], int]:
        """One pass over the loader; returns (epoch row of rank-averaged means, batches trained).

        When ``loop.batch`` > 0 (a resume inside the epoch) the loader is replayed in the same
        seeded order, the first ``loop.batch`` batches are loaded and dropped (so worker random
        streams advance as before), the random state of the stop is restored and the epoch's
        running sums continue from ``loop.partial``. Fewer batches than ``batches_per_epoch``
        come back when ``max_steps`` is reached inside the epoch.
        """
        cfg = self.cfg
        self.method.train()
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        self._generator.manual_seed(_epoch_seed(cfg.seed, epoch, self.dist.rank))
        inner = getattr(model, "_orig_mod", model)  # under torch.compile: the module it wraps
        is_ddp = isinstance(inner, DistributedDataParallel)
        accum, n_batches, skip = cfg.grad_accum_steps, self.batches_per_epoch, loop.batch
        partial = loop.partial or {}
        sums: dict[str, torch.Tensor] = {k: torch.as_tensor(v).to(self.device) for k, v in (partial.get("sums") or {}).items()}
        n_seen, samples = int(partial.get("n_seen", 0)), int(partial.get("samples", 0))
        skipped_samples, batches = samples, skip
        lr = self.plan.lr_at(epoch, self.global_step)
        autocast = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
            enabled=self.precision != "fp32",
        )
        t0 = time.perf_counter()
        title = f"epoch {epoch + 1}/{self.total_epochs}"
        with progress_bar(n_batches, title, enabled=self.is_main) as bar:
            for i, batch in enumerate(self.loader):
                if i < skip:
                    bar.update(1)
                    if i == skip - 1 and rng_at_stop is not None:
                        restore_rng_state(rng_at_stop)
                    continue
                group_start = i - i % accum
                group_size = min(accum, n_batches - group_start)
                last_in_group = i - group_start == group_size - 1
                batch = move_to_device(batch, self.device, self.channels_last)
                samples += _batch_len(batch)
                sync = inner.no_sync() if is_ddp and not last_in_group else nullcontext()
                with sync:
                    with autocast:
                        out = model(batch)
                    loss = out["loss"]
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise self._nan_error(loss_value, epoch, self.global_step + 1)
                    self.scaler.scale(loss / group_size).backward()
                for key, value in out.items():
                    value = torch.as_tensor(value, device=self.device).detach().float()
                    sums[key] = sums[key] + value if key in sums else value
                n_seen += 1
                batches = i + 1
                speed = (samples - skipped_samples) * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                if not last_in_group:
                    bar.update(1, loss=loss_value, samples_per_s=speed)
                    continue
                lr = self.plan.lr_at(epoch, self.global_step)
                apply_lr(self.optimizer, lr)
                grad_norm = self._optimizer_step()
                if self.ema is not None:
                    self.ema.update(self.method)
                if grad_norm is not None:
                    sums["grad_norm"] = sums["grad_norm"] + grad_norm * group_size if "grad_norm" in sums else grad_norm * group_size
                self.global_step += 1
                self.method.on_step_end(self.global_step, self.total_steps)
                if cfg.log_every and self.global_step % cfg.log_every == 0:
                    logger.log_step({"loss": loss_value, "lr": lr}, self.global_step)
                bar.update(1, loss=loss_value, lr=lr, samples_per_s=speed)
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    break
        seconds = time.perf_counter() - t0
        if batches < n_batches:
            loop.partial = {"sums": {k: v.detach().cpu() for k, v in sums.items()}, "n_seen": n_seen, "samples": samples}
        keys = list(sums)
        means = dist_utils.all_reduce_mean(torch.stack([sums[k] for k in keys]).to(self.device) / n_seen)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step, "lr": lr}
        row.update({k: float(v) for k, v in zip(keys, means.tolist())})
        row["samples_per_s"] = (samples - skipped_samples) * self.dist.world_size / max(seconds, 1e-9)
        row["epoch_seconds"] = seconds
        row["peak_rss_mb"] = max(dist_utils.all_gather_object(peak_rss_mb()))  # the largest rank
        return row, batches

    def _optimizer_step(self) -> torch.Tensor | None:
        """Clip (after unscaling), step optimizer and scaler; returns the pre-clip grad norm."""
        grad_norm = None
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip).detach().float()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _main_no_grad(self, fn: Callable[[], Mapping[str, float]]) -> dict[str, float]:
        """``fn()`` on rank 0 in eval mode without grad; its scalars reach every rank."""
        values: dict[str, float] | None = None
        if self.is_main:
            self.method.eval()
            averaged = self.ema.swapped_in(self.method) if self.ema is not None else nullcontext()
            try:
                with torch.no_grad(), averaged:
                    values = {k: float(v) for k, v in fn().items()}
            finally:
                self.method.train()
        return dist_utils.broadcast_object(values) or {}

    def _nan_error(self, value: float, epoch: int, step: int) -> TrainingError:
        what = "nan" if value != value else "inf"
        path = self.checkpoints.latest_path
        where = str(path) if path.is_file() else "none (no epoch finished yet)"
        return TrainingError(
            f"loss became {what} at epoch {epoch + 1} step {step}; the last good checkpoint is {where}; "
            "lower the lr or enable grad_clip"
        )

    # ---------------------------------------------------------------- setup
    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over ``method.param_groups()``; a group without ``weight_decay`` gets the config's."""
        groups = check_groups(self.method.param_groups(), self.method)
        if not groups:
            raise TrainingError(f"{type(self.method).__name__} has no trainable parameters")
        cfg = self.cfg
        for group in groups:
            group.setdefault("weight_decay", cfg.weight_decay)
        names = {id(p): n for n, p in self.method.named_parameters()}
        self._params = [p for group in groups for p in group["params"]]
        self._param_names = [names[id(p)] for p in self._params]
        self._all_names = list(names.values())
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def _wrap(self) -> nn.Module:
        """The module the loop calls: the method itself, or a DDP wrapper around it."""
        if self._model is None:
            if self.dist.is_distributed:
                self._model = DistributedDataParallel(
                    self.method,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=False,
                )
            else:
                self._model = self.method
            if self.cfg.compile:
                self._model = torch.compile(self._model)
        return self._model

    def _warn_overfit(self, row: Mapping[str, Any], epoch: int) -> None:
        """One stderr warning per fit when ``val_loss / loss`` exceeds ``train.overfit_ratio`` (0 = off)."""
        ratio_limit = self.cfg.overfit_ratio
        if ratio_limit <= 0 or self._overfit_warned or "val_loss" not in row or "loss" not in row:
            return
        loss, val = float(row["loss"]), float(row["val_loss"])
        if loss > 0 and val / loss > ratio_limit:
            self._overfit_warned = True
            if self.is_main:
                console.print(
                    f"warning: possible overfitting in epoch {epoch + 1}: val_loss {val:.4g} is {val / loss:.1f}x "
                    f"the training loss {loss:.4g} (train.overfit_ratio={ratio_limit:g}); consider more data, "
                    "more regularisation or early stopping (train.early_stop_patience)", highlight=False,
                )

    # ----------------------------------------------------------- checkpoint
    def _checkpoint(self, loop: LoopState, span: StageSpan, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        ckpt = make_checkpoint(
            self.method, self.optimizer, self.scaler, loop, span.stage.name, rng_states, to_dict(self.cfg),
            self.job_config, self.dist.world_size,
        )
        if self.ema is not None:  # a job loads ``method``: the average; a resume trains on from the live weights
            ckpt["training_weights"] = ckpt["method"]
            ckpt["method"] = self.ema.averaged_state(self.method)
            ckpt["ema_updates"] = self.ema.updates
        return ckpt

    def _restore(self) -> tuple[LoopState, dict[str, Any] | None]:
        """Load ``latest.pt`` into method, optimizer, scaler and RNGs; returns the loop state and,
        for a checkpoint written inside an epoch, the random state to restore after the replayed batches."""
        ckpt = self._load_latest()
        loop = load_training_state(ckpt, self.method, self.optimizer, self.scaler)
        rng = ckpt.get("rng") or []
        rng_at_stop = None
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
            rng_at_stop = rng[self.dist.rank] if loop.batch else None
        else:
            seed_everything(_epoch_seed(self.cfg.seed, loop.epoch, self.dist.rank))
            if self.is_main:
                console.print(
                    f"warning: checkpoint written with world size {len(rng)}, resuming with "
                    f"{self.dist.world_size}; random streams differ from an uninterrupted run", highlight=False,
                )
        if loop.batch >= self.batches_per_epoch:
            raise TrainingError(
                f"the checkpoint stopped {loop.batch} batches into an epoch, but an epoch now has "
                f"{self.batches_per_epoch} batches: resume with the batch size and data it was written with, or --fresh"
            )
        if self.is_main:
            changed = changed_settings(ckpt, to_dict(self.cfg), self.job_config, RESUMABLE_CHANGES)
            if changed:
                console.print(f"warning: resuming with changed settings: {'; '.join(changed)}", highlight=False)
            old = ckpt.get("config") or {}
            if any(k in old and old[k] != v for k, v in to_dict(self.cfg).items() if k in ("epochs", "max_steps", "stages")):
                console.print(
                    f"the run's length changed: the learning rate continues on the schedule of the new length "
                    f"({self.total_steps} steps) from step {loop.global_step}", highlight=False,
                )
        return loop, rng_at_stop

    # -------------------------------------------------------------- reports
    def _write_run_info(self, loop: LoopState, resumed: bool) -> None:
        """``run.json``: what is needed to repeat the run; a resume appends to ``resumes``."""
        path = self.run_dir / "run.json"
        start = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv),
            "hardware": self.hardware.describe(),
            "world_size": self.dist.world_size,
        }
        info: dict[str, Any]
        if resumed and path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            info.setdefault("resumes", []).append(
                {**start, "from_epoch": loop.epoch, "from_batch": loop.batch, "from_step": loop.global_step}
            )
        else:
            job = recorded_job(self.run_dir)  # named by the job's run folder (fabml.engine.runs): kept
            info = {
                **({"job": job} if job else {}),
                "seed": self.cfg.seed,
                "versions": {
                    "fabml": fabml.__version__,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "python": sys.version.split()[0],
                },
                **start,
                "train_config": to_dict(self.cfg),
            }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def _print_epoch(
        self, row: Mapping[str, Any], best: float | None, best_epoch: int | None, partial: int = 0
    ) -> None:
        title = f"epoch {int(row['epoch'])}/{self.total_epochs}"
        if partial:
            title += f" (stopped after {partial}/{self.batches_per_epoch} batches)"
        parts = [title, f"loss {row['loss']:.4g}", f"lr {row['lr']:.2e}"]
        if "stage" in row:
            parts.insert(1, f"stage {row['stage']}")
        if self.cfg.monitor != "loss" and self.cfg.monitor in row:
            parts.append(f"{self.cfg.monitor} {row[self.cfg.monitor]:.4g}")
        if best is not None:
            parts.append(f"best {best:.4g} (epoch {best_epoch})")
        parts.append(f"{row['samples_per_s']:,.0f} samples/s")
        parts.append(f"{row['epoch_seconds']:.1f} s")
        console.print(" | ".join(parts), highlight=False)

