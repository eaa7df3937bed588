"""DRAEM training: paste synthetic anomalies on normal images, reconstruct and segment them.

For a batch of normal images ``I`` the method draws Perlin-noise anomalies
(:func:`~fabml.anomaly.synthetic.synthesize_anomalies`, textures from the training images or
noise, settings ``model.synthetic``): augmented images ``I_a`` and masks ``M``. Then
(Zavrtanik et al., 2021, Eq. 1-4):

    I_r, logits = reconstructive(I_a), discriminative(concat(I_a, I_r))
    L_rec  = mean (I - I_r)^2 + (1 - SSIM(I, I_r))          (SSIM window 11)
    L_seg  = mean_px  -(1 - p_t)^gamma log p_t               (focal loss, gamma 2, p_t = softmax prob. of M's class)
    loss   = L_rec + L_seg

(``1 - SSIM`` is kornia's ``ssim_loss`` times 2, which returns ``(1 - SSIM) / 2``.)

Randomness: the anomalies of step ``n`` come from a generator seeded with
``(seed, n, rank)``, where ``seed`` is taken once from the trainer's seed
(``torch.initial_seed()`` at the first step) and, like ``n``, kept in a buffer: a resumed run
draws the same anomalies as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from kornia.losses import ssim_loss
from torch.nn import functional as F

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.models.draem import DraemModel
from fabml.anomaly.synthetic import synthesize_anomalies
from fabml.engine.step_generator import StepGenerator


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean over pixels of ``-a_t (1 - p_t)^gamma log p_t`` (Lin et al., 2017).

    logits: ``[B, K, H, W]``; target: ``[B, H, W]`` int64 class indices. ``alpha=None``:
    ``a_t = 1``; else ``a_t = 1 - alpha`` for class 0 and ``alpha`` for the others.
    """
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * torch.where(target == 0, 1.0 - alpha, alpha)
    return loss.mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, window: int = 11) -> torch.Tensor:
    """``mean (target - reconstruction)^2 + (1 - mean SSIM)`` (images in [0, 1], SSIM ``window`` px)."""
    l2 = F.mse_loss(reconstruction, target)
    return l2 + 2.0 * ssim_loss(reconstruction, target, window_size=window, max_val=1.0)


@ANOMALY_METHODS.register("draem")
class DraemMethod(AnomalyMethod):
    """Trains both DRAEM sub-networks on synthetic anomalies pasted on normal images.

    Paper: Adam, lr 1e-4, batch 8, 700 epochs, lr x0.1 at 80 % and 90 % of the epochs.
    ``default_train`` keeps Adam / lr / batch but runs 200 epochs with one cosine decay
    (the trainer's schedule) to stay practical; set ``train.epochs=700`` for the paper's length.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "epochs": 200,
        "batch_size": 8,
        "scheduler": "cosine_restarts",
    }

    model: DraemModel

    def __init__(self, model: DraemModel) -> None:
        super().__init__(model)
        self.rng = StepGenerator()

    def synthesize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(augmented [B, C, H, W], masks [B, 1, H, W], labels [B])`` for this step's generator."""
        generator = self.rng.next()
        return synthesize_anomalies(images, self.model.config.synthetic, generator)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` ``[B, C, H, W]`` normal images -> ``{"loss", "loss_l2_ssim", "loss_focal"}``."""
        images = batch["image"]
        augmented, masks, _ = self.synthesize(images)
        reconstruction, logits = self.model(augmented)
        cfg = self.model.config
        rec = reconstruction_loss(reconstruction, images, cfg.ssim_window)
        seg = focal_loss(logits, (masks[:, 0] > 0.5).long(), cfg.focal_gamma, cfg.focal_alpha)
        return {"loss": rec + seg, "loss_l2_ssim": rec.detach(), "loss_focal": seg.detach()}
