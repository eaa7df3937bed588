"""FastFlow: 2-D normalising flows on frozen backbone features (Yu et al., 2021, arXiv:2111.07677).

Each selected backbone layer ``[C, h, w]`` is layer-normalised and mapped by its own flow
(FrEIA ``AllInOneBlock`` steps: affine coupling with soft clamping ``clamp * tanh``, a global
affine scale and a fixed random channel permutation) to ``z`` with a standard-normal target.
Subnets alternate 3x3 and 1x1 convolutions (paper Fig. 2; ``conv3x3_only`` keeps 3x3 only).

Anomaly map: per layer, the per-position likelihood ``p = exp(-0.5 * mean_c z^2)`` is
upsampled to the image size; the map is ``1 - mean_k p_k`` in [0, 1] (higher = more
anomalous). anomalib returns ``-mean_k p_k``: the same ordering, shifted by 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, BackboneModelConfig, backbone_extractor
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError


@dataclass
class FastflowConfig(BackboneModelConfig):
    """Settings of :class:`Fastflow` (anomalib's defaults for the flow).

    layers: timm ``out_indices``; for ``tf_efficientnet_lite0`` 1, 2, 3 = strides 4, 8, 16
    with 24, 40, 112 channels (the paper's ResNet-18 setting uses the same strides).
    flow_steps: coupling blocks per layer. hidden_ratio: subnet hidden channels / input
    channels. clamp: soft clamp ``alpha`` of the log-scale, ``alpha * tanh(s)``.
    """

    flow_steps: int = 8
    conv3x3_only: bool = False
    hidden_ratio: float = 1.0
    clamp: float = 2.0


def subnet_constructor(kernel_size: int, hidden_ratio: float) -> Callable[[int, int], nn.Module]:
    """A FrEIA subnet factory: conv(k) -> ReLU -> conv(k), 'same' padding, hidden = ratio x input."""

    def build(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(1, int(in_channels * hidden_ratio))
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, kernel_size, padding=kernel_size // 2),
        )

    return build


def build_flow(dims: Sequence[int], cfg: FastflowConfig) -> SequenceINN:
    """A ``SequenceINN`` of ``cfg.flow_steps`` AllInOneBlocks over ``[C, h, w]`` inputs.

    FrEIA draws each block's hard permutation from numpy's global generator; it is seeded
    here from torch's generator (and numpy's state restored), so ``torch.manual_seed``
    alone makes model construction repeatable.
    """
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    try:
        flow = SequenceINN(*dims)
        for step in range(cfg.flow_steps):
            kernel = 1 if step % 2 == 1 and not cfg.conv3x3_only else 3
            flow.append(
                AllInOneBlock,
                subnet_constructor=subnet_constructor(kernel, cfg.hidden_ratio),
                affine_clamping=cfg.clamp,
                permute_soft=False,
            )
    finally:
        np.random.set_state(state)
    return flow


def check_config(cfg: FastflowConfig) -> None:
    """One-line ConfigError for settings the flow cannot use."""
    if not cfg.layers:
        raise ConfigError("model.layers is empty; FastFlow needs at least one backbone layer (e.g. [1, 2, 3])")
    if cfg.flow_steps < 1:
        raise ConfigError(f"model.flow_steps={cfg.flow_steps} must be >= 1")
    if cfg.hidden_ratio <= 0:
        raise ConfigError(f"model.hidden_ratio={cfg.hidden_ratio} must be > 0")
    if cfg.clamp <= 0:
        raise ConfigError(f"model.clamp={cfg.clamp} must be > 0")


@ANOMALY_MODELS.register("fastflow")
class Fastflow(AnomalyModel):
    """Frozen feature extractor -> LayerNorm per layer -> one 2-D flow per layer.

    Train mode: ``forward(images)`` returns ``(hidden_variables, log_jacobians)``: per layer
    ``z`` ``[B, C_k, h_k, w_k]`` and ``log|det dz/dx|`` ``[B]``.
    Eval mode: :class:`AnomalyOutput` with the map at the input resolution.
    """

    config_class = FastflowConfig

    def __init__(self, config: FastflowConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_config(config)
        self.config = config
        self.feature_extractor = backbone_extractor(config)
        # the exact feature sizes (padding conventions differ between backbones) from one probe
        with torch.no_grad():
            probe = self.feature_extractor(torch.zeros(1, config.in_chans, *self.image_size))
        shapes = [tuple(int(s) for s in f.shape[1:]) for f in probe]
        self.norms = nn.ModuleList(nn.LayerNorm(list(shape), elementwise_affine=True) for shape in shapes)
        self.flows = nn.ModuleList(build_flow(shape, config) for shape in shapes)
        self.train(self.training)


    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | AnomalyOutput:
        """``images`` ``[B, C, H, W]`` in [0, 1] -> train: (z per layer, log-det per layer); eval: output."""
        self.check_input(images)
        with torch.no_grad():
            features = self.feature_extractor(images)
        hidden_variables, log_jacobians = [], []
        for norm, flow, feature in zip(self.norms, self.flows, features):
            z, log_jac = flow(norm(feature))
            hidden_variables.append(z)
            log_jacobians.append(log_jac)
        if self.training:
            return hidden_variables, log_jacobians
        return self.output(self.compute_anomaly_map(hidden_variables))

    def compute_anomaly_map(self, hidden_variables: list[torch.Tensor]) -> torch.Tensor:
        """``[B, 1, H, W]`` = 1 - mean over layers of the upsampled ``exp(-0.5 mean_c z^2)``."""
        probs = [
            F.interpolate(
                torch.exp(-0.5 * (z * z).mean(dim=1, keepdim=True)),
                size=self.image_size,
                mode="bilinear",
                align_corners=False,
            )
            for z in hidden_variables
        ]
        return 1.0 - torch.stack(probs, dim=0).mean(dim=0)
