"""A tiny Method for the engine tests: MLP regression with BN, dropout and an EMA copy."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from fabml.engine.method import Method
from fabml.engine.trainer import TrainConfig


class SimulatedCrash(RuntimeError):
    """Raised by ToyMethod to imitate a killed run."""


class ToyMethod(Method):
    """``y ~ MLP(x)`` with MSE; ``ema`` follows ``net`` after every optimizer step.

    Batches are ``(x [B, D], y [B], index [B])``. ``crash_at_call`` / ``nan_at_call``
    make the N-th ``training_step`` call (counting from 1) raise or return a NaN loss.
    """

    def __init__(
        self,
        in_dim: int = 4,
        hidden: int = 16,
        dropout: float = 0.2,
        batchnorm: bool = True,
        ema_tau: float = 0.9,
        crash_at_call: int | None = None,
        nan_at_call: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.ema_tau = ema_tau
        self.crash_at_call = crash_at_call
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.seen_indices: list[list[int]] = []  # one list per batch
        self.step_log: list[tuple[int, int]] = []
        self.epoch_calls: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y, index = batch
        self.calls += 1
        if self.crash_at_call is not None and self.calls == self.crash_at_call:
            raise SimulatedCrash(f"simulated crash at call {self.calls}")
        self.seen_indices.append(index.tolist())
        pred = self.net(x).squeeze(-1)
        loss = F.mse_loss(pred, y)
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss, "mae": (pred - y).abs().mean().detach()}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.step_log.append((step, total_steps))
        with torch.no_grad():
            for target, online in zip(self.ema.parameters(), self.net.parameters()):
                target.lerp_(online, 1.0 - self.ema_tau)
            for target, online in zip(self.ema.buffers(), self.net.buffers()):
                target.copy_(online)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.epoch_calls.append(epoch)
        return {"ema_norm": float(sum(p.norm() for p in self.ema.parameters()))}


def toy_dataset(n: int = 64, in_dim: int = 4, seed: int = 0) -> TensorDataset:
    """``n`` samples of a noisy linear target: ``(x [n, in_dim], y [n], index [n])``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    w = torch.randn(in_dim, generator=g)
    y = x @ w + 0.05 * torch.randn(n, generator=g)
    return TensorDataset(x, y, torch.arange(n))


def toy_config(**changes: object) -> TrainConfig:
    """Fast CPU settings: 64 samples / batch 16 = 4 steps per epoch."""
    base: dict[str, object] = dict(epochs=4, batch_size=16, lr=1e-2, device="cpu", num_workers=0, precision="fp32")
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]
