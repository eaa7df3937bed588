"""PaDiM (Defard et al., ICPR 2020, arXiv:2011.08785): one Gaussian per patch position.

Embedding: backbone maps of three layers (strides 4, 8, 16), the deeper ones resized
(nearest, as in the paper's code and anomalib) to the first layer's grid ``h × w`` and
concatenated, then a fixed random subset of ``n_features`` channels (``d``) is kept. For each
position ``i`` the normal embeddings ``x_i`` get a mean ``mu_i`` and covariance
``Sigma_i = cov(x_i) + eps·I`` (unbiased, ``eps`` = 0.01 as in the paper). A test patch scores

    M(x_i) = sqrt((x_i - mu_i)^T Sigma_i^{-1} (x_i - mu_i))        (Mahalanobis distance)

and the ``[B, 1, h, w]`` grid is upsampled (bilinear) to the image size and Gaussian-blurred.
The statistics are fitted by :class:`fabml.anomaly.methods.padim.PadimMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, BackboneModelConfig, GaussianBlur, backbone_extractor
from fabml.anomaly.models.feature_utils import concat_feature_maps, require_fitted, resize_buffers_for_load
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError, TrainingError


@dataclass
class PadimConfig(BackboneModelConfig):
    """Settings of :class:`Padim`.

    backbone / layers: timm model and ``out_indices`` (default ``tf_efficientnet_lite0``
    [1, 2, 3] = strides 4, 8, 16, channels 24 + 40 + 112 = 176, like ResNet-18 layer1..3 in
    the paper). n_features: random channels kept (paper/anomalib: 100 for ResNet-18, 550 for
    WRN-50); seed fixes which. blur_sigma: Gaussian blur of the map in pixels (0 = none).
    eps: added to the covariance diagonal (> 0).
    """

    n_features: int = 100
    blur_sigma: float = 4.0
    eps: float = 0.01
    seed: int = 0


def mahalanobis_map(embedding: torch.Tensor, mean: torch.Tensor, inv_covariance: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distances ``[B, 1, h, w]`` of embeddings ``[B, d, h, w]``.

    mean ``[d, h*w]``, inv_covariance ``[h*w, d, d]``; the quadratic form is clamped at 0
    before the square root.
    """
    batch, dim, height, width = embedding.shape
    # contiguous: the batched matmul is >10x slower on the permuted strides
    delta = (embedding.reshape(batch, dim, height * width) - mean).permute(2, 0, 1).contiguous()  # [hw, B, d]
    quad = (torch.matmul(delta, inv_covariance) * delta).sum(dim=2)  # [hw, B]
    return quad.clamp_min(0.0).sqrt().t().reshape(batch, 1, height, width)


@ANOMALY_MODELS.register("padim")
class Padim(AnomalyModel):
    """Frozen backbone + per-position Gaussian statistics.

    Train mode: ``forward(images)`` returns the embeddings ``[B, d, h, w]``. Eval mode:
    :class:`AnomalyOutput` with the blurred Mahalanobis map at the input resolution.
    Buffers: ``channel_index`` ``[d]`` (the random channels), ``mean`` ``[d, h*w]`` and
    ``inv_covariance`` ``[h*w, d, d]`` (empty until fitted; any fitted size loads).
    """

    config_class = PadimConfig

    def __init__(self, config: PadimConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        if not config.layers:
            raise ConfigError("model.layers is empty; PaDiM needs backbone layers (e.g. [1, 2, 3])")
        if config.eps <= 0:
            raise ConfigError(f"model.eps={config.eps} must be > 0 (it keeps each covariance invertible; paper: 0.01)")
        if config.blur_sigma < 0:
            raise ConfigError(f"model.blur_sigma={config.blur_sigma} must be >= 0 (0 = no blur)")
        self.config = config
        self.feature_extractor = backbone_extractor(config)
        total = int(sum(self.feature_extractor.channels))
        if not 0 < config.n_features <= total:
            raise ConfigError(
                f"model.n_features={config.n_features} must be in [1, {total}] "
                f"(channels of '{config.backbone}' layers {config.layers})"
            )
        gen = torch.Generator().manual_seed(config.seed)
        index = torch.randperm(total, generator=gen)[: config.n_features].sort().values
        self.channel_index: torch.Tensor
        self.mean: torch.Tensor
        self.inv_covariance: torch.Tensor
        self.register_buffer("channel_index", index)
        self.register_buffer("mean", torch.empty(config.n_features, 0))
        self.register_buffer("inv_covariance", torch.empty(0, config.n_features, config.n_features))
        self.blur: nn.Module = GaussianBlur(config.blur_sigma) if config.blur_sigma > 0 else nn.Identity()


    @property
    def fitted(self) -> bool:
        return int(self.mean.shape[1]) > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        resize_buffers_for_load(self, state_dict, prefix, ["mean", "inv_covariance"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_gaussian(self, mean: torch.Tensor, inv_covariance: torch.Tensor) -> None:
        """Install fitted statistics: mean ``[d, h*w]``, inv_covariance ``[h*w, d, d]`` (stored float32)."""
        d = self.config.n_features
        if mean.dim() != 2 or mean.shape[0] != d or tuple(inv_covariance.shape) != (mean.shape[1], d, d):
            raise ConfigError(
                f"PaDiM statistics must be mean [{d}, P] and inv_covariance [P, {d}, {d}], "
                f"got {list(mean.shape)} and {list(inv_covariance.shape)}"
            )
        device = self.channel_index.device
        self.mean = mean.detach().to(device, torch.float32).contiguous()
        self.inv_covariance = inv_covariance.detach().to(device, torch.float32).contiguous()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, d, h, w]`` (first layer's grid, random channel subset) of ``[B, C, H, W]``."""
        features = concat_feature_maps(self.feature_extractor(images), mode="nearest")
        return features.index_select(1, self.channel_index)

    def compute_anomaly_map(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: Mahalanobis distance of each position, upsampled (bilinear) and blurred."""
        distances = mahalanobis_map(embedding, self.mean, self.inv_covariance)
        distances = F.interpolate(distances, size=self.image_size, mode="bilinear", align_corners=False)
        return self.blur(distances)

    def forward(self, images: torch.Tensor) -> torch.Tensor | AnomalyOutput:
        self.check_input(images)
        embedding = self.embed(images)
        if self.training:
            return embedding
        require_fitted(self)
        positions = embedding.shape[2] * embedding.shape[3]
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and positions != self.mean.shape[1]:
            raise TrainingError(
                f"PaDiM statistics cover {self.mean.shape[1]} positions but the images give {positions}; "
                "refit the model at this image_size"
            )
        return self.output(self.compute_anomaly_map(embedding))
