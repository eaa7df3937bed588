"""DRAEM with a fault-severity head, for 1-channel inspection maps (HDMAP).

DRAEM's two sub-networks (:mod:`fabml.anomaly.models.draem`, reused as they are): the
reconstructive network ``C -> C`` and the discriminative U-Net on ``concat(image,
reconstruction)`` (``2C -> 2`` logits). A severity network reads a stack of maps chosen by
``severity_input_mode`` and regresses the image's fault severity:

================== ============================================= =====================
mode               input of the severity network                 channels (C = 1)
================== ============================================= =====================
discriminative_only softmax(logits) (normal, anomalous)           2
with_original      + the image                                   3
with_reconstruction + the reconstruction                         3
with_error_map     + abs(image - reconstruction)                 3
multi_modal        + image, reconstruction, error map            5
================== ============================================= =====================

Severity network: three conv(3x3, stride 2)-BN-ReLU layers (widths w, 2w, 4w), global average
pooling, a three-layer MLP (``4w -> hidden -> hidden/2 -> 1``, ReLU and dropout between) and
``severity_max * sigmoid(.)``, so the prediction lies in [0, severity_max].

``severity_pooling``: ``avg`` (the seed's global average pooling) or ``avg_max`` (global average
and global max pooling side by side, ``8w`` numbers into the MLP). Why offer the max: an average
over the whole map is the fault's intensity *times its area* (a faint wide band and a strong
narrow one pool alike), while the maximum of a feature is the fault's intensity wherever the
fault is, whatever its size.

Eval: :class:`~fabml.anomaly.models.base.SeverityOutput` (``pred_score``, ``anomaly_map`` as
DRAEM, plus ``pred_severity [B]``). Training: :mod:`fabml.anomaly.methods.draem_severity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fabml.anomaly.cutpaste_faults import CutPasteFaultConfig
from fabml.anomaly.models.base import PoolingConfig, SeverityOutput
from fabml.anomaly.models.draem import DraemModel, conv_bn_relu
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError

# extra input maps per mode, beside the two discriminative probabilities
INPUT_MODES: dict[str, tuple[str, ...]] = {
    "discriminative_only": (),
    "with_original": ("image",),
    "with_reconstruction": ("reconstruction",),
    "with_error_map": ("error",),
    "multi_modal": ("image", "reconstruction", "error"),
}
SEVERITY_LOSSES = ("mse", "smooth_l1")
SEVERITY_POOLINGS = ("avg", "avg_max")


@dataclass
class DraemSeverityConfig:
    """Settings of :class:`DraemSeverityModel` and of its training.

    DRAEM's settings (``base_width`` 128, ``disc_base_width`` 64, ``score_smoothing`` 21,
    ``map_smoothing``, ``ssim_window`` 11, ``focal_gamma`` 2, ``focal_alpha``): see
    :class:`~fabml.anomaly.models.draem.DraemConfig`. faults: the cut-paste faults drawn during
    training (:class:`~fabml.anomaly.cutpaste_faults.CutPasteFaultConfig`; ``faults.severity_max``
    is also the top of the predicted range). severity_input_mode: see the module table.
    severity_width: w of the severity convolutions (w, 2w, 4w). severity_hidden: MLP width.
    severity_dropout: dropout between the MLP layers. severity_detach: stop the severity loss's
    gradient at the head's inputs (the two DRAEM networks then learn from their own losses only).
    reconstruction_weight / segmentation_weight / severity_weight: loss weights (seed 1.0 / 1.0 /
    0.5). severity_loss: ``mse`` | ``smooth_l1`` on severities in their own units.
    severity_pooling: ``avg`` (seed) | ``avg_max`` (see the module doc).
    """

    image_size: tuple[int, int] = (256, 256)
    in_chans: int = 1
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    base_width: int = 128
    disc_base_width: int = 64
    score_smoothing: int = 21
    map_smoothing: int = 0
    ssim_window: int = 11
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    faults: CutPasteFaultConfig = field(default_factory=CutPasteFaultConfig)
    severity_input_mode: str = "discriminative_only"
    severity_width: int = 32
    severity_hidden: int = 128
    severity_dropout: float = 0.3
    severity_detach: bool = False
    reconstruction_weight: float = 1.0
    segmentation_weight: float = 1.0
    severity_weight: float = 0.5
    severity_loss: str = "mse"
    severity_pooling: str = "avg"


def severity_input_channels(mode: str, in_chans: int) -> int:
    """Channels the severity network reads in ``mode``: 2 + ``in_chans`` per extra map."""
    if mode not in INPUT_MODES:
        raise ConfigError(f"model.severity_input_mode='{mode}' is unknown; choose one of: {', '.join(INPUT_MODES)}")
    return 2 + in_chans * len(INPUT_MODES[mode])


class SeverityNetwork(nn.Module):
    """``[B, c_in, H, W] -> [B]`` severity in [0, severity_max] (see the module doc)."""

    def __init__(self, in_chans: int, width: int, hidden: int, dropout: float, severity_max: float,
                 pooling: str = "avg") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for c_out in (width, 2 * width, 4 * width):
            conv, bn, relu = conv_bn_relu(c, c_out)
            conv.stride = (2, 2)
            layers += [conv, bn, relu]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.with_max = pooling == "avg_max"
        self.mlp = nn.Sequential(
            nn.Linear(2 * c if self.with_max else c, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, max(1, hidden // 2)), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(max(1, hidden // 2), 1),
        )
        self.severity_max = float(severity_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        pooled = features.mean(dim=(2, 3))  # global average pooling, [B, 4w]
        if self.with_max:
            pooled = torch.cat([pooled, features.amax(dim=(2, 3))], dim=1)  # [B, 8w]
        return self.severity_max * torch.sigmoid(self.mlp(pooled)[:, 0])


@ANOMALY_MODELS.register("draem_severity")
class DraemSeverityModel(DraemModel):
    """DRAEM + severity head on raw images ``[B, in_chans, H, W]`` in [0, 1]; ``H, W`` multiples of 32.

    DRAEM's two networks, checks, anomaly map and score come from :class:`DraemModel` (the config
    has every field DRAEM reads); this class adds the severity network.

    Train mode: ``forward(images) -> (reconstruction [B, C, H, W], logits [B, 2, H, W], severity [B])``.
    Eval mode: ``forward(images) -> SeverityOutput(pred_score [B], anomaly_map [B, 1, H, W], pred_severity [B])``.
    """

    config_class = DraemSeverityConfig  # type: ignore[assignment]
    has_severity = True
    config: DraemSeverityConfig  # type: ignore[assignment]

    def __init__(self, config: DraemSeverityConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]  (DRAEM's checks and networks)
        check_head_config(config)
        self.severity = SeverityNetwork(
            severity_input_channels(config.severity_input_mode, config.in_chans), config.severity_width,
            config.severity_hidden, config.severity_dropout, config.faults.severity_max, config.severity_pooling,
        )

    def severity_inputs(self, images: torch.Tensor, reconstruction: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The ``[B, c, H, W]`` stack the severity network reads in the configured mode."""
        maps = {"image": images, "reconstruction": reconstruction, "error": (images - reconstruction).abs()}
        extra = [maps[k] for k in INPUT_MODES[self.config.severity_input_mode]]
        stack = torch.cat([torch.softmax(logits, dim=1), *extra], dim=1)
        return stack.detach() if self.config.severity_detach else stack

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | SeverityOutput:
        self.check_input(images)
        reconstruction = self.reconstructive(images)
        logits = self.discriminative(torch.cat([images, reconstruction], dim=1))
        severity = self.severity(self.severity_inputs(images, reconstruction, logits))
        if self.training:
            return reconstruction, logits, severity
        anomaly_map = self.compute_anomaly_map(logits)
        return SeverityOutput(self.compute_anomaly_score(anomaly_map), anomaly_map, severity)


def check_head_config(config: DraemSeverityConfig) -> None:
    """One-line ConfigError for settings of the faults and the severity head (DRAEM's own are checked by
    :class:`DraemModel`)."""
    config.faults.validate()
    severity_input_channels(config.severity_input_mode, config.in_chans)
    for name in ("severity_width", "severity_hidden"):
        if getattr(config, name) < 1:
            raise ConfigError(f"model.{name}={getattr(config, name)} must be >= 1")
    if not 0.0 <= config.severity_dropout < 1.0:
        raise ConfigError(f"model.severity_dropout={config.severity_dropout} must be in [0, 1)")
    for name in ("reconstruction_weight", "segmentation_weight", "severity_weight"):
        if getattr(config, name) < 0:
            raise ConfigError(f"model.{name}={getattr(config, name)} must be >= 0")
    if config.severity_pooling not in SEVERITY_POOLINGS:
        raise ConfigError(f"model.severity_pooling='{config.severity_pooling}' is unknown; choose one of: "
                          f"{', '.join(SEVERITY_POOLINGS)}")
    if config.severity_loss not in SEVERITY_LOSSES:
        raise ConfigError(f"model.severity_loss='{config.severity_loss}' is unknown; choose one of: "
                          f"{', '.join(SEVERITY_LOSSES)}")
