"""A convolutional autoencoder, on the raw image (``input: image``) or on frozen backbone features
(``input: features``).

Trained to reconstruct normal data, it reconstructs defects poorly; the anomaly map is the squared
reconstruction error averaged over channels, brought to the image size and Gaussian-blurred:

    anomaly_map = blur_sigma( upsample( mean_c (x - x_hat)^2 ) )

``input: image`` (default; the baseline without a backbone): ``x`` is the image in [0, 1], so the map
lies in [0, 1]. Encoder: ``len(channels)`` blocks of conv 3x3 stride 2 -> BatchNorm -> LeakyReLU(0.2),
then a 1x1 conv to ``latent_channels`` (a spatial bottleneck of size H / 2^depth x W / 2^depth).
Decoder: 1x1 conv back, then per block nearest x2 upsampling -> conv 3x3 -> BatchNorm -> LeakyReLU
(upsample + conv avoids transposed-convolution checkerboards), and a final conv 3x3 -> sigmoid to
``in_chans`` channels in [0, 1].

``input: features`` (deep feature reconstruction, Shi, Yang and Qi, "Unsupervised anomaly
segmentation via deep feature reconstruction", Neurocomputing 2021): ``x`` is the frozen pretrained
backbone's ``layers`` brought to the finest layer's grid and stacked (``[B, D, h, w]``, as PatchCore
and PaDiM do), averaged over ``feature_pool`` x ``feature_pool`` neighbours and standardised per
channel with statistics accumulated over every training batch (a BatchNorm without affine terms and
with a cumulative average). The autoencoder is per position: 1x1 conv -> BatchNorm -> LeakyReLU
blocks of widths ``channels`` down to ``latent_channels``, and back to ``D`` with a linear last
layer. Only the autoencoder learns, so a CPU trains it in minutes (a pixel autoencoder needs hours
to reconstruct texture well enough); the map is in squared standard deviations of the features.

``normalise_error`` (features only): after training, the residuals ``r = x - x_hat`` (``D`` numbers per
position) of the held-out normal images give their covariance ``S`` and then, per grid position
``p``, the mean ``mu_p`` and standard deviation ``sd_p`` of ``e = r^T (S + 0.01 I)^-1 r / D``; the map
is then ``(e_p - mu_p) / sd_p`` (how unusual the residual is, in standard deviations of normal images
at that position) instead of ``mean_c r_c^2``. Some feature channels are always reconstructed worse
than others, and image borders worse than the centre; both would otherwise drown a small defect.
Until :meth:`set_error_statistics` is called the plain ``mean_c r_c^2`` map is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torch.nn import functional as F

from fabml.anomaly.models.base import (
    AnomalyModel, AnomalyOutput, BackboneModelConfig, GaussianBlur, PositionStandardiser, backbone_extractor,
)
from fabml.anomaly.models.feature_utils import concat_feature_maps, resize_buffers_for_load
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError

INPUTS = ("image", "features")


@dataclass
class AutoencoderConfig(BackboneModelConfig):
    """Settings of :class:`Autoencoder`.

    input: ``image`` (reconstruct the pixels) | ``features`` (reconstruct the frozen backbone's
    ``layers``; ``backbone``, ``pretrained``, ``weights``, ``weights_dir``, ``channel_mode`` as for
    PatchCore; ignored with ``image``). channels: encoder widths; with ``image`` one stride-2 block
    each (depth = len(channels); image_size must be divisible by 2^depth), with ``features`` one
    1x1 block each. latent_channels: bottleneck width. feature_pool: side of the neighbourhood
    average of the features (odd; 1 = off). normalise_error: whiten the residual and standardise
    the error per position with held-out normal images (``features`` only; see the module doc).
    blur_sigma: Gaussian blur of the error map in pixels
    (0 = off). ssim_weight / ssim_window: weight and window of the optional SSIM term added to the
    MSE loss (``kornia.losses.ssim_loss``; 0 = plain MSE; ``image`` only).
    """

    input: str = "image"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    feature_pool: int = 3
    normalise_error: bool = False
    latent_channels: int = 64
    blur_sigma: float = 4.0
    ssim_weight: float = 0.0
    ssim_window: int = 11


def check_config(cfg: AutoencoderConfig) -> None:
    """One-line ConfigError for settings the autoencoder cannot use."""
    if cfg.in_chans < 1:
        raise ConfigError(f"model.in_chans={cfg.in_chans} must be >= 1 (1 = grayscale, 3 = colour)")
    if cfg.input not in INPUTS:
        raise ConfigError(f"model.input='{cfg.input}' is unknown; choose one of: {', '.join(INPUTS)}")
    if not cfg.channels or min(cfg.channels) < 1:
        raise ConfigError(f"model.channels={list(cfg.channels)} must list at least one positive width")
    if cfg.latent_channels < 1:
        raise ConfigError(f"model.latent_channels={cfg.latent_channels} must be >= 1")
    if cfg.input == "features":
        if not cfg.layers:
            raise ConfigError("model.layers is empty; input 'features' needs at least one backbone layer (e.g. [2, 3])")
        if cfg.feature_pool < 1 or cfg.feature_pool % 2 == 0:
            raise ConfigError(f"model.feature_pool={cfg.feature_pool} must be an odd number >= 1 (1 = no pooling)")
        if cfg.ssim_weight > 0:
            raise ConfigError("model.ssim_weight applies to input 'image' only; set it to 0 with input 'features'")
    elif cfg.normalise_error:
        raise ConfigError("model.normalise_error applies to input 'features' only; set model.input: features")
    factor = 2 ** len(cfg.channels)
    if cfg.input == "image" and any(int(s) % factor for s in cfg.image_size):
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


def conv_block(c_in: int, c_out: int, stride: int, kernel: int = 3) -> nn.Sequential:
    """conv ``kernel`` x ``kernel`` (``stride``, same padding) -> BatchNorm -> LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


@ANOMALY_MODELS.register("autoencoder")
class Autoencoder(AnomalyModel):
    """Convolutional autoencoder; the anomaly map is the blurred squared reconstruction error.

    Train mode: ``forward(images)`` returns ``(target, reconstruction)``, two tensors of one shape:
    the image and its reconstruction ``[B, C, H, W]`` in [0, 1] (``input: image``), or the
    standardised features and theirs ``[B, D, h, w]`` (``input: features``).
    Eval mode: :class:`AnomalyOutput`.
    """

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_config(config)
        self.config = config
        self.blur: nn.Module = GaussianBlur(config.blur_sigma) if config.blur_sigma > 0 else nn.Identity()
        if config.input == "features":
            self._build_feature_autoencoder(config)
            return
        self.feature_extractor = None
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

    def _build_feature_autoencoder(self, config: AutoencoderConfig) -> None:
        """The frozen extractor, the feature standardiser and the per-position (1x1) autoencoder."""
        self.feature_extractor = backbone_extractor(config)
        depth = sum(self.feature_extractor.channels)
        self.standardise = nn.BatchNorm2d(depth, affine=False, momentum=None)  # cumulative mean / variance
        widths = [depth, *config.channels, config.latent_channels]
        self.encoder = nn.Sequential(*(conv_block(widths[i], widths[i + 1], 1, kernel=1) for i in range(len(widths) - 1)))
        back = widths[::-1]
        self.decoder = nn.Sequential(
            *(conv_block(back[i], back[i + 1], 1, kernel=1) for i in range(len(back) - 2)),
            nn.Conv2d(back[-2], back[-1], 1),
        )
        # set by set_error_statistics after training (empty / identity = plain mean squared error)
        self.register_buffer("whitening", torch.empty(0))
        self.position_norm = PositionStandardiser()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.feature_extractor is not None:
            resize_buffers_for_load(self, state_dict, prefix, ["whitening"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def squared_error(self, target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``[B, 1, h, w]``: :meth:`residual_error` of ``r = target - reconstruction``; input ``features`` only."""
        return self.residual_error(target - reconstruction)

    def residual_error(self, residual: torch.Tensor) -> torch.Tensor:
        """``[B, 1, h, w]`` from residuals ``[B, D, h, w]``: ``mean_c r_c^2``, or with the residual statistics
        ``r^T W W^T r / D`` (``W W^T = (S + 0.01 I)^-1``, the whitened squared norm)."""
        if self.whitening.numel() > 0:
            residual = torch.einsum("bchw,cd->bdhw", residual, self.whitening)
        return residual.pow(2).mean(dim=1, keepdim=True)

    def set_error_statistics(self, residuals: torch.Tensor, ridge: float = 0.01) -> dict[str, float]:
        """Install the residual statistics from held-out normal images' residuals ``[N, D, h, w]``.

        ``S`` = covariance of the ``N h w`` residual vectors (float64), ``W = cholesky((S + ridge I)^-1)``
        ``[D, D]``; then the whitened errors ``e`` ``[N, 1, h, w]`` fit ``position_norm`` (a
        :class:`PositionStandardiser`). Returns the numbers of images and positions.
        """
        if residuals.dim() != 4 or residuals.shape[0] < 2:
            raise ConfigError(
                f"model.normalise_error needs residuals of at least 2 held-out normal images [N, D, h, w], got "
                f"{list(residuals.shape)}; raise data.val_fraction or set model.normalise_error: false"
            )
        d = residuals.shape[1]
        vectors = residuals.permute(0, 2, 3, 1).reshape(-1, d).double()
        covariance = torch.cov(vectors.T).reshape(d, d) + ridge * torch.eye(d, dtype=torch.float64)
        self.whitening = torch.linalg.cholesky(torch.linalg.inv(covariance)).float().to(residuals.device)
        error = self.residual_error(residuals.float())
        self.position_norm.fit(error)
        return {"error_images": float(residuals.shape[0]), "error_positions": float(error[0].numel())}

    def train(self, mode: bool = True) -> "Autoencoder":
        """Switch modes; a frozen feature extractor always stays in eval mode."""
        super().train(mode)
        if self.feature_extractor is not None:
            self.feature_extractor.eval()
        return self

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """What is reconstructed: the images, or their pooled, standardised features ``[B, D, h, w]``."""
        if self.feature_extractor is None:
            return images
        with torch.no_grad():
            features = concat_feature_maps(self.feature_extractor(images))
            pool = self.config.feature_pool
            if pool > 1:
                features = F.avg_pool2d(features, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if self.training:
            return self.standardise(features).detach()
        # the eval-mode BatchNorm written out: traces into ONNX, which has no batch_norm for a traced channel count
        norm = self.standardise
        scale = (norm.running_var + norm.eps).rsqrt().view(1, -1, 1, 1)
        return (features - norm.running_mean.view(1, -1, 1, 1)) * scale

    def reconstruct(self, target: torch.Tensor) -> torch.Tensor:
        """Reconstruction of :meth:`target`'s output, same shape (in [0, 1] for images)."""
        return self.decoder(self.encoder(target))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | AnomalyOutput:
        """Train mode: ``(target, reconstruction)``; eval mode: :class:`AnomalyOutput`."""
        self.check_input(images)
        target = self.target(images)
        reconstruction = self.reconstruct(target)
        if self.training:
            return target, reconstruction
        return self.output(self.compute_anomaly_map(target, reconstruction))

    def compute_anomaly_map(self, target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: channel-mean squared error (standardised per position when the residual
        statistics are set), bilinearly upsampled to the image size when it is on a feature grid,
        blurred with ``blur_sigma``."""
        if self.feature_extractor is None:
            error = (target - reconstruction).pow(2).mean(dim=1, keepdim=True)
        else:
            error = self.position_norm(self.squared_error(target, reconstruction))
        if tuple(error.shape[-2:]) != self.image_size:
            error = F.interpolate(error, size=self.image_size, mode="bilinear", align_corners=False)
        return self.blur(error)
