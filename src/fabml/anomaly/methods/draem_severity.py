"""DRAEM-severity training: cut-paste faults of known severity, reconstruct, segment, regress severity.

For a batch of normal images ``I`` the method draws faults with
:class:`~fabml.anomaly.cutpaste_faults.CutPasteFaults` (settings ``model.faults``): faulty images
``I_f``, masks ``M`` and image severities ``s`` (0 for the images left normal). Then

    I_r, logits, s_hat = reconstructive(I_f), discriminative(concat(I_f, I_r)), severity(...)
    L_rec = mean (I - I_r)^2 + (1 - SSIM(I, I_r))                 (DRAEM, window 11)
    L_seg = focal(logits, M)                                       (DRAEM, gamma 2)
    L_sev = mean (s_hat - s)^2   or   SmoothL1(s_hat - s)           (severities in their own units)
    loss  = reconstruction_weight * L_rec + segmentation_weight * L_seg + severity_weight * L_sev

with the seed's weights 1.0 / 1.0 / 0.5. Each term is returned (``loss_l2_ssim``, ``loss_focal``,
``loss_severity``) so the trainer logs its epoch mean in ``metrics.csv``.

Randomness: the faults of step ``n`` come from the shared :class:`~fabml.engine.step_generator.StepGenerator`
(seeded with ``(seed, n, rank)``, kept in buffers): a resumed run draws the same faults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from fabml.anomaly.cutpaste_faults import CutPasteFaults, FaultBatch
from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.methods.draem import focal_loss, reconstruction_loss
from fabml.engine.step_generator import StepGenerator
from fabml.anomaly.models.draem_severity import DraemSeverityModel


def severity_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """``mse``: mean (pred - target)^2; ``smooth_l1``: mean Huber with beta 1 (severity units)."""
    pred, target = pred.float(), target.float()
    return F.smooth_l1_loss(pred, target) if kind == "smooth_l1" else F.mse_loss(pred, target)


@ANOMALY_METHODS.register("draem_severity")
class DraemSeverityMethod(AnomalyMethod):
    """Trains DRAEM's two networks and the severity head together on cut-paste faults.

    Seed defaults: Adam, lr 1e-4, batch 16, 256x256 (``data.image_size``); 200 epochs with one
    cosine decay, as this package's DRAEM.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "epochs": 200,
        "batch_size": 16,
        "scheduler": "cosine_restarts",
    }

    model: DraemSeverityModel

    def __init__(self, model: DraemSeverityModel) -> None:
        super().__init__(model)
        self.rng = StepGenerator()
        self.faults = CutPasteFaults(model.config.faults)

    def synthesize(self, images: torch.Tensor) -> FaultBatch:
        """This step's faults for ``images`` ``[B, C, H, W]`` (advances the step generator)."""
        return self.faults(images, self.rng.next())

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` ``[B, C, H, W]`` normal images -> the weighted loss and its three terms."""
        images = batch["image"]
        fault = self.synthesize(images)
        reconstruction, logits, severity = self.model(fault.images)
        cfg = self.model.config
        rec = reconstruction_loss(reconstruction, images, cfg.ssim_window)
        seg = focal_loss(logits, (fault.masks[:, 0] > 0.5).long(), cfg.focal_gamma, cfg.focal_alpha)
        sev = severity_loss(severity, fault.severity, cfg.severity_loss)
        loss = cfg.reconstruction_weight * rec + cfg.segmentation_weight * seg + cfg.severity_weight * sev
        return {"loss": loss, "loss_l2_ssim": rec.detach(), "loss_focal": seg.detach(), "loss_severity": sev.detach()}
