"""Autoencoder training: reconstruct normal images (or their standardised backbone features).

    loss = mean (x - x_hat)^2 + ssim_weight * ssim_loss(x_hat, x)       (x: image or features)

``ssim_loss`` is kornia's ``(1 - SSIM) / 2`` averaged over pixels (window ``ssim_window``);
the SSIM term (Bergmann et al., 2019) is off by default, leaving the plain L2 autoencoder.

With ``model.input: features`` and ``model.normalise_error``, ``finalize`` (after training) gives the
model its residual statistics from the held-out normal images (:meth:`Autoencoder.set_error_statistics`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from kornia.losses import ssim_loss
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod, held_out_outputs
from fabml.anomaly.models.autoencoder import Autoencoder


@ANOMALY_METHODS.register("autoencoder")
class AutoencoderMethod(AnomalyMethod):
    """Trains every weight of an :class:`Autoencoder`.

    No paper fixes its settings; the defaults are the usual ones for a small convolutional
    autoencoder: Adam, lr 1e-3, no weight decay, 100 epochs, batch size 32, with the
    trainer's cosine learning-rate decay.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "epochs": 100,
        "batch_size": 32,
    }

    model: Autoencoder

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` ``[B, C, H, W]`` -> ``{"loss", "mse"[, "ssim_loss"]}``."""
        target, reconstruction = self.model(batch["image"])
        mse = F.mse_loss(reconstruction, target)
        cfg = self.model.config
        if cfg.ssim_weight <= 0:
            return {"loss": mse, "mse": mse.detach()}
        ssim = ssim_loss(reconstruction, target, window_size=cfg.ssim_window, max_val=1.0)
        return {"loss": mse + cfg.ssim_weight * ssim, "mse": mse.detach(), "ssim_loss": ssim.detach()}

    @torch.no_grad()
    def finalize(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Residual statistics of the held-out normal images in ``loader`` (``normalise_error`` only)."""
        model = self.model
        if not model.config.normalise_error:
            return {}

        def residuals(images: torch.Tensor) -> torch.Tensor:
            target = model.target(images)
            return target - model.reconstruct(target)

        return model.set_error_statistics(held_out_outputs(model, loader, residuals, "model.normalise_error"))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder weights (a feature extractor is frozen)."""
        return [p for p in self.model.parameters() if p.requires_grad]
