"""EfficientAD (Batzner et al., WACV 2024): PDN teacher/student plus an autoencoder.

Networks (the paper's architectures):

- Patch description network (PDN), ``small``: conv 4x4 -> avgpool 2 -> conv 4x4 -> avgpool 2
  -> conv 3x3 -> conv 4x4 (128, 256, 256, 384 channels; receptive field 33 px, stride 4);
  ``medium``: 256, 512, 512 (1x1), 512 (3x3), 384 (4x4), 384 (1x1). A 256 px image gives a
  56x56 grid. The teacher (384 channels) is frozen; the student has 768 output channels: the
  first 384 mimic the teacher, the rest mimic the autoencoder.
- Autoencoder: six stride-2 convolutions down to a 1x1 bottleneck of 64 channels, then eight
  convolutions with bilinear resizing between them back to the PDN grid (3, 8, 15, 32, 63, 127,
  then 56 px for a 256 px image; the same fractions of other sizes).

Input ``[B, C, H, W]`` in [0, 1] is normalised inside each network (ImageNet mean/std, or
their channel averages 0.449/0.226 for 1-channel images). Teacher outputs are standardised
with per-channel ``teacher_mean``/``teacher_std`` buffers computed on the training images.

Eval map: ``st = mean_c (T - S_st)^2``, ``ae = mean_c (A - S_ae)^2``, each mapped linearly so
that its ``qa`` quantile on held-out normal images goes to 0 and its ``qb`` quantile to 0.1
(``0.1 (m - qa) / (qb - qa)``); ``map = 0.5 st + 0.5 ae``, zero-padded by 4 cells (no-padding
PDN) and bilinearly upsampled to the image size. Before ``finalize`` the quantile buffers
(``qa = 0``, ``qb = 0.1``) make the normalisation the identity.

Teacher weights (the model reads no file; it declares where they come from in
:meth:`EfficientAdModel.pretrained_files`, and :func:`fabml.weights.load_pretrained` loads them
before fitting): ``teacher_weights`` (a state-dict file, e.g. anomalib's
``pretrained_teacher_small.pth``), else ``pretrained_teacher_<size>.pth`` /
``teacher_<size>.pth`` in ``weights_dir`` or ``$FABML_WEIGHTS_DIR`` (or their
``efficientad_pretrained_weights/`` subfolder); else, with ``pretrained=True``, the method
distils the teacher from the local backbone ``backbone`` before training (``teacher_ready`` is
0 until then); ``pretrained=False`` keeps a random teacher.

``teacher: backbone`` (a CPU setting, not the paper's): no PDN teacher at all; the teacher's output is
the frozen pretrained backbone's features, described as the distillation targets are
(:func:`backbone_targets`: 3x3 local mean of each of ``layers``, bilinear resize to the PDN grid,
channels pooled to ``out_channels``). The paper's PDN teacher is itself distilled to imitate such
features (for 60 000 ImageNet steps); a CPU cannot afford that, and using the features directly gives
the student and autoencoder the target the distillation aims at. The PDN student and the autoencoder
are unchanged; the teacher costs one backbone forward pass per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, PoolingConfig, backbone_extractor
from fabml.backbones import FeatureExtractor
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError
from fabml.weights import LoadReport, PretrainedFile

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = sum(IMAGENET_MEAN) / 3
GRAY_STD = sum(IMAGENET_STD) / 3
SIZES = ("small", "medium")
TEACHERS = ("pdn", "backbone")
MIN_SIZE = 64  # the autoencoder's five stride-2 convolutions need at least 2 px left
MAP_PAD = 4  # grid cells the no-padding PDN loses on each side (its 33 px receptive field at stride 4)


@dataclass
class EfficientAdConfig:
    """Settings of :class:`EfficientAdModel` (training settings are read by its method).

    model_size: ``small`` | ``medium``. out_channels: teacher channels (paper 384).
    width_scale: multiplies the PDN hidden widths (1.0 = paper; < 1 only for quick tests).
    padding: zero padding in the PDN convolutions (paper: none). pad_maps: pad the maps of a
    no-padding PDN by 4 cells before upsampling, so that they line up with the image.
    teacher: ``pdn`` (the paper's) | ``backbone`` (the backbone's features themselves; see the module doc).
    Teacher: ``pretrained``, ``teacher_weights``, ``weights_dir`` (see the module doc).
    Distillation (only when no teacher file is found): timm ``backbone`` with ``layers``
    (its ``weights``, ``weights_dir``, ``channel_mode``), ``distill_steps`` Adam steps at
    ``distill_lr`` on the training images. penalty_dir: folder of generic images (e.g.
    ImageNet) for the paper's penalty term, off when unset. hard_quantile: the student loss
    keeps the squared differences above this quantile (paper 0.999). map_quantiles: ``(qa,
    qb)`` of the map normalisation (paper 0.9, 0.995).
    """

    image_size: tuple[int, int] = (256, 256)
    in_chans: int = 3
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    model_size: str = "small"
    teacher: str = "pdn"
    out_channels: int = 384
    width_scale: float = 1.0
    padding: bool = False
    pad_maps: bool = True
    pretrained: bool = True
    teacher_weights: str | None = None
    weights_dir: str | None = None
    backbone: str = "tf_efficientnet_lite0"
    layers: list[int] = field(default_factory=lambda: [2, 3])
    weights: str | None = None
    channel_mode: str = "repeat"
    distill_steps: int = 1000
    distill_lr: float = 1e-4
    penalty_dir: str | None = None
    hard_quantile: float = 0.999
    map_quantiles: tuple[float, float] = (0.9, 0.995)


class ImageNorm(nn.Module):
    """``(x - mean) / std`` per channel: ImageNet statistics, or their averages for 1 channel."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        mean = IMAGENET_MEAN if in_chans == 3 else (GRAY_MEAN,)
        std = IMAGENET_STD if in_chans == 3 else (GRAY_STD,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def backbone_targets(
    extractor: FeatureExtractor, images: torch.Tensor, channels: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Distillation targets ``[B, channels, h, w]`` from a backbone, as PatchCore describes patches.

    Each layer: 3x3 local mean, bilinear resize to the PDN grid, adaptive average pooling along
    channels to ``channels`` (repeating channels when a layer has fewer); then the layers'
    results are averaged. No learned or random projection is involved.
    """
    out = []
    for feat in extractor(images):
        feat = F.avg_pool2d(feat, 3, stride=1, padding=1)
        feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
        b, c, h, w = feat.shape
        pooled = F.adaptive_avg_pool1d(feat.permute(0, 2, 3, 1).reshape(-1, 1, c), channels)
        out.append(pooled.reshape(b, h, w, channels).permute(0, 3, 1, 2))
    return torch.stack(out).mean(dim=0)


class BackboneTeacher(nn.Module):
    """``teacher: backbone``: images ``[B, C, H, W]`` in [0, 1] -> :func:`backbone_targets` ``[B, channels, h, w]``
    of a frozen extractor on the PDN grid ``(h, w)``."""

    def __init__(self, extractor: FeatureExtractor, channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.extractor = extractor
        self.channels = channels
        self.grid = grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return backbone_targets(self.extractor, images, self.channels, self.grid)


class PatchDescriptionNetwork(nn.Module):
    """PDN ``[B, in_chans, H, W]`` in [0, 1] -> ``[B, out_channels, h, w]`` (``h = H/4 - 8`` without padding).

    Module names (``conv1`` ... ``conv4`` small, ``conv1`` ... ``conv6`` medium) match
    anomalib's teacher files, so those state dicts load by key. ``width_scale`` multiplies the
    hidden widths (1.0 = paper; smaller only for quick experiments and tests).
    """

    def __init__(
        self, size: str, in_chans: int, out_channels: int, padding: bool = False, width_scale: float = 1.0
    ) -> None:
        super().__init__()
        p = 1 if padding else 0
        self.size = size
        self.norm = ImageNorm(in_chans)
        self.avgpool1 = nn.AvgPool2d(2, stride=2, padding=p)
        self.avgpool2 = nn.AvgPool2d(2, stride=2, padding=p)
        w1, w2 = (max(1, round(c * width_scale)) for c in ((128, 256) if size == "small" else (256, 512)))
        if size == "small":
            self.conv1 = nn.Conv2d(in_chans, w1, 4, padding=3 * p)
            self.conv2 = nn.Conv2d(w1, w2, 4, padding=3 * p)
            self.conv3 = nn.Conv2d(w2, w2, 3, padding=p)
            self.conv4 = nn.Conv2d(w2, out_channels, 4)
            self.tail: list[str] = ["conv3", "conv4"]
        else:
            self.conv1 = nn.Conv2d(in_chans, w1, 4, padding=3 * p)
            self.conv2 = nn.Conv2d(w1, w2, 4, padding=3 * p)
            self.conv3 = nn.Conv2d(w2, w2, 1)
            self.conv4 = nn.Conv2d(w2, w2, 3, padding=p)
            self.conv5 = nn.Conv2d(w2, out_channels, 4)
            self.conv6 = nn.Conv2d(out_channels, out_channels, 1)
            self.tail = ["conv3", "conv4", "conv5", "conv6"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool1(F.relu(self.conv1(self.norm(x))))
        x = self.avgpool2(F.relu(self.conv2(x)))
        for i, name in enumerate(self.tail):
            x = getattr(self, name)(x)
            if i < len(self.tail) - 1:
                x = F.relu(x)
        return x


def pdn_output_size(n: int, padding: bool) -> int:
    """Grid side of the PDN output for an input side ``n`` (same for small and medium)."""
    p = 1 if padding else 0
    n = n + 6 * p - 3  # conv1 4x4
    n = (n + 2 * p - 2) // 2 + 1  # avgpool1
    n = n + 6 * p - 3  # conv2 4x4
    n = (n + 2 * p - 2) // 2 + 1  # avgpool2
    n = n + 2 * p - 2  # 3x3 conv
    return n - 3  # last 4x4 conv


def encoder_grid(n: int) -> int:
    """Side left after the autoencoder's five 4x4 stride-2 convolutions (padding 1)."""
    for _ in range(5):
        n = (n - 2) // 2 + 1
    return n


class AutoEncoder(nn.Module):
    """EfficientAD autoencoder ``[B, in_chans, H, W] -> [B, out_channels, h, w]`` on the PDN grid ``(h, w)``.

    Encoder: 32, 32, 64, 64, 64 channels (4x4, stride 2), then a 64-channel convolution whose
    kernel covers the remaining grid (8x8 at 256 px, as the paper) to a 1x1 bottleneck.
    Decoder: bilinear resize to ``H/64 - 1, H/32, H/16 - 1, H/8, H/4 - 1, H/2 - 1`` (at least 1),
    each followed by a 4x4 conv (padding 2), ReLU and dropout 0.2; then resize to the PDN grid
    and two 3x3 convolutions.
    """

    def __init__(self, image_size: tuple[int, int], in_chans: int, out_channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.norm = ImageNorm(in_chans)
        widths = [in_chans, 32, 32, 64, 64, 64]
        self.encoder = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        kernel = tuple(min(8, encoder_grid(s)) for s in image_size)
        self.bottleneck = nn.Conv2d(64, 64, kernel)
        self.decoder = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in range(6))
        self.dropout = nn.Dropout(p=0.2)
        self.deconv7 = nn.Conv2d(64, 64, 3, padding=1)
        self.deconv8 = nn.Conv2d(64, out_channels, 3, padding=1)
        h, w = image_size
        fractions = [(64, -1), (32, 0), (16, -1), (8, 0), (4, -1), (2, -1)]
        self.sizes = [(max(1, h // d + o), max(1, w // d + o)) for d, o in fractions]
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for conv in self.encoder:
            x = F.relu(conv(x))
        x = self.bottleneck(x)
        for conv, size in zip(self.decoder, self.sizes):
            x = F.interpolate(x, size=size, mode="bilinear")
            x = self.dropout(F.relu(conv(x)))
        x = F.interpolate(x, size=self.grid, mode="bilinear")
        return self.deconv8(F.relu(self.deconv7(x)))


@ANOMALY_MODELS.register("efficient_ad")
class EfficientAdModel(AnomalyModel):
    """EfficientAD on images ``[B, in_chans, H, W]`` in [0, 1] (``H, W >= 64``).

    Train mode: ``forward(images) -> (teacher [B, C, h, w] standardised, student [B, 2C, h, w],
    autoencoder [B, C, h, w])`` with ``C = out_channels`` and ``(h, w)`` the PDN grid.
    Eval mode: ``forward(images) -> AnomalyOutput``.
    """

    config_class = EfficientAdConfig

    def __init__(self, config: EfficientAdConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_config(config)
        self.config = config
        c = config.out_channels
        h, w = self.image_size
        self.grid: tuple[int, int] = (pdn_output_size(h, config.padding), pdn_output_size(w, config.padding))
        args = (config.model_size, config.in_chans)
        self.teacher: nn.Module = (
            BackboneTeacher(backbone_extractor(config), c, self.grid) if config.teacher == "backbone"
            else PatchDescriptionNetwork(*args, c, config.padding, config.width_scale)
        )
        self.student = PatchDescriptionNetwork(*args, 2 * c, config.padding, config.width_scale)
        self.autoencoder = AutoEncoder(self.image_size, config.in_chans, c, self.grid)
        self.teacher.requires_grad_(False)
        self.register_buffer("teacher_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, c, 1, 1))
        self.register_buffer("stats_ready", torch.tensor(False))
        self.register_buffer("teacher_ready", torch.tensor(not config.pretrained or config.teacher == "backbone"))
        for name, value in (("qa_st", 0.0), ("qb_st", 0.1), ("qa_ae", 0.0), ("qb_ae", 0.1)):
            self.register_buffer(name, torch.tensor(value))

    def pretrained_files(self) -> list[PretrainedFile]:
        """The teacher's state-dict file for the weights step (nothing when ``pretrained=False``, and nothing
        for ``teacher: backbone``, whose extractor gets the backbone's weights like every other extractor)."""
        if not self.config.pretrained or self.config.teacher == "backbone":
            return []
        names = teacher_file_names(self.config.model_size)
        return [PretrainedFile(
            what="EfficientAD teacher", setting="model.teacher_weights", file=self.config.teacher_weights,
            folder=self.config.weights_dir,
            names=tuple(names) + tuple(f"efficientad_pretrained_weights/{n}" for n in names),
            load=self.load_teacher_state,
        )]

    def load_teacher_state(self, state: dict[str, torch.Tensor], path: Path) -> LoadReport:
        """Put a teacher state dict (read from ``path``) into the teacher; it is then ready."""
        mode = load_teacher(self.teacher, state, path)
        self.teacher_ready.fill_(True)
        return LoadReport(Path(path), mode, len(self.teacher.state_dict()), ())

    def train(self, mode: bool = True) -> EfficientAdModel:
        """Switch mode; the frozen teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised teacher output ``[B, C, h, w]`` (no gradient)."""
        with torch.no_grad():
            return (self.teacher(images) - self.teacher_mean) / self.teacher_std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | AnomalyOutput:
        self.check_input(images)
        teacher = self.teacher_features(images)
        student = self.student(images)
        ae = self.autoencoder(images)
        if self.training:
            return teacher, student, ae
        map_st, map_ae = self.raw_maps(teacher, student, ae)
        return self.output(self.compute_anomaly_map(map_st, map_ae))

    def raw_maps(
        self, teacher: torch.Tensor, student: torch.Tensor, ae: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ``[B, 1, h, w]`` student-teacher and student-autoencoder maps on the PDN grid."""
        c = self.config.out_channels
        map_st = ((teacher - student[:, :c]) ** 2).mean(dim=1, keepdim=True)
        map_ae = ((ae - student[:, c:]) ** 2).mean(dim=1, keepdim=True)
        return map_st, map_ae

    def compute_anomaly_map(self, map_st: torch.Tensor, map_ae: torch.Tensor) -> torch.Tensor:
        """Quantile-normalise both raw maps, average them and upsample to ``[B, 1, H, W]``."""
        st = 0.1 * (map_st - self.qa_st) / (self.qb_st - self.qa_st)
        ae = 0.1 * (map_ae - self.qa_ae) / (self.qb_ae - self.qa_ae)
        combined = 0.5 * st + 0.5 * ae
        if self.config.pad_maps and not self.config.padding:
            combined = F.pad(combined, (MAP_PAD, MAP_PAD, MAP_PAD, MAP_PAD))
        return F.interpolate(combined, size=self.image_size, mode="bilinear")


def teacher_file_names(model_size: str) -> list[str]:
    """File names looked up in the weights folder: anomalib's, then the original repository's."""
    return [f"pretrained_teacher_{model_size}.pth", f"teacher_{model_size}.pth"]


def load_teacher(teacher: PatchDescriptionNetwork, source: dict[str, torch.Tensor], path: str | Path) -> str:
    """Load the PDN state dict ``source`` (read from ``path``, named in errors) into ``teacher``.

    Keys are matched by name (anomalib's ``conv1.weight`` ...) after removing a ``teacher.``
    prefix, else tensor by tensor in order (the original repository's ``0.weight``, ``3.weight``
    ...). A 3-channel file loads into a 1-channel PDN by folding its first convolution (exact
    without padding: see :func:`fold_rgb_conv`). Returns how keys were matched ("name" | "order").
    """
    mode = "name"
    if all(k.startswith("teacher.") for k in source):
        source = {k[len("teacher."):]: v for k, v in source.items()}
    target = teacher.state_dict()
    if set(source) != set(target):
        if len(source) != len(target):
            raise ConfigError(
                f"teacher weights {path} hold {len(source)} tensors, a {teacher.size} PDN has {len(target)}: "
                "is the file for the other model.model_size?"
            )
        source = dict(zip(target, source.values()))
        mode = "order"
    first = source["conv1.weight"]
    if first.shape[1] == 3 and target["conv1.weight"].shape[1] == 1:
        source["conv1.weight"], source["conv1.bias"] = fold_rgb_conv(first, source["conv1.bias"])
    for key, value in target.items():
        if source[key].shape != value.shape:
            raise ConfigError(
                f"teacher weights {path}: {key} has shape {list(source[key].shape)}, the {teacher.size} PDN "
                f"with these settings needs {list(value.shape)} (check model.model_size and model.out_channels)"
            )
    teacher.load_state_dict(source)
    return mode


def fold_rgb_conv(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-channel first conv (after ImageNet normalisation) as a 1-channel one after gray normalisation.

    With gray ``x`` repeated to 3 channels, ``z_c = (x - m_c) / s_c`` and the 1-channel input
    ``z = (x - m) / s``: ``z_c = (s z + m - m_c) / s_c``, so ``W' = sum_c W_c s / s_c`` and
    ``b' = b + sum_{c,k} W_c[k] (m - m_c) / s_c``. Exact when the conv has no zero padding.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=weight.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, 3, 1, 1)
    folded = (weight * GRAY_STD / std).sum(dim=1, keepdim=True)
    shift = (weight * (GRAY_MEAN - mean) / std).sum(dim=(1, 2, 3))
    return folded, bias + shift


def check_config(config: EfficientAdConfig) -> None:
    """One-line ConfigError for settings EfficientAD cannot run with."""
    if config.teacher not in TEACHERS:
        raise ConfigError(f"model.teacher={config.teacher!r}: choose one of {', '.join(TEACHERS)}")
    if config.teacher == "backbone" and not config.layers:
        raise ConfigError("model.layers is empty; teacher 'backbone' needs at least one backbone layer (e.g. [3])")
    if config.model_size not in SIZES:
        raise ConfigError(f"model.model_size={config.model_size!r}: choose one of {', '.join(SIZES)}")
    if config.in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans={config.in_chans}: EfficientAD takes 1- or 3-channel images")
    if min(config.image_size) < MIN_SIZE:
        raise ConfigError(
            f"model.image_size={list(config.image_size)}: EfficientAD needs images of at least {MIN_SIZE} px a side "
            "(paper 256); raise data.image_size"
        )
    if config.width_scale <= 0:
        raise ConfigError(f"model.width_scale={config.width_scale} must be > 0 (paper 1.0)")
    if config.out_channels < 1:
        raise ConfigError(f"model.out_channels={config.out_channels} must be >= 1 (paper 384)")
    if not 0.0 < config.hard_quantile < 1.0:
        raise ConfigError(f"model.hard_quantile={config.hard_quantile} must be in (0, 1) (paper 0.999)")
    qa, qb = config.map_quantiles
    if not 0.0 <= qa < qb <= 1.0:
        raise ConfigError(
            f"model.map_quantiles={list(config.map_quantiles)} must satisfy 0 <= qa < qb <= 1 (paper 0.9, 0.995)"
        )
    if config.distill_steps < 1:
        raise ConfigError(f"model.distill_steps={config.distill_steps} must be >= 1")
