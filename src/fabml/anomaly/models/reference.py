"""Reference (golden-template) comparison: each test image scored against its own aligned reference.

Input: ``[B, 2C, H, W]`` in [0, 1], the test image's ``C`` channels then those of its reference,
already aligned and light-matched onto the test image (:mod:`fabml.data.reference_view`; the
dataset does it in reference mode, and the ONNX graph takes the same stacked pair). Layout that
differs between parts is in both images, so it is not an anomaly; only what differs between a
part and its own template is.

Both images pass through the frozen backbone (``layers``, the deeper maps resized bilinearly to
the finest grid, ``[B, d, h, w]``), then every feature vector is whitened with ``W``, learnt from
normal pairs, and compared with the best match in a ``(2r + 1) x (2r + 1)`` neighbourhood of the
other image (``r = search_radius`` cells of the finest layer: a per-image nearest-neighbour bank of
the reference, which absorbs misalignment left after the warp), in both directions::

    D(p) = max( min_{|q - p| <= r} ||W (f_t(p) - f_r(q))||,  min_{|q - p| <= r} ||W (f_r(p) - f_t(q))|| )

The first term finds what the test image has and the reference lacks (a short, a spur, a
particle); the second what the reference has and the test image lacks (an open, a missing pad).
``D`` is upsampled (bilinear) to the image size and blurred (``blur_sigma`` px); the image score
pools it (``pooling``, default max).

Fit (:class:`fabml.anomaly.methods.reference.ReferenceMethod`): on normal pairs, the differences
``delta = f_a(p) - f_b(q*)`` to the best neighbourhood match ``q*`` (both directions) give the
second-moment matrix ``M = E[delta delta^T]`` of *normal* differences (sensor noise, residual
misalignment, light); ``W = (M + eps · mean(diag M) · I)^(-1/2)`` (eigendecomposition) weighs each
direction of feature space by how much it varies between a good part and its template
(Mahalanobis distance under the nuisance of normal pairs). Unfitted, ``W = I``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, BackboneModelConfig, GaussianBlur, backbone_extractor
from fabml.anomaly.models.feature_utils import concat_feature_maps, require_fitted
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError, DataError


@dataclass
class ReferenceConfig(BackboneModelConfig):
    """Settings of :class:`ReferenceCompare`.

    layers: backbone ``out_indices`` (default [1, 2]: strides 4 and 8 of ``tf_efficientnet_lite0``,
    24 + 40 = 64 channels; small defects need the fine layers). search_radius: neighbourhood half
    size ``r`` in cells of the finest layer (1 = 3 x 3 cells = +-4 px at stride 4). blur_sigma:
    Gaussian blur of the map in pixels (0 = none). eps: ridge of the whitening, relative to the mean
    variance of normal differences.
    """

    layers: list[int] = field(default_factory=lambda: [1, 2])
    search_radius: int = 1
    blur_sigma: float = 2.0
    eps: float = 0.01


def shifted_min_distance(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, 1, h, w]``: squared distance of each vector of ``a`` ``[B, d, h, w]`` to its nearest vector of
    ``b`` within ``radius`` cells (``b`` padded by repeating its border)."""
    h, w = a.shape[-2:]
    padded = F.pad(b, (radius, radius, radius, radius), mode="replicate")
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d2 = (a - padded[:, :, dy:dy + h, dx:dx + w]).pow(2).sum(dim=1, keepdim=True)
            best = d2 if best is None else torch.minimum(best, d2)
    assert best is not None
    return best


def nearest_differences(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B*h*w, d]``: for each vector of ``a`` ``[B, d, h, w]``, ``a(p) - b(q*)`` with ``q*`` its nearest
    vector of ``b`` within ``radius`` cells (what :func:`shifted_min_distance` measures)."""
    batch, dim, h, w = a.shape
    padded = F.pad(b, (radius, radius, radius, radius), mode="replicate")
    shifts = [padded[:, :, dy:dy + h, dx:dx + w] for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)]
    stack = torch.stack(shifts, dim=1)  # [B, S, d, h, w]
    best = (a.unsqueeze(1) - stack).pow(2).sum(dim=2).argmin(dim=1)  # [B, h, w]
    chosen = stack.gather(1, best[:, None, None].expand(batch, 1, dim, h, w)).squeeze(1)
    return (a - chosen).permute(0, 2, 3, 1).reshape(-1, dim)


@ANOMALY_MODELS.register("reference")
class ReferenceCompare(AnomalyModel):
    """Golden-template comparison (module docstring).

    ``in_chans`` is the channel count of *one* image; the input holds ``2 * in_chans`` channels.
    Train mode: ``forward(pairs)`` returns the features ``(f_t, f_r)``, each ``[B, d, h, w]``. Eval
    mode: :class:`AnomalyOutput`. Buffers: ``whiten`` ``[d, d]`` (``W``), ``n_fit`` (normal
    difference vectors it was fitted on; 0 = unfitted).
    """

    config_class = ReferenceConfig
    pair_input = True  # the input stacks a test image and its reference along channels

    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        if not config.layers:
            raise ConfigError("model.layers is empty; the reference model needs backbone layers (e.g. [1, 2])")
        if isinstance(config.search_radius, bool) or not isinstance(config.search_radius, int) \
                or not 0 <= config.search_radius <= 4:
            raise ConfigError(f"model.search_radius={config.search_radius!r} must be a whole number in [0, 4] "
                              "(cells of the finest feature layer)")
        if config.blur_sigma < 0:
            raise ConfigError(f"model.blur_sigma={config.blur_sigma} must be >= 0 (0 = no blur)")
        if config.eps <= 0:
            raise ConfigError(f"model.eps={config.eps} must be > 0 (it keeps the whitening finite)")
        self.config = config
        self.feature_extractor = backbone_extractor(config)
        dim = int(sum(self.feature_extractor.channels))
        self.whiten: torch.Tensor
        self.n_fit: torch.Tensor
        self.register_buffer("whiten", torch.eye(dim))
        self.register_buffer("n_fit", torch.zeros((), dtype=torch.int64))
        self.blur: nn.Module = GaussianBlur(config.blur_sigma) if config.blur_sigma > 0 else nn.Identity()

    @property
    def fitted(self) -> bool:
        return int(self.n_fit) > 0

    def check_input(self, images: torch.Tensor) -> None:
        """One-line DataError unless ``images`` is ``[B, 2 * in_chans, H, W]`` (a test image and its reference)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        expected = (2 * self.in_chans, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            hint = ("a single image came without its reference: set data.pairs_csv, data.reference_image or "
                    "data.reference_pattern" if images.dim() == 4 and images.shape[1] == self.in_chans else
                    "resize the images or convert their channels to match the fitted model")
            raise DataError(f"the reference model expects pairs [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                            f"(test image and reference stacked on channels), got {list(images.shape)}; {hint}")

    def set_whitening(self, second_moment: torch.Tensor, count: int) -> None:
        """Install ``W = (M + eps·mean(diag M)·I)^(-1/2)`` from the second moment ``M`` ``[d, d]`` of ``count``
        normal differences."""
        dim = self.whiten.shape[0]
        if tuple(second_moment.shape) != (dim, dim):
            raise ConfigError(f"the whitening needs a [{dim}, {dim}] second moment, got {list(second_moment.shape)}")
        m = second_moment.double()
        m = 0.5 * (m + m.T) + self.config.eps * m.diagonal().mean() * torch.eye(dim, dtype=m.dtype, device=m.device)
        values, vectors = torch.linalg.eigh(m)
        w = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
        self.whiten = w.float().to(self.whiten.device)
        self.n_fit = torch.tensor(int(count), dtype=torch.int64, device=self.n_fit.device)

    @torch.no_grad()
    def embed(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw features ``(f_t, f_r)`` ``[B, d, h, w]`` of the test images and references in ``pairs``."""
        c = self.in_chans
        both = torch.cat([pairs[:, :c], pairs[:, c:]], dim=0)  # one backbone pass for 2B images
        features = concat_feature_maps(self.feature_extractor(both), mode="bilinear")
        return features[: pairs.shape[0]], features[pairs.shape[0]:]

    def compute_anomaly_map(self, test_features: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]``: the two-way whitened nearest-neighbour distance ``D``, upsampled and blurred."""
        weight = self.whiten[:, :, None, None]
        a, b = F.conv2d(test_features, weight), F.conv2d(reference_features, weight)
        r = self.config.search_radius
        distance = torch.maximum(shifted_min_distance(a, b, r), shifted_min_distance(b, a, r)).clamp_min(0.0).sqrt()
        distance = F.interpolate(distance, size=self.image_size, mode="bilinear", align_corners=False)
        return self.blur(distance)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | AnomalyOutput:
        self.check_input(images)
        test_features, reference_features = self.embed(images)
        if self.training:
            return test_features, reference_features
        require_fitted(self)
        return self.output(self.compute_anomaly_map(test_features, reference_features))
