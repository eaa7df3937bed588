"""A plain convolutional autoencoder on the raw image: the baseline without a backbone.

Trained to reconstruct normal images, it reconstructs defects poorly; the anomaly map is the
per-pixel squared reconstruction error averaged over channels, Gaussian-blurred:

    anomaly_map = blur_sigma( mean_c (x - x_hat)^2 )       values in [0, 1] (inputs in [0, 1])

Encoder: ``len(channels)`` blocks of conv 3x3 stride 2 -> BatchNorm -> LeakyReLU(0.2), then a
1x1 conv to ``latent_channels`` (a spatial bottleneck of size H / 2^depth x W / 2^depth).
Decoder: 1x1 conv back, then per block nearest x2 upsampling -> conv 3x3 -> BatchNorm ->
LeakyReLU (upsample + conv avoids transposed-convolution checkerboards), and a final
conv 3x3 -> sigmoid to ``in_chans`` channels in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, GaussianBlur, PoolingConfig
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError


@dataclass
class AutoencoderConfig:
    """Settings of :class:`Autoencoder`.

    channels: encoder widths, one stride-2 block each (depth = len(channels)); image_size must
    be divisible by 2^depth. latent_channels: bottleneck width. blur_sigma: Gaussian blur of
    the error map in pixels (0 = off). ssim_weight / ssim_window: weight and window of the
    optional SSIM term added to the MSE loss (``kornia.losses.ssim_loss``; 0 = plain MSE).
    """

    image_size: tuple[int, int] = (256, 256)
    in_chans: int = 3
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    latent_channels: int = 64
    blur_sigma: float = 4.0
    ssim_weight: float = 0.0
    ssim_window: int = 11


def check_config(cfg: AutoencoderConfig) -> None:
    """One-line ConfigError for settings the autoencoder cannot use."""
    if cfg.in_chans < 1:
        raise ConfigError(f"model.in_chans={cfg.in_chans} must be >= 1 (1 = grayscale, 3 = colour)")
    if not cfg.channels or min(cfg.channels) < 1:
        raise ConfigError(f"model.channels={list(cfg.channels)} must list at least one positive width")
    if cfg.latent_channels < 1:
        raise ConfigError(f"model.latent_channels={cfg.latent_channels} must be >= 1")
    factor = 2 ** len(cfg.channels)
    if any(int(s) % factor for s in cfg.image_size):
        raise ConfigError(
            f"model.image_size={list(cfg.image_size)} must be divisible by 2^{len(cfg.channels)} = {factor} "
            f"(one halving per entry of model.channels); resize the images or change model.channels"
        )
    if cfg.blur_sigma < 0:
        raise ConfigError(f"model.blur_sigma={cfg.blur_sigma} must be >= 0 (0 = no blur)")
    if cfg.ssim_weight < 0:
        raise ConfigError(f"model.ssim_weight={cfg.ssim_weight} must be >= 0")
    if cfg.ssim_window < 3 or cfg.ssim_window % 2 == 0:
        raise ConfigError(f"model.ssim_window={cfg.ssim_window} must be an odd number >= 3")


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """conv 3x3 (``stride``) -> BatchNorm -> LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


@ANOMALY_MODELS.register("autoencoder")
class Autoencoder(AnomalyModel):
    """Convolutional autoencoder; the anomaly map is the blurred squared reconstruction error.

    Train mode: ``forward(images)`` returns the reconstruction ``[B, C, H, W]`` in [0, 1].
    Eval mode: :class:`AnomalyOutput`.
    """

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_config(config)
        self.config = config
        widths = [config.in_chans, *config.channels]
        self.encoder = nn.Sequential(
            *(conv_block(widths[i], widths[i + 1], stride=2) for i in range(len(config.channels))),
            nn.Conv2d(config.channels[-1], config.latent_channels, 1),
        )
        up: list[nn.Module] = [nn.Conv2d(config.latent_channels, config.channels[-1], 1), nn.LeakyReLU(0.2)]
        for i in range(len(config.channels), 0, -1):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(widths[i], widths[max(i - 1, 1)], 1)]
        up += [nn.Conv2d(config.channels[0], config.in_chans, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*up)
        self.blur: nn.Module = GaussianBlur(config.blur_sigma) if config.blur_sigma > 0 else nn.Identity()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> reconstruction of the same shape in [0, 1]."""
        return self.decoder(self.encoder(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor | AnomalyOutput:
        """Train mode: the reconstruction; eval mode: :class:`AnomalyOutput`."""
        self.check_input(images)
        reconstruction = self.reconstruct(images)
        if self.training:
            return reconstruction
        return self.output(self.compute_anomaly_map(images, reconstruction))

    def compute_anomaly_map(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: channel-mean squared error, blurred with ``blur_sigma``."""
        error = (images - reconstruction).pow(2).mean(dim=1, keepdim=True)
        return self.blur(error)
