"""FastFlow training: maximum likelihood of the normal features under the flows.

For a standard-normal target, the negative log-likelihood of one image at layer k is, up to a
constant, ``0.5 * sum_{c,i,j} z_k^2 - log|det dz_k/dx_k|``. The loss sums it over layers and
averages it over the batch (as anomalib's FastflowLoss). Its scale grows with C*h*w, which is
why ``z_sq_mean`` (-> 1 when z is standard normal) is logged beside it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.models.fastflow import Fastflow


def fastflow_loss(hidden_variables: list[torch.Tensor], log_jacobians: list[torch.Tensor]) -> torch.Tensor:
    """Scalar ``sum_k mean_b(0.5 * sum_chw z_k^2 - log_jac_k)``; ``z_k`` ``[B, C, h, w]``, ``log_jac_k`` ``[B]``."""
    total = hidden_variables[0].new_zeros((), dtype=torch.float32)
    for z, log_jac in zip(hidden_variables, log_jacobians):
        z = z.float()  # sums of ~1e5 terms: accumulate in float32 under bf16/fp16 autocast too
        total = total + (0.5 * (z * z).sum(dim=(1, 2, 3)) - log_jac.float()).mean()
    return total


@ANOMALY_METHODS.register("fastflow")
class FastflowMethod(AnomalyMethod):
    """Trains the LayerNorms and flows of a :class:`Fastflow` model; the backbone stays frozen.

    Paper settings: Adam, lr 1e-3, weight decay 1e-5, constant learning rate, 500 epochs,
    batch size 32.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "scheduler": "constant",
        "epochs": 500,
        "batch_size": 32,
    }

    model: Fastflow

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` -> ``{"loss", "z_sq_mean", "log_jac_per_dim"}`` (the last two logged only)."""
        hidden_variables, log_jacobians = self.model(batch["image"])
        loss = fastflow_loss(hidden_variables, log_jacobians)
        with torch.no_grad():
            dims = sum(z[0].numel() for z in hidden_variables)
            z_sq_mean = torch.cat([z.float().pow(2).flatten() for z in hidden_variables]).mean()
            log_jac_per_dim = torch.stack([j.float() for j in log_jacobians]).sum(dim=0).mean() / dims
        return {"loss": loss, "z_sq_mean": z_sq_mean, "log_jac_per_dim": log_jac_per_dim}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LayerNorm and flow parameters (FrEIA's fixed permutation matrices are excluded)."""
        modules = [self.model.norms, self.model.flows]
        return [p for module in modules for p in module.parameters() if p.requires_grad]
