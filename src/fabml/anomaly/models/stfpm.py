"""STFPM: Student-Teacher Feature Pyramid Matching (Wang et al., 2021, arXiv:2103.04257).

A frozen pretrained teacher and a randomly initialised student of the same architecture see
the same image; the student learns to reproduce the teacher's L2-normalised feature pyramid
on normal images only. Where the two disagree, the image is anomalous:

    map_k(i, j) = 0.5 * || t_k(i, j) / ||t_k(i, j)|| - s_k(i, j) / ||s_k(i, j)|| ||^2
    anomaly_map = prod_k upsample(map_k)          (paper, Eq. 3; anomalib multiplies too)

Each ``map_k`` lies in [0, 2] (half the squared distance of two unit vectors).

``standardise_map`` (off by default; the CPU recipe turns it on): after training, the product map of the
held-out normal images fits a :class:`~fabml.anomaly.models.base.PositionStandardiser`, so the map is in
standard deviations of normal images at each pixel. A student trained for minutes rather than hours
matches the teacher unevenly across the image (worse near the borders); this keeps those places from
outscoring a defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fabml.anomaly.models.base import (
    AnomalyModel, AnomalyOutput, BackboneModelConfig, PositionStandardiser, backbone_extractor,
)
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError


@dataclass
class StfpmConfig(BackboneModelConfig):
    """Settings of :class:`Stfpm`.

    backbone / layers: timm model and its ``out_indices`` for teacher and student
    (``tf_efficientnet_lite0`` layers 1, 2, 3 = strides 4, 8, 16; the paper uses ResNet-18
    layer1..layer3, the same strides). ``pretrained``, ``weights``, ``weights_dir`` apply to
    the teacher only; the student always starts from random weights. standardise_map: standardise
    the map per pixel with held-out normal images after training (see the module doc).
    """

    standardise_map: bool = False


def layer_distance_map(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``[B, 1, h, w]`` half squared distance of the channel-normalised features ``[B, C, h, w]``."""
    diff = F.normalize(teacher, dim=1) - F.normalize(student, dim=1)
    return 0.5 * (diff * diff).sum(dim=1, keepdim=True)


@ANOMALY_MODELS.register("stfpm")
class Stfpm(AnomalyModel):
    """Teacher (frozen, pretrained) and student (trained) feature pyramids.

    Train mode: ``forward(images)`` returns ``(teacher_features, student_features)``, two
    lists of ``[B, C_k, h_k, w_k]`` tensors (teacher computed without grad).
    Eval mode: :class:`AnomalyOutput` with the product map at the input resolution.
    """

    config_class = StfpmConfig

    def __init__(self, config: StfpmConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        if not config.layers:
            raise ConfigError("model.layers is empty; STFPM needs at least one backbone layer (e.g. [1, 2, 3])")
        self.config = config
        self.teacher = backbone_extractor(config)
        self.student = backbone_extractor(config, trainable=True)
        self.position_norm = PositionStandardiser()  # identity until fitted (standardise_map)
        self.train(self.training)


    def forward(
        self, images: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | AnomalyOutput:
        """``images`` ``[B, C, H, W]`` in [0, 1] -> train: (teacher, student) features; eval: output."""
        self.check_input(images)
        teacher_features, student_features = self.features(images)
        if self.training:
            return teacher_features, student_features
        return self.output(self.compute_anomaly_map(teacher_features, student_features))

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher (computed without grad) and student feature lists ``[B, C_k, h_k, w_k]``."""
        with torch.no_grad():
            teacher_features = self.teacher(images)
        return teacher_features, self.student(images)

    def compute_anomaly_map(
        self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]
    ) -> torch.Tensor:
        """``[B, 1, H, W]``: :meth:`raw_anomaly_map`, standardised per pixel once ``position_norm`` is fitted."""
        return self.position_norm(self.raw_anomaly_map(teacher_features, student_features))

    def raw_anomaly_map(
        self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]
    ) -> torch.Tensor:
        """``[B, 1, H, W]``: product over layers of the bilinearly upsampled distance maps."""
        anomaly_map: torch.Tensor | None = None
        for teacher, student in zip(teacher_features, student_features):
            layer_map = F.interpolate(
                layer_distance_map(teacher, student), size=self.image_size, mode="bilinear", align_corners=False
            )
            anomaly_map = layer_map if anomaly_map is None else anomaly_map * layer_map
        assert anomaly_map is not None  # layers is non-empty (checked in __init__)
        return anomaly_map
