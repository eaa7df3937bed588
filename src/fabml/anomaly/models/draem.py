"""DRAEM (Zavrtanik et al., ICCV 2021): a reconstructive and a discriminative sub-network.

The reconstructive sub-network (an encoder-decoder, base width 128 in the paper) learns to
turn an image with a synthetic anomaly back into the clean image; the discriminative
sub-network (a U-Net, base width 64) sees ``concat(image, reconstruction)`` and segments
the anomaly (2 classes). Training (see :mod:`fabml.anomaly.methods.draem`) pastes
Perlin-noise anomalies on normal images and minimises ``L2 + SSIM`` on the reconstruction
plus a focal loss on the segmentation.

Eval: ``anomaly_map = softmax(logits)[:, 1]`` (optionally smoothed by a
``map_smoothing``-sized mean filter); image score = the configured pooling of the map after
a ``score_smoothing``-sized mean filter (paper: max of the 21x21 average-pooled map).
No backbone: the raw image in [0, 1] goes in (1 or 3 channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, PoolingConfig
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.anomaly.synthetic import SyntheticAnomalyConfig
from fabml.errors import ConfigError

# The discriminative U-Net halves the grid five times, the reconstructive one four times.
SIZE_MULTIPLE = 32


@dataclass
class DraemConfig:
    """Settings of :class:`DraemModel` (and of its training, read by the DRAEM method).

    base_width / disc_base_width: channel width of the first block of the reconstructive
    (paper 128) and discriminative (paper 64) sub-networks; deeper blocks use 2x, 4x, 8x.
    score_smoothing: odd side (pixels) of the mean filter applied to the map before the
    image-score pooling (paper 21); 0 or 1 = none. map_smoothing: the same for the
    returned pixel map (default none, as the paper). synthetic: how anomalies are pasted
    during training. ssim_window: SSIM window (paper 11). focal_gamma: focal-loss gamma
    (paper 2). focal_alpha: ``None`` weights both classes by 1 (the paper, and anomalib's
    ``alpha=1`` under the kornia API it was written for); a number weights normal pixels by
    ``1 - alpha`` and anomalous ones by ``alpha``.
    """

    image_size: tuple[int, int] = (256, 256)
    in_chans: int = 3
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    base_width: int = 128
    disc_base_width: int = 64
    score_smoothing: int = 21
    map_smoothing: int = 0
    synthetic: SyntheticAnomalyConfig = field(default_factory=SyntheticAnomalyConfig)
    ssim_window: int = 11
    focal_gamma: float = 2.0
    focal_alpha: float | None = None


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 convolution (same padding), batch norm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def double_conv(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two :func:`conv_bn_relu` layers ``c_in -> c_mid -> c_out``."""
    return nn.Sequential(*conv_bn_relu(c_in, c_mid), *conv_bn_relu(c_mid, c_out))


def up_conv(c_in: int, c_out: int) -> nn.Sequential:
    """2x bilinear upsampling (align_corners, as the paper) then :func:`conv_bn_relu`."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_bn_relu(c_in, c_out))


class ReconstructiveNetwork(nn.Module):
    """Encoder-decoder ``[B, C, H, W] -> [B, C, H, W]`` without skips; bottleneck ``8w`` at ``H/16``."""

    def __init__(self, in_chans: int, base_width: int) -> None:
        super().__init__()
        w = base_width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        c_in = in_chans
        for c_out in widths:
            self.encoder.append(double_conv(c_in, c_out, c_out))
            c_in = c_out
        # decoder: (up width, then double conv in -> out) per stage, 8w -> 4w -> 2w -> w -> w
        stages = [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)]
        self.ups = nn.ModuleList(up_conv(c, c) for c, _ in stages)
        self.decoder = nn.ModuleList(double_conv(c, c, c_out) for c, c_out in stages)
        self.head = nn.Conv2d(w, in_chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
        for up, block in zip(self.ups, self.decoder):
            x = block(up(x))
        return self.head(x)


class DiscriminativeNetwork(nn.Module):
    """U-Net ``[B, 2C, H, W] -> [B, 2, H, W]`` logits (normal, anomalous); six encoder blocks with skips."""

    def __init__(self, in_chans: int, base_width: int, out_chans: int = 2) -> None:
        super().__init__()
        w = base_width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        c_in = in_chans
        for c_out in widths:
            self.encoder.append(double_conv(c_in, c_out, c_out))
            c_in = c_out
        # each decoder stage: upsample+conv to c_up, concat the skip of width c_skip, double conv to c_up
        stages = [(8 * w, 8 * w, 8 * w), (8 * w, 4 * w, 8 * w), (4 * w, 2 * w, 4 * w), (2 * w, w, 2 * w), (w, w, w)]
        self.ups = nn.ModuleList(up_conv(c_from, c_up) for c_from, c_up, _ in stages)
        self.decoder = nn.ModuleList(double_conv(c_up + c_skip, c_up, c_up) for _, c_up, c_skip in stages)
        self.head = nn.Conv2d(w, out_chans, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def mean_filter(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """``kernel x kernel`` mean filter of ``[B, 1, H, W]`` maps, zero-padded to the same size (paper's avg-pool)."""
    if kernel <= 1:
        return x
    return F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2)


@ANOMALY_MODELS.register("draem")
class DraemModel(AnomalyModel):
    """DRAEM on raw images ``[B, in_chans, H, W]`` in [0, 1]; ``H, W`` multiples of 32.

    Train mode: ``forward(images) -> (reconstruction [B, C, H, W], logits [B, 2, H, W])``.
    Eval mode: ``forward(images) -> AnomalyOutput`` (map = probability of the anomalous class).
    """

    config_class = DraemConfig

    def __init__(self, config: DraemConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_config(config)
        self.config = config
        self.reconstructive = ReconstructiveNetwork(config.in_chans, config.base_width)
        self.discriminative = DiscriminativeNetwork(2 * config.in_chans, config.disc_base_width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | AnomalyOutput:
        self.check_input(images)
        reconstruction = self.reconstructive(images)
        logits = self.discriminative(torch.cat([images, reconstruction], dim=1))
        if self.training:
            return reconstruction, logits
        return self.output(self.compute_anomaly_map(logits))

    def compute_anomaly_map(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, 2, H, W]`` logits -> ``[B, 1, H, W]`` anomalous-class probability (optionally smoothed)."""
        return mean_filter(torch.softmax(logits, dim=1)[:, 1:2], self.config.map_smoothing)

    def compute_anomaly_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """``[B]``: the configured pooling of the ``score_smoothing``-filtered map (paper: max of 21x21 mean)."""
        return super().compute_anomaly_score(mean_filter(anomaly_map, self.config.score_smoothing))


def check_config(config: DraemConfig) -> None:
    """One-line ConfigError for settings DRAEM cannot run with."""
    if config.in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans={config.in_chans}: DRAEM takes 1- or 3-channel images")
    h, w = config.image_size
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h <= 0 or w <= 0:
        raise ConfigError(
            f"model.image_size={list(config.image_size)}: DRAEM needs height and width that are positive multiples "
            f"of {SIZE_MULTIPLE} (its U-Net halves the grid 5 times); e.g. data.image_size=[256, 256]"
        )
    for name in ("base_width", "disc_base_width"):
        if getattr(config, name) < 1:
            raise ConfigError(f"model.{name}={getattr(config, name)} must be >= 1")
    for name in ("score_smoothing", "map_smoothing"):
        k = getattr(config, name)
        if k < 0 or (k > 1 and k % 2 == 0):
            raise ConfigError(f"model.{name}={k} must be 0 (off) or an odd kernel size, e.g. 21")
    if config.ssim_window < 3 or config.ssim_window % 2 == 0:
        raise ConfigError(f"model.ssim_window={config.ssim_window} must be an odd size >= 3 (paper 11)")
    if config.focal_gamma < 0:
        raise ConfigError(f"model.focal_gamma={config.focal_gamma} must be >= 0 (paper 2)")
    if config.focal_alpha is not None and not 0.0 <= config.focal_alpha <= 1.0:
        raise ConfigError(f"model.focal_alpha={config.focal_alpha} must be null or in [0, 1]")
