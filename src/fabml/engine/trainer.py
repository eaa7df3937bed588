"""The one training loop every job uses.

The trainer owns device, precision, DDP, the data loader, optimizer, LR schedule,
gradient accumulation and clipping, checkpoints, resume, early stopping and logging.
A job supplies a :class:`~fabml.engine.method.Method` (models + loss) and a dataset.
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
from typing import Any, Callable, Mapping

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
from fabml.engine.schedules import WarmupCosineRestarts
from fabml.errors import ConfigError, TrainingError

OPTIMIZERS = ("adamw", "adam", "sgd")
# Epoch-row columns that measure the machine, not the training: they differ between identical runs.
MEASURED_KEYS = ("samples_per_s", "epoch_seconds", "peak_rss_mb")
SCHEDULERS = ("cosine_restarts", "constant")
# Settings that may change between a run and its resume without a warning.
_RESUMABLE_CHANGES = {"epochs", "max_minutes", "max_steps", "early_stop_patience", "tensorboard", "log_every", "num_workers"}


@dataclass
class TrainConfig:
    """Settings of the training loop (the ``train:`` section of every job's config).

    ``batch_size`` is GLOBAL per micro-step: each of ``world_size`` ranks loads
    ``batch_size // world_size`` samples; one optimizer step sees
    ``batch_size * grad_accum_steps`` samples. Schedule lengths are given in epochs and
    converted to optimizer steps.
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"  # adamw | adam | sgd
    momentum: float = 0.9  # sgd only
    grad_accum_steps: int = 1
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: str | bool = "auto"
    num_workers: int = -1  # -1 = auto
    scheduler: str = "cosine_restarts"  # cosine_restarts | constant
    t0_epochs: float = 0.0  # first cosine cycle length; 0 = one cycle over the whole run
    t_mult: int = 1
    eta_max: float | None = None  # peak lr; None = lr
    warmup_epochs: float = 0.0  # linear warm-up at the start of each cycle (T_up)
    gamma: float = 1.0  # peak lr multiplier per restart
    eta_min: float = 0.0
    early_stop_patience: int = 0  # epochs without improvement; 0 = off
    monitor: str = "loss"
    monitor_mode: str = "min"  # min | max
    seed: int = 0
    tensorboard: bool = False
    max_minutes: float = 0.0  # stop after the epoch that passes this budget; 0 = none
    max_steps: int = 0  # stop after this many optimizer steps; 0 = none
    log_every: int = 10  # optimizer steps between per-step TensorBoard scalars
    sync_batchnorm: bool = False
    drop_last: bool = True


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; the method itself is trained in place."""

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    epochs_completed: int
    global_step: int
    stopped_reason: str  # completed | early_stopping | time_budget | max_steps
    seconds: float
    checkpoint_dir: Path = field(default_factory=Path)


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


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the loader generator for one (epoch, rank): fixes shuffling and worker seeds."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + epoch) % 2**63


class Trainer:
    """Train ``method`` on ``train_dataset`` with the settings ``cfg``, writing into ``run_dir``.

    Construction joins the torchrun process group (if any), picks device and
    precision, moves the method there and builds the data loader, so
    :attr:`total_steps`, :attr:`steps_per_epoch` and :attr:`hardware` are known
    before :meth:`fit`.
    """

    def __init__(
        self,
        method: Method,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        validate: Callable[[Method], Mapping[str, float]] | None = None,
    ) -> None:
        _check_config(cfg)
        self.method = method
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.validate = validate
        self.dist = dist_utils.init_distributed()
        self.is_main = self.dist.rank == 0
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} is not divisible by the world size {self.dist.world_size}; "
                "batch_size is global, pick a multiple"
            )
        self.per_rank_batch_size = cfg.batch_size // self.dist.world_size
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
        if self.dist.is_distributed:
            self.sampler: DistributedSampler | RandomSampler = DistributedSampler(
                train_dataset,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=cfg.seed,
                drop_last=cfg.drop_last,
            )
        else:
            self.sampler = RandomSampler(train_dataset, generator=self._generator)
        self.loader = DataLoader(
            train_dataset,
            batch_size=self.per_rank_batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=cfg.drop_last,
            generator=self._generator,
        )
        self.batches_per_epoch = len(self.loader)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"the training set ({len(train_dataset)} samples) is smaller than one batch of "
                f"{self.per_rank_batch_size} per rank: lower train.batch_size or set train.drop_last=false"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
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

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False, fresh: bool = False) -> TrainResult:
        """Train until ``cfg.epochs`` (or an early stop); ``resume`` continues from ``latest.pt``,
        ``fresh`` deletes the run dir's checkpoints, metrics and TensorBoard logs first."""
        cfg = self.cfg
        started = time.monotonic()
        if resume and fresh:
            raise ConfigError("pass either --resume or --fresh, not both")
        if self.checkpoints.has_checkpoint() and not (resume or fresh):
            raise ConfigError(
                f"run dir {self.run_dir} already has a checkpoint: pass --resume to continue or --fresh to start over"
            )
        if fresh and self.is_main:
            self.checkpoints.clear()
            (self.run_dir / "metrics.csv").unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        dist_utils.barrier()

        seed_everything(cfg.seed + self.dist.rank)
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        start_epoch, best, best_epoch, bad_epochs, history = 0, None, None, 0, []
        if resume and self.checkpoints.latest_path.is_file():
            start_epoch, best, best_epoch, bad_epochs, history = self._restore()
        elif resume and self.is_main:
            console.print(f"no checkpoint in {self.checkpoints.dir}; starting from scratch")

        model = self._wrap()
        logger = MetricsLogger(
            self.run_dir,
            cfg.tensorboard,
            enabled=self.is_main,
            purge_step=self.global_step + 1 if start_epoch else None,
        )
        # On resume: drop rows a crash left after the checkpoint; on a new run: drop stale rows.
        logger.rewrite(history)
        if self.is_main:
            self._write_run_info(start_epoch)
            console.print(self.hardware.describe(), highlight=False)
            if start_epoch:
                console.print(f"resumed {self.run_dir} after epoch {start_epoch} (step {self.global_step})")

        stopped = "completed"
        if cfg.max_steps and self.global_step >= cfg.max_steps:
            stopped = "max_steps"
        elif cfg.early_stop_patience and bad_epochs >= cfg.early_stop_patience:
            stopped = "early_stopping"  # a resumed run that had already stopped early
        epoch = start_epoch
        try:
            while epoch < cfg.epochs and stopped == "completed":
                row, hit_max_steps = self._train_epoch(model, epoch, logger)
                dist_utils.broadcast_buffers(self.method)
                row.update({k: float(v) for k, v in self.method.on_epoch_end(epoch).items()})
                row.update(self._run_validation())
                if cfg.monitor not in row:
                    raise ConfigError(
                        f"train.monitor='{cfg.monitor}' is not a logged metric; available: {', '.join(row)}"
                    )
                value = float(row[cfg.monitor])
                if self.checkpoints.is_better(value, best):
                    best, best_epoch, bad_epochs, is_best = value, epoch + 1, 0, True
                else:
                    bad_epochs, is_best = bad_epochs + 1, False
                history.append(row)
                rng_states = dist_utils.all_gather_object(capture_rng_state())
                if self.is_main:
                    self.checkpoints.save(
                        self._state(epoch + 1, best, best_epoch, bad_epochs, history, rng_states), is_best
                    )
                    logger.log(row, step=self.global_step)
                    self._print_epoch(row, best, best_epoch)
                epoch += 1
                reason = None
                if epoch >= cfg.epochs:
                    pass  # the last epoch ran: the run is complete, whatever the clock or patience says
                elif cfg.early_stop_patience and bad_epochs >= cfg.early_stop_patience:
                    reason = "early_stopping"
                elif hit_max_steps:
                    reason = "max_steps"
                elif cfg.max_minutes and (time.monotonic() - started) / 60 >= cfg.max_minutes:
                    reason = "time_budget"
                # Rank 0 decides: clocks differ between ranks, and all must stop together.
                stopped = dist_utils.broadcast_object(reason) or "completed"
        finally:
            logger.close()
        dist_utils.barrier()
        if self.is_main and stopped != "completed":
            console.print(f"stopped after epoch {epoch}: {stopped.replace('_', ' ')}")
        return TrainResult(
            history=history,
            best_metric=best,
            best_epoch=best_epoch,
            epochs_completed=epoch,
            global_step=self.global_step,
            stopped_reason=stopped,
            seconds=time.monotonic() - started,
            checkpoint_dir=self.checkpoints.dir,
        )

    # ---------------------------------------------------------------- epoch
    def _train_epoch(self, model: nn.Module, epoch: int, logger: MetricsLogger) -> tuple[dict[str, float], bool]:
        """One pass over the loader; returns (epoch row of rank-averaged means, max_steps reached)."""
        cfg = self.cfg
        self.method.train()
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        self._generator.manual_seed(_epoch_seed(cfg.seed, epoch, self.dist.rank))
        is_ddp = isinstance(model, DistributedDataParallel)
        accum, n_batches = cfg.grad_accum_steps, self.batches_per_epoch
        sums: dict[str, torch.Tensor] = {}
        n_seen, samples, hit_max_steps = 0, 0, False
        lr = self.optimizer.param_groups[0]["lr"]
        autocast = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16,
            enabled=self.precision != "fp32",
        )
        t0 = time.perf_counter()
        with progress_bar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.is_main) as bar:
            for i, batch in enumerate(self.loader):
                group_start = i - i % accum
                group_size = min(accum, n_batches - group_start)
                last_in_group = i - group_start == group_size - 1
                batch = move_to_device(batch, self.device, self.channels_last)
                samples += _batch_len(batch)
                sync = model.no_sync() if is_ddp and not last_in_group else nullcontext()
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
                speed = samples * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                if not last_in_group:
                    bar.update(1, loss=loss_value, samples_per_s=speed)
                    continue
                lr = self.optimizer.param_groups[0]["lr"]
                grad_norm = self._optimizer_step()
                if grad_norm is not None:
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm * group_size
                self.global_step += 1
                self.method.on_step_end(self.global_step, self.total_steps)
                if cfg.log_every and self.global_step % cfg.log_every == 0:
                    logger.log_step({"loss": loss_value, "lr": lr}, self.global_step)
                bar.update(1, loss=loss_value, lr=lr, samples_per_s=speed)
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    hit_max_steps = True
                    break
        seconds = time.perf_counter() - t0
        keys = list(sums)
        means = dist_utils.all_reduce_mean(torch.stack([sums[k] for k in keys]).to(self.device) / n_seen)
        row: dict[str, float] = {"epoch": epoch + 1, "step": self.global_step, "lr": lr}
        row.update({k: float(v) for k, v in zip(keys, means.tolist())})
        row["samples_per_s"] = samples * self.dist.world_size / max(seconds, 1e-9)
        row["epoch_seconds"] = seconds
        row["peak_rss_mb"] = max(dist_utils.all_gather_object(peak_rss_mb()))  # the largest rank
        return row, hit_max_steps

    def _optimizer_step(self) -> torch.Tensor | None:
        """Clip (after unscaling), step optimizer, scaler and schedule; returns the pre-clip grad norm."""
        grad_norm = None
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).detach().float()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return grad_norm

    def _run_validation(self) -> dict[str, float]:
        """``validate(method)`` on rank 0 in eval mode without grad; its result reaches every rank."""
        if self.validate is None:
            return {}
        values: dict[str, float] | None = None
        if self.is_main:
            self.method.eval()
            with torch.no_grad():
                values = {k: float(v) for k, v in self.validate(self.method).items()}
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
        params = self.method.trainable_parameters()
        if not params:
            raise TrainingError(f"{type(self.method).__name__} has no trainable parameters")
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def _build_scheduler(self) -> WarmupCosineRestarts | None:
        cfg = self.cfg
        if cfg.scheduler == "constant":
            return None
        spe = self.steps_per_epoch
        t_0 = self.total_steps if cfg.t0_epochs <= 0 else max(1, round(cfg.t0_epochs * spe))
        return WarmupCosineRestarts(
            self.optimizer,
            T_0=t_0,
            T_mult=cfg.t_mult,
            eta_max=cfg.lr if cfg.eta_max is None else cfg.eta_max,
            T_up=round(cfg.warmup_epochs * spe),
            gamma=cfg.gamma,
            eta_min=cfg.eta_min,
        )

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
        return self._model

    # ----------------------------------------------------------- checkpoint
    def _state(
        self,
        epoch: int,
        best: float | None,
        best_epoch: int | None,
        bad_epochs: int,
        history: list[dict[str, float]],
        rng_states: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "format": 1,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_states,
            "epoch": epoch,
            "global_step": self.global_step,
            "best_metric": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
            "config": to_dict(self.cfg),
            "world_size": self.dist.world_size,
        }

    def _restore(self) -> tuple[int, float | None, int | None, int, list[dict[str, float]]]:
        """Load ``latest.pt`` into method, optimizer, schedule, scaler and RNGs; returns loop state."""
        ckpt = self.checkpoints.load_latest(map_location="cpu")
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.global_step = int(ckpt["global_step"])
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            seed_everything(_epoch_seed(self.cfg.seed, int(ckpt["epoch"]), self.dist.rank))
            if self.is_main:
                console.print(
                    f"warning: checkpoint written with world size {len(rng)}, resuming with "
                    f"{self.dist.world_size}; random streams differ from an uninterrupted run"
                )
        if self.is_main:
            old = ckpt.get("config") or {}
            changed = [
                f"{k} {old[k]!r} -> {v!r}"
                for k, v in to_dict(self.cfg).items()
                if k in old and old[k] != v and k not in _RESUMABLE_CHANGES
            ]
            if changed:
                console.print(f"warning: resuming with changed settings: {'; '.join(changed)}")
        best = ckpt.get("best_metric")
        return (
            int(ckpt["epoch"]),
            None if best is None else float(best),
            ckpt.get("best_epoch"),
            int(ckpt.get("bad_epochs", 0)),
            list(ckpt.get("history") or []),
        )

    # -------------------------------------------------------------- reports
    def _write_run_info(self, start_epoch: int) -> None:
        """``run.json``: what is needed to repeat the run; a resume appends to ``resumes``."""
        path = self.run_dir / "run.json"
        start = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv),
            "hardware": self.hardware.describe(),
            "world_size": self.dist.world_size,
        }
        info: dict[str, Any]
        if start_epoch and path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            info.setdefault("resumes", []).append({**start, "from_epoch": start_epoch})
        else:
            info = {
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

    def _print_epoch(self, row: Mapping[str, float], best: float | None, best_epoch: int | None) -> None:
        parts = [f"epoch {int(row['epoch'])}/{self.cfg.epochs}", f"loss {row['loss']:.4g}", f"lr {row['lr']:.2e}"]
        if self.cfg.monitor != "loss":
            parts.append(f"{self.cfg.monitor} {row[self.cfg.monitor]:.4g}")
        if best is not None:
            parts.append(f"best {best:.4g} (epoch {best_epoch})")
        parts.append(f"{row['samples_per_s']:,.0f} samples/s")
        parts.append(f"{row['epoch_seconds']:.1f} s")
        console.print(" | ".join(parts), highlight=False)


def _check_config(cfg: TrainConfig) -> None:
    """Reject settings the loop cannot honour, naming the setting."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer '{cfg.optimizer}' is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"train.scheduler '{cfg.scheduler}' is unknown; choose one of: {', '.join(SCHEDULERS)}")
    if cfg.scheduler == "constant" and cfg.warmup_epochs > 0:
        raise ConfigError("train.warmup_epochs needs train.scheduler=cosine_restarts")
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"train.monitor_mode '{cfg.monitor_mode}' must be min or max")
    for name in ("epochs", "batch_size", "grad_accum_steps"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"train.{name}={getattr(cfg, name)} must be >= 1")
    for name in ("grad_clip", "max_minutes", "max_steps", "early_stop_patience", "warmup_epochs", "lr"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"train.{name}={getattr(cfg, name)} must be >= 0")
