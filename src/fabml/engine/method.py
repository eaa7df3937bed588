"""The contract between a job's training logic and the job-agnostic trainer.

A job subclasses :class:`Method`. The trainer owns the loop, device, precision,
DDP, optimizer, schedule and checkpoints; the method owns the models and the loss.

Hooks a method may override, in the order the trainer calls them:

- :meth:`param_groups` once, to build the optimizer (per-group ``lr_scale`` and
  ``weight_decay``; :func:`fabml.engine.param_groups.decay_groups` keeps biases and norms
  out of weight decay);
- :meth:`on_fit_start` after a start or resume, with the step count and the run's length;
- :meth:`set_stage` whenever a stage of ``train.stages`` becomes active (also on resume);
- :meth:`frozen_prefixes` at every epoch start: parts to keep frozen this epoch;
- :meth:`on_epoch_start` right after it (also when a resume starts inside the epoch);
- :meth:`training_step` per batch, :meth:`on_step_end` per optimizer step;
- :meth:`on_epoch_end` per finished epoch (every rank), then :meth:`no_grad_work` on the
  main process without gradients (e.g. building an index), then the ``validate`` callback.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from fabml.engine.train_config import StageConfig


class Method(nn.Module, metaclass=ABCMeta):
    """Training logic of one job, as an ``nn.Module`` holding every trained network.

    The trainer calls ``forward(batch)`` (so DDP sees the call), which runs
    :meth:`training_step`. Everything in ``state_dict()`` (online and target networks,
    buffers) is checkpointed and restored on ``--resume``.
    """

    @abstractmethod
    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Compute the loss of one batch.

        Returns a dict with a scalar ``"loss"`` (the trainer back-propagates it);
        every other entry is a scalar tensor that is logged, not differentiated.
        """

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: all with ``requires_grad``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: dicts with ``params`` and optionally ``lr_scale`` (multiple of the
        schedule's rate, default 1), ``weight_decay`` (default ``train.weight_decay``) and ``name``.

        Default: one group of :meth:`trainable_parameters`. Every parameter listed here is in the
        optimizer from the start, including those frozen by :meth:`frozen_prefixes` or a stage.
        """
        return [{"params": self.trainable_parameters(), "name": "params"}]

    def frozen_prefixes(self, epoch: int) -> set[str]:
        """Module-name prefixes (as in ``named_parameters()``) to keep frozen in 0-based ``epoch``.

        Frozen parameters get ``requires_grad=False`` for the epoch, so they receive no gradient
        and no optimizer update (not even weight decay); e.g. ArcFace's warm-up returns
        ``{"backbone"}`` while ``epoch < warmup_epochs``. A function of the epoch only, so a
        resumed run freezes exactly what the uninterrupted one did. Default: nothing.
        """
        return set()

    def set_stage(self, stage: "StageConfig") -> None:
        """Called when a stage of ``train.stages`` becomes active (and on resume inside one);
        the method switches its loss on ``stage.name``. Default: records it in ``self.active_stage``."""
        self.active_stage = stage.name

    def on_fit_start(self, step: int, total_steps: int) -> None:
        """Called once per :meth:`Trainer.fit` after any resume: ``step`` optimizer steps are done
        out of ``total_steps`` (the run's current length). Step-dependent state that is not in
        ``state_dict`` (e.g. BYOL's tau) is set here."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of 0-based ``epoch`` on every rank, after :meth:`frozen_prefixes`, and
        again when a resume starts inside the epoch. Epoch-dependent state that is not in
        ``state_dict`` (e.g. ArcFace's margin schedule) is set here from ``epoch`` alone, so a
        resumed run matches an uninterrupted one."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (``step`` counts from 1), e.g. an EMA update."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called once per epoch on every rank; returned scalars are logged (e.g. collapse stats)."""
        return {}

    def no_grad_work(self, epoch: int) -> dict[str, float]:
        """Work without gradients after each finished epoch (e.g. embed a gallery and build an index).

        Runs on the main process only, in eval mode under ``torch.no_grad()``, after
        :meth:`on_epoch_end` and before the ``validate`` callback (which can use its result);
        returned scalars are logged. What it builds lives on the main process; keep it in
        ``state_dict`` if a resume needs it. Default: nothing.
        """
        return {}
