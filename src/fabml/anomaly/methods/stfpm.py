"""STFPM training: the student regresses the teacher's normalised feature pyramid.

Loss (Wang et al., 2021, Eq. 1-2), for an image and each layer k with feature size h_k x w_k:

    l_k = 1 / (2 h_k w_k) * sum_ij || t_k(i, j) / ||t_k(i, j)|| - s_k(i, j) / ||s_k(i, j)|| ||^2
    loss = sum_k l_k, averaged over the images of the batch.

(anomalib sums over the batch instead of averaging; the paper's per-image loss is used here,
so the gradient does not grow with the batch size.)

With ``model.standardise_map``, ``finalize`` fits the model's per-pixel standardisation on the raw maps
of the held-out normal images.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod, held_out_outputs
from fabml.anomaly.models.stfpm import Stfpm, layer_distance_map


def stfpm_loss(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]) -> torch.Tensor:
    """Scalar loss from two lists of ``[B, C_k, h_k, w_k]`` features (see module docstring)."""
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for teacher, student in zip(teacher_features, student_features):
        # layer_distance_map holds 0.5 * ||t - s||^2 per position, so its mean is the sum / (h w);
        # float32 keeps the loss exact under bf16/fp16 autocast
        total = total + layer_distance_map(teacher.float(), student.float()).flatten(1).mean(dim=1).mean()
    return total


@ANOMALY_METHODS.register("stfpm")
class StfpmMethod(AnomalyMethod):
    """Trains the student of an :class:`Stfpm` model; the teacher stays frozen.

    Paper settings: SGD, lr 0.4, momentum 0.9, weight decay 1e-4 (anomalib uses 1e-3),
    constant learning rate, 100 epochs, batch size 32.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.4,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "constant",
        "epochs": 100,
        "batch_size": 32,
    }

    model: Stfpm

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` ``[B, C, H, W]`` -> ``{"loss": sum of layer losses, "loss_layer<k>": ...}``."""
        teacher_features, student_features = self.model(batch["image"])
        out: dict[str, torch.Tensor] = {}
        layer_losses = []
        for layer, teacher, student in zip(self.model.config.layers, teacher_features, student_features):
            layer_loss = stfpm_loss([teacher], [student])
            layer_losses.append(layer_loss)
            out[f"loss_layer{layer}"] = layer_loss.detach()
        return {"loss": torch.stack(layer_losses).sum(), **out}

    @torch.no_grad()
    def finalize(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """``standardise_map``: fit the per-pixel standardisation on the held-out normal images' raw maps."""
        model = self.model
        if not model.config.standardise_map:
            return {}
        raw_maps = held_out_outputs(model, loader, lambda x: model.raw_anomaly_map(*model.features(x)),
                                    "model.standardise_map")
        return model.position_norm.fit(raw_maps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters only."""
        return [p for p in self.model.student.parameters() if p.requires_grad]
