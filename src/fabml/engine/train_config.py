"""The ``train:`` section of every job's config (:class:`TrainConfig`), its stages, and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from fabml.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine_restarts", "constant")
# Settings that change how a run is carried out, never what it computes: ignored by
# ``auto_resume``'s comparison and by the changed-settings warning of a resume.
OPERATIONAL_KEYS = frozenset({"num_workers", "tensorboard", "log_every", "auto_resume", "compile", "overfit_ratio"})
# Settings that may change between a run and its resume without a warning (the schedule
# is rebuilt from the new length; see :class:`fabml.engine.trainer.Trainer`).
RESUMABLE_CHANGES = OPERATIONAL_KEYS | {"epochs", "max_minutes", "max_steps", "early_stop_patience"}


@dataclass
class StageConfig:
    """One stage of a staged run (an entry of ``train.stages``).

    name: shown in the console, written to metrics.csv's ``stage`` column and passed to
        :meth:`Method.set_stage <fabml.engine.method.Method.set_stage>`.
    epochs: length of the stage.
    lr: peak learning rate of the stage's own schedule; ``None`` = ``train.eta_max`` (or ``train.lr``).
    trainable: module-name prefixes (as in ``method.named_parameters()``, e.g. ``"vae"`` or
        ``"model.encoder"``) whose parameters train in this stage; empty = all of the method's
        parameter groups. The others get ``requires_grad=False`` and no optimizer update.
    reset_optimizer: clear the optimizer's moments when the stage starts (a new training phase).
    """

    name: str = "train"
    epochs: int = 1
    lr: float | None = None
    trainable: list[str] = field(default_factory=list)
    reset_optimizer: bool = True


@dataclass
class TrainConfig:
    """Settings of the training loop (the ``train:`` section of every job's config).

    ``batch_size`` is GLOBAL per micro-step: each of ``world_size`` ranks loads
    ``batch_size // world_size`` samples; one optimizer step sees
    ``batch_size * grad_accum_steps`` samples. Schedule lengths are given in epochs and
    converted to optimizer steps.

    ``stages`` (empty = one stage of ``epochs`` epochs) runs a sequence of stages in one run;
    the run then lasts the sum of the stages' epochs and ``epochs`` is not used. Each stage has
    its own learning-rate schedule (the settings below, over the stage's steps).

    Changing ``epochs``, ``max_steps`` or ``stages`` on ``--resume`` changes the run's length: the
    schedule is rebuilt over the new total steps and the run continues on it at its current step
    (no return to the peak); ``max_steps`` both stops the run and sets the schedule's length.

    ``auto_resume``: when the run folder already has ``checkpoints/latest.pt`` written with the
    same settings, continue it without ``--resume``; with other settings, stop with an error
    that names them.

    ``compile``: run the loop's model through ``torch.compile`` (default backend; the first steps
    pay the compilation, later ones run faster on a GPU; the state dict and checkpoints stay
    those of the uncompiled method). ``validate_every``: run the ``validate`` callback every N
    epochs of a stage (counted from the stage's first epoch) and always in a stage's last epoch;
    in other epochs a monitor the callback provides is not compared, so they neither improve the
    best checkpoint nor count towards ``early_stop_patience``. ``overfit_ratio``: print one
    warning per run on stderr when ``val_loss / loss`` of an epoch exceeds it (0 = off).
    ``ema_decay``: keep an exponential moving average of the weights with this decay per optimizer
    step (e.g. 0.999: an average over roughly the last 1,000 steps; 0 = off). Validation, the
    work without gradients, the best checkpoint and the weights the run ends with are the
    average's; the average restarts at each stage from the previous stage's average.
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
    t0_epochs: float = 0.0  # first cosine cycle length; 0 = one cycle over the whole run (stage)
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
    max_steps: int = 0  # stop after this many optimizer steps (the schedule's length); 0 = none
    log_every: int = 10  # optimizer steps between per-step TensorBoard scalars
    sync_batchnorm: bool = False
    drop_last: bool = True
    stages: list[StageConfig] = field(default_factory=list)
    auto_resume: bool = False
    compile: bool = False
    validate_every: int = 1
    overfit_ratio: float = 0.0  # warn when val_loss / loss exceeds it; 0 = off
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 = off (see fabml.engine.weight_average)


def check_config(cfg: TrainConfig) -> None:
    """Reject settings the loop cannot honour, naming the setting."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer '{cfg.optimizer}' is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    if cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"train.scheduler '{cfg.scheduler}' is unknown; choose one of: {', '.join(SCHEDULERS)}")
    if cfg.scheduler == "constant" and cfg.warmup_epochs > 0:
        raise ConfigError("train.warmup_epochs needs train.scheduler=cosine_restarts")
    if cfg.monitor_mode not in ("min", "max"):
        raise ConfigError(f"train.monitor_mode '{cfg.monitor_mode}' must be min or max")
    for name in ("epochs", "batch_size", "grad_accum_steps", "validate_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"train.{name}={getattr(cfg, name)} must be >= 1")
    for name in ("grad_clip", "max_minutes", "max_steps", "early_stop_patience", "warmup_epochs", "lr", "overfit_ratio"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"train.{name}={getattr(cfg, name)} must be >= 0")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={cfg.ema_decay} must be in [0, 1) (0 = off; 0.999 is typical)")
    names = [stage.name for stage in cfg.stages]
    for index, stage in enumerate(cfg.stages):
        if stage.epochs < 1:
            raise ConfigError(f"train.stages[{index}].epochs={stage.epochs} must be >= 1")
        if stage.lr is not None and stage.lr < 0:
            raise ConfigError(f"train.stages[{index}].lr={stage.lr} must be >= 0")
        if not stage.name or names.count(stage.name) > 1:
            raise ConfigError(f"train.stages[{index}].name '{stage.name}' must be non-empty and unique")


def stages_of(cfg: TrainConfig) -> list[StageConfig]:
    """The run's stages: ``cfg.stages``, or one stage named ``train`` of ``cfg.epochs`` epochs."""
    return list(cfg.stages) or [StageConfig(name="train", epochs=cfg.epochs, lr=None, trainable=[], reset_optimizer=False)]


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key old -> new"`` for every dotted setting present in both mappings whose value differs.

    Nested mappings are compared key by key; a key only one side has (a setting added or
    removed by a newer fabml) is not a change.
    """
    changes: list[str] = []
    for key in sorted(set(old) & set(new)):
        dotted = f"{prefix}{key}"
        a, b = old[key], new[key]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += config_changes(a, b, f"{dotted}.")
        elif a != b:
            changes.append(f"{dotted} {a!r} -> {b!r}")
    return changes
