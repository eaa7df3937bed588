"""Where a run is in its sequence of stages, the learning rate at a step, and what trains in an epoch.

Every epoch has the same number of optimizer steps ``S`` (``steps_per_epoch``), so after
``e`` finished epochs the step count is ``e * S``. Stage ``k`` covers the epochs
``[E_k, E_k + epochs_k)`` and the steps from ``first_step_k = E_k * S``; its schedule runs
over ``steps_k = epochs_k * S`` steps (fewer when ``train.max_steps`` ends the run inside the
stage). The learning rate for the step after ``s`` finished steps in stage ``k`` is
``schedule_k.lr_at(s - first_step_k)``: a function of the *current* config and the step
count only, rebuilt on every start and resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabml.engine.schedules import ConstantLR, CosineRestarts
from fabml.engine.train_config import StageConfig, TrainConfig, stages_of
from fabml.errors import ConfigError


@dataclass(frozen=True)
class StageSpan:
    """One stage placed in the run: 0-based epochs ``[first_epoch, end_epoch)``, steps from ``first_step``."""

    index: int
    stage: StageConfig
    first_epoch: int
    end_epoch: int
    first_step: int
    steps: int


class StagePlan:
    """The stages of ``cfg`` laid out over epochs and steps, with each stage's schedule."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.staged = bool(cfg.stages)
        self.spans: list[StageSpan] = []
        epoch = 0
        for index, stage in enumerate(stages_of(cfg)):
            first_step = epoch * steps_per_epoch
            steps = stage.epochs * steps_per_epoch
            if cfg.max_steps > 0:
                steps = max(1, min(steps, cfg.max_steps - first_step))
            self.spans.append(StageSpan(index, stage, epoch, epoch + stage.epochs, first_step, steps))
            epoch += stage.epochs
        self.total_epochs = epoch
        total = epoch * steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        self._schedules = [self._schedule(span) for span in self.spans]

    def span_at(self, epoch: int) -> StageSpan:
        """The stage that 0-based ``epoch`` belongs to (the last stage for epochs beyond the run)."""
        for span in self.spans:
            if epoch < span.end_epoch:
                return span
        return self.spans[-1]

    def lr_at(self, epoch: int, step: int) -> float:
        """Base rate (before ``lr_scale``) of the step after ``step`` finished steps, in 0-based ``epoch``."""
        span = self.span_at(epoch)
        return self._schedules[span.index].lr_at(step - span.first_step)

    def _schedule(self, span: StageSpan) -> CosineRestarts | ConstantLR:
        cfg, spe = self.cfg, self.steps_per_epoch
        if cfg.scheduler == "constant":
            return ConstantLR(cfg.lr if span.stage.lr is None else span.stage.lr)
        peak = span.stage.lr if span.stage.lr is not None else (cfg.lr if cfg.eta_max is None else cfg.eta_max)
        t_0 = span.steps if cfg.t0_epochs <= 0 else max(1, round(cfg.t0_epochs * spe))
        return CosineRestarts(
            T_0=t_0, T_mult=cfg.t_mult, eta_max=peak, T_up=round(cfg.warmup_epochs * spe), gamma=cfg.gamma,
            eta_min=cfg.eta_min,
        )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def trainable_names(names: list[str], stage: StageConfig, frozen: set[str], all_names: list[str]) -> set[str]:
    """Which of ``names`` (the optimizer's parameters) train in an epoch of ``stage`` with ``frozen`` prefixes.

    A name trains when it is under one of ``stage.trainable`` (or that list is empty) and under
    none of ``frozen``. A prefix that matches no parameter of the method (``all_names``) is a
    :class:`ConfigError` naming it: a typo would otherwise freeze or train the wrong part silently.
    """
    for prefix in [*stage.trainable, *sorted(frozen)]:
        if not any(_under(name, prefix) for name in all_names):
            raise ConfigError(
                f"'{prefix}' (stage '{stage.name}' trainable part or frozen prefix) matches no parameter of the "
                f"method; module names start with: {', '.join(sorted({n.split('.')[0] for n in all_names}))}"
            )
    return {
        name for name in names
        if (not stage.trainable or any(_under(name, p) for p in stage.trainable))
        and not any(_under(name, p) for p in frozen)
    }
