"""The contract between a job's training logic and the job-agnostic trainer.

A job subclasses :class:`Method`. The trainer owns the loop, device, precision,
DDP, optimizer, schedule and checkpoints; the method owns the models and the loss.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import nn


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

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (``step`` counts from 1), e.g. an EMA update."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called once per epoch on every rank; returned scalars are logged (e.g. collapse stats)."""
        return {}
