"""The contract every anomaly model follows, and the image-score pooling they share.

Input convention (all models): ``images`` is a float tensor ``[B, C, H, W]`` with values in
``[0, 1]``, ``C`` = the model's ``in_chans`` (1 or 3) and ``H, W`` = its ``image_size``. Any
per-backbone normalisation (ImageNet mean/std, [-1, 1], ...) happens *inside* the model, so
an exported ONNX graph needs nothing but a resize and a division by 255 in front of it.

In eval mode ``forward(images)`` returns :class:`AnomalyOutput`; in train mode it returns
whatever the model's loss needs (documented on each model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from kornia.filters import gaussian_blur2d
from torch import nn

from fabml.anomaly.models.feature_utils import resize_buffers_for_load
from fabml.backbones import FeatureExtractor
from fabml.errors import ConfigError, DataError

POOLINGS = ("max", "mean", "topk_mean", "percentile", "centre_weighted")


class AnomalyOutput(NamedTuple):
    """What an anomaly model returns in eval mode.

    pred_score: ``[B]`` raw image anomaly score (higher = more anomalous; unnormalised).
    anomaly_map: ``[B, 1, H, W]`` raw pixel anomaly scores at the input resolution.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor


class SeverityOutput(NamedTuple):
    """:class:`AnomalyOutput` plus a severity per image, returned by models with ``has_severity``.

    pred_score / anomaly_map: as :class:`AnomalyOutput` (same names and positions, so code that reads
    them by name or by index 0 and 1 works unchanged); pred_severity: ``[B]`` predicted fault
    severity in [0, severity_max] (0 = no fault), in the units of the synthetic faults it learnt from.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor
    pred_severity: torch.Tensor


@dataclass
class PoolingConfig:
    """How a pixel anomaly map becomes one image score.

    method: ``max`` (default) | ``mean`` | ``topk_mean`` (mean of the top ``topk_percent`` % of
    pixels) | ``percentile`` (the ``percentile``-th percentile of the pixels) |
    ``centre_weighted`` (max of the map times a Gaussian weight centred on the image, whose
    standard deviation is ``centre_sigma`` × the half-diagonal; OLED panels: centre defects
    matter more).
    """

    method: str = "max"
    topk_percent: float = 1.0
    percentile: float = 99.0
    centre_sigma: float = 0.5


@dataclass
class BackboneModelConfig:
    """The settings common to every anomaly model, defined once (see ``create_anomaly_model``).

    image_size: (H, W) the model takes; in_chans: 1 or 3; pooling: image score from the map.
    backbone / layers: timm model and ``out_indices``; pretrained: whether the weights step
    (:func:`fabml.weights.load_pretrained`) fills the backbone (or EfficientAD's teacher) before
    fitting; weights / weights_dir: where those weights come from (never downloaded);
    channel_mode: how 1-channel images meet a 3-channel backbone (``repeat`` | ``fold``).
    Backbone-based configs start with these fields; a model without a pretrained part (DRAEM,
    the autoencoder) accepts the backbone settings and ignores them.
    """

    image_size: tuple[int, int] = (256, 256)
    in_chans: int = 3
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    backbone: str = "tf_efficientnet_lite0"
    layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    pretrained: bool = True
    weights: str | None = None
    weights_dir: str | None = None
    channel_mode: str = "repeat"


def backbone_extractor(config: BackboneModelConfig, trainable: bool = False) -> FeatureExtractor:
    """The config's feature extractor with random weights: frozen, in eval mode and marked to receive
    pretrained weights from the weights step (when ``config.pretrained``); or, with ``trainable``,
    left random with gradients on (e.g. the STFPM student). Reads no file."""
    extractor = FeatureExtractor(
        config.backbone, config.layers, in_chans=config.in_chans, pretrained=config.pretrained and not trainable,
        channel_mode=config.channel_mode,
    )
    return extractor.requires_grad_(True) if trainable else extractor.requires_grad_(False).eval()


def check_pooling(cfg: PoolingConfig) -> None:
    """Reject an unknown pooling or out-of-range parameter with a one-line ConfigError."""
    if cfg.method not in POOLINGS:
        raise ConfigError(f"pooling.method='{cfg.method}' is unknown; choose one of: {', '.join(POOLINGS)}")
    if not 0.0 < cfg.topk_percent <= 100.0:
        raise ConfigError(f"pooling.topk_percent={cfg.topk_percent} must be in (0, 100]")
    if not 0.0 <= cfg.percentile <= 100.0:
        raise ConfigError(f"pooling.percentile={cfg.percentile} must be in [0, 100]")
    if cfg.centre_sigma <= 0.0:
        raise ConfigError(f"pooling.centre_sigma={cfg.centre_sigma} must be > 0")


def centre_weights(height: int, width: int, sigma: float) -> torch.Tensor:
    """``[H, W]`` Gaussian weights, 1 at the centre; ``sigma`` is a fraction of the half-diagonal."""
    ys = torch.linspace(-1.0, 1.0, height).view(-1, 1) * (height / max(height, width))
    xs = torch.linspace(-1.0, 1.0, width).view(1, -1) * (width / max(height, width))
    r2 = (ys**2 + xs**2) / 2.0  # squared distance over the squared half-diagonal
    return torch.exp(-r2 / (2.0 * sigma**2))


def pool_anomaly_map(anomaly_map: torch.Tensor, cfg: PoolingConfig) -> torch.Tensor:
    """Image scores ``[B]`` from maps ``[B, 1, H, W]`` (ONNX-exportable: only topk/mean/max)."""
    flat = anomaly_map.flatten(1)
    n = flat.shape[1]
    if cfg.method == "max":
        return flat.max(dim=1).values
    if cfg.method == "mean":
        return flat.mean(dim=1)
    if cfg.method == "topk_mean":
        k = max(1, int(math.ceil(n * cfg.topk_percent / 100.0)))
        return flat.topk(k, dim=1).values.mean(dim=1)
    if cfg.method == "percentile":
        # the value with (100 - p) % of the pixels at or above it (nearest-rank percentile)
        k = max(1, int(math.ceil(n * (100.0 - cfg.percentile) / 100.0)))
        return flat.topk(k, dim=1).values[:, -1]
    if cfg.method == "centre_weighted":
        h, w = anomaly_map.shape[-2:]
        weights = centre_weights(h, w, cfg.centre_sigma).to(anomaly_map)
        return (anomaly_map * weights).flatten(1).max(dim=1).values
    raise ConfigError(f"pooling.method='{cfg.method}' is unknown; choose one of: {', '.join(POOLINGS)}")


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size ``2·round(4 sigma) + 1`` (at least 3), anomalib's ``2 * int(4.0 * sigma + 0.5) + 1``."""
    return 2 * max(1, int(4.0 * sigma + 0.5)) + 1


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[gaussian_kernel_size(sigma)]`` (the kernel :class:`GaussianBlur` applies)."""
    radius = gaussian_kernel_size(sigma) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


class GaussianBlur(nn.Module):
    """Gaussian blur of ``[B, C, H, W]`` maps (``sigma`` in pixels) with replicate padding (any map size).

    ``kornia.filters.gaussian_blur2d`` (separable) with the kernel size of
    :func:`gaussian_kernel_size`: the same values as a separable convolution with
    :func:`gaussian_kernel1d` (measured identical, and 5x faster than our own two ``conv2d``
    calls on 16 maps of 256x256). It traces into ONNX (checked in the models' export tests).
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"blur sigma={sigma} must be > 0")
        self.sigma = float(sigma)
        self.kernel_size = gaussian_kernel_size(self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, sigma = self.kernel_size, self.sigma
        return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="replicate", separable=True)


class PositionStandardiser(nn.Module):
    """Per-position standardisation of raw anomaly maps, fitted on held-out normal images.

        z_p = (m_p - mean_p) / std_p        mean_p, std_p over the fitted images at position p

    ``m`` is ``[B, 1, h, w]`` on any fixed grid; ``mean`` / ``std`` are ``[1, 1, h, w]`` buffers
    (population std, floored at 1e-6). A raw map's level often depends on where it is (image borders,
    a fixture, a feature grid's edge cells); in standard deviations of normal images at that position a
    defect stands out wherever it is. Identity until :meth:`fit`; the buffers load from any fitted state dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("std", torch.empty(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        resize_buffers_for_load(self, state_dict, prefix, ["mean", "std"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.mean.numel() > 0

    def fit(self, maps: torch.Tensor) -> dict[str, float]:
        """Fit on raw maps ``[N, 1, h, w]`` of ``N >= 2`` normal images; returns ``{"standardised_images": N}``."""
        if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[0] < 2:
            raise DataError(
                f"per-position standardisation needs the maps [N, 1, h, w] of at least 2 held-out normal images, got "
                f"{list(maps.shape)}; raise data.val_fraction"
            )
        self.mean = maps.mean(dim=0, keepdim=True)
        self.std = maps.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
        return {"standardised_images": float(maps.shape[0])}

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return maps
        return (maps - self.mean) / self.std


class AnomalyModel(nn.Module):
    """Base class: input checks and the shared image-score pooling.

    Subclasses implement ``forward`` (train mode: loss inputs; eval mode:
    ``AnomalyOutput``) and ``compute_anomaly_map(...)`` with their own arguments, and call
    :meth:`output` at the end of eval-mode ``forward``.
    """

    has_severity: bool = False  # True: eval forward returns SeverityOutput (pred_severity [B] as well)

    def __init__(self, image_size: tuple[int, int], in_chans: int, pooling: PoolingConfig | None = None) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_chans = int(in_chans)
        self.pooling = pooling or PoolingConfig()
        check_pooling(self.pooling)

    def check_input(self, images: torch.Tensor) -> None:
        """One-line DataError when ``images`` is not ``[B, in_chans, H, W]`` at the model's size."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        expected = (self.in_chans, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise DataError(
                f"{type(self).__name__} expects images [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(channels, height, width as fitted), got {list(images.shape)}; resize the images or "
                "convert their channels to match the fitted model"
            )

    def compute_anomaly_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """``[B]`` image scores from ``[B, 1, H, W]`` maps with the configured pooling."""
        return pool_anomaly_map(anomaly_map, self.pooling)

    def output(self, anomaly_map: torch.Tensor) -> AnomalyOutput:
        """Wrap a map ``[B, 1, H, W]`` as :class:`AnomalyOutput` with its pooled score."""
        return AnomalyOutput(self.compute_anomaly_score(anomaly_map), anomaly_map)
