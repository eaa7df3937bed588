"""Learning-rate and momentum schedules, all functions of the optimizer-step count."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fabml.errors import ConfigError


class CosineRestarts:
    """Linear warm-up + cosine annealing with warm restarts as a pure function of the step count.

    Cycle ``i`` lasts ``T_i = T_0 * T_mult**i`` steps and peaks at ``eta_max * gamma**i``.
    At position ``t`` (0-based) inside cycle ``i`` the learning rate is::

        t <  T_up:  eta_min + (eta_max_i - eta_min) * t / T_up
        t >= T_up:  eta_min + (eta_max_i - eta_min) * (1 + cos(pi * (t - T_up) / (T_i - T_up))) / 2

    (the "CosineAnnealingWarmUpRestarts" recipe, with the warm-up counted inside each cycle).
    It holds no state: the trainer rebuilds it from the config on every start and resume, so
    the rate at a step depends only on the current settings and the step count.
    """

    def __init__(
        self,
        T_0: int,
        T_mult: int = 1,
        eta_max: float = 1e-4,
        T_up: int = 0,
        gamma: float = 1.0,
        eta_min: float = 0.0,
    ) -> None:
        if T_0 < 1:
            raise ConfigError(f"schedule cycle length T_0={T_0} steps must be >= 1")
        if T_mult < 1 or int(T_mult) != T_mult:
            raise ConfigError(f"schedule T_mult={T_mult} must be an integer >= 1")
        if not 0 <= T_up < T_0:
            raise ConfigError(
                f"warm-up T_up={T_up} steps must be in [0, T_0={T_0}); shorten warmup_epochs or lengthen t0_epochs"
            )
        if eta_max < eta_min:
            raise ConfigError(f"schedule eta_max={eta_max} is below eta_min={eta_min}")
        self.T_0 = int(T_0)
        self.T_mult = int(T_mult)
        self.eta_max = float(eta_max)
        self.T_up = int(T_up)
        self.gamma = float(gamma)
        self.eta_min = float(eta_min)

    def cycle_position(self, step: int) -> tuple[int, int, int]:
        """``(cycle index i, position t in the cycle, cycle length T_i)`` after ``step`` steps."""
        cycle, length, t = 0, self.T_0, step
        if self.T_mult == 1:
            return t // length, t % length, length
        while t >= length:
            t -= length
            cycle += 1
            length *= self.T_mult
        return cycle, t, length

    def lr_at(self, step: int) -> float:
        """Learning rate in force for the optimizer step that follows ``step`` completed steps."""
        cycle, t, length = self.cycle_position(max(step, 0))
        peak = self.eta_max * self.gamma**cycle
        if t < self.T_up:
            return self.eta_min + (peak - self.eta_min) * t / self.T_up
        frac = (t - self.T_up) / (length - self.T_up)
        return self.eta_min + (peak - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2


class ConstantLR:
    """The same learning rate at every step (``lr_at(step) = lr``)."""

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def lr_at(self, step: int) -> float:
        return self.lr


def apply_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every param group's rate to ``lr * group.get("lr_scale", 1.0)``.

    ``lr_scale`` is how a method gives one group (say, a pretrained backbone) a fixed
    fraction of the schedule; see :meth:`fabml.engine.method.Method.param_groups`.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class WarmupCosineRestarts(LRScheduler):
    """:class:`CosineRestarts` as a ``torch.optim`` scheduler, stepped once per optimizer step.

    A param group with an ``"lr_scale"`` entry gets that multiple of the value. The rate is
    a closed-form function of ``last_epoch`` (= optimizer steps taken), so
    ``state_dict``/``load_state_dict`` restore it exactly, cycle settings included. The
    trainer does not use this class (a resumed run there follows the *current* settings,
    see :class:`fabml.engine.trainer.Trainer`); it is for code that drives its own loop.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_max: float = 1e-4,
        T_up: int = 0,
        gamma: float = 1.0,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        curve = CosineRestarts(T_0, T_mult, eta_max, T_up, gamma, eta_min)
        self.T_0, self.T_mult, self.eta_max = curve.T_0, curve.T_mult, curve.eta_max
        self.T_up, self.gamma, self.eta_min = curve.T_up, curve.gamma, curve.eta_min
        super().__init__(optimizer, last_epoch)

    def _curve(self) -> CosineRestarts:
        return CosineRestarts(self.T_0, self.T_mult, self.eta_max, self.T_up, self.gamma, self.eta_min)

    def cycle_position(self, step: int) -> tuple[int, int, int]:
        """``(cycle index i, position t in the cycle, cycle length T_i)`` after ``step`` steps."""
        return self._curve().cycle_position(step)

    def lr_at(self, step: int) -> float:
        """Learning rate (before ``lr_scale``) after ``step`` optimizer steps."""
        return self._curve().lr_at(step)

    def get_lr(self) -> list[float]:
        lr = self.lr_at(self.last_epoch)
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    _get_closed_form_lr = get_lr


def cosine_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 0.999) -> float:
    """BYOL's EMA coefficient: ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``.

    Equals ``start`` at step 0 and ``end`` at ``total_steps`` (steps beyond are clamped).
    """
    if total_steps < 1:
        raise ConfigError(f"cosine_momentum needs total_steps >= 1, got {total_steps}")
    frac = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * frac) + 1) / 2


def kl_beta(progress: float, init_beta_divisor: float = 1000.0, start: float = 0.3, end: float = 0.8) -> float:
    """KL-annealing weight at ``progress`` = fraction of training done (epochs done / epochs), in [0, 1].

    The seed's schedule: ``1 / init_beta_divisor`` while ``progress < start``, rising linearly to
    1.0 at ``end``, then 1.0::

        beta(p) = b0                                  p <  start      (b0 = 1 / init_beta_divisor)
        beta(p) = b0 + (1 - b0) (p - start) / (end - start)   start <= p < end
        beta(p) = 1                                   p >= end

    With the defaults: 0.001 at 0% and 30%, 0.5005 at 55%, 1.0 at 80% and 100%. Progress outside
    [0, 1] is clamped; ``start == end`` makes the rise a step.
    """
    if init_beta_divisor < 1.0:
        raise ConfigError(f"vae.init_beta_divisor={init_beta_divisor} must be >= 1 (beta starts at 1/divisor)")
    if not 0.0 <= start <= end <= 1.0:
        raise ConfigError(
            f"KL annealing start={start} and end={end} must satisfy 0 <= start <= end <= 1 "
            "(vae.anneal_start, vae.anneal_end)"
        )
    b0 = 1.0 / init_beta_divisor
    p = min(max(float(progress), 0.0), 1.0)
    if p < start:
        return b0
    if p >= end:
        return 1.0
    return b0 + (1.0 - b0) * (p - start) / (end - start)
