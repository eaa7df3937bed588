"""Exponential moving average of a model's weights (``train.ema_decay``), kept beside the training weights.

After every optimizer step, for each floating-point tensor ``w`` of the method's state dict
(parameters and buffers such as BatchNorm statistics)::

    a_n = d_n * a_(n-1) + (1 - d_n) * w_n,      d_n = min(decay, (1 + n) / (10 + n))

``n`` counts the updates since the average was (re)started; the warm-up term keeps the
first updates from being dominated by the initial weights (the schedule of timm's ``ModelEmaV3``
with warm-up). Integer buffers (``num_batches_tracked``) are copied, not averaged. The average
of weights late in training sits in a flatter part of the loss than any single iterate (Polyak
and Juditsky 1992; Izmailov et al. 2018), which is why validation, the best checkpoint and the
weights a run ends with use it.

Written here rather than taken from ``torch.optim.swa_utils.AveragedModel``: that class keeps a
deep copy of the whole module (frozen backbones included) and averages parameters only unless
told otherwise; the trainer needs the average as plain tensors it can swap into the method in
place (so hooks, DDP wrappers and the validation callback see the same module) and store in the
checkpoint for an exact resume.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

WARMUP = 10  # the (1 + n) / (WARMUP + n) term


class WeightAverage:
    """The moving average of ``module``'s floating-point state; ``decay`` in (0, 1)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay {decay} must be in (0, 1)")
        self.decay = float(decay)
        self.updates = 0
        self.average: dict[str, torch.Tensor] = {}
        self.restart(module)

    def restart(self, module: nn.Module) -> None:
        """Start the average again from ``module``'s current weights (a new training stage)."""
        self.average = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
        self.updates = 0

    def current_decay(self) -> float:
        """``d_n`` of the next update."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (WARMUP + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current weights into the average (one optimizer step)."""
        weight = 1.0 - self.current_decay()
        state = module.state_dict()
        keys = list(self.average)
        torch._foreach_lerp_([self.average[k] for k in keys], [state[k].to(self.average[k].dtype) for k in keys], weight)
        self.updates += 1

    def averaged_state(self, module: nn.Module) -> dict[str, Any]:
        """``module.state_dict()`` with every averaged tensor replaced by its average (copies)."""
        state = module.state_dict()
        return {k: (self.average[k].clone() if k in self.average else v.detach().clone()) for k, v in state.items()}

    def copy_to(self, module: nn.Module) -> None:
        """Write the average into ``module``'s tensors in place."""
        _write(module, self.average)

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Inside the block ``module`` holds the averaged weights; its own come back afterwards."""
        state = module.state_dict()
        saved = {k: state[k].detach().clone() for k in self.average}
        self.copy_to(module)
        try:
            yield
        finally:
            _write(module, saved)

    def load(self, averaged: dict[str, Any], updates: int) -> None:
        """Restore the average from a checkpoint's averaged state dict and update count."""
        for key, value in self.average.items():
            if key not in averaged:
                raise KeyError(key)
            value.copy_(averaged[key])
        self.updates = int(updates)


@torch.no_grad()
def _write(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into ``module``'s state-dict tensors of the same names, in place."""
    state = module.state_dict()
    for key, value in tensors.items():
        state[key].copy_(value)
