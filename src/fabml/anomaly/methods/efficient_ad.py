"""EfficientAD training (Batzner et al., 2024, Algorithm 1), teacher distillation and map normalisation.

Order of work (``fabml.anomaly.pipeline.fit`` calls them in this order):

1. ``prepare(train_loader)``: distil the teacher from a local backbone when the weights step
   (:func:`fabml.weights.load_pretrained`) found no teacher file (:func:`distill_teacher`),
   then store the teacher's per-channel mean and std over the training images (buffers
   ``teacher_mean`` / ``teacher_std``).
2. ``training_step(batch)`` under the trainer, for an image batch ``I`` (normal images):

       d        = (T(I) - S_st(I))^2                       T standardised, S_st = first C student channels
       L_hard   = mean of the d above their 0.999 quantile
       L_pen    = mean S_st(P)^2, P = images from model.penalty_dir (ImageNet in the paper; off when unset)
       I_aug    = brightness, contrast or saturation of I scaled by U(0.8, 1.2)
       L_ae     = mean (T(I_aug) - A(I_aug))^2
       L_stae   = mean (A(I_aug) - S_ae(I_aug))^2           S_ae = last C student channels
       loss     = L_hard + L_pen + L_ae + L_stae

3. ``finalize(val_loader)``: the ``qa``/``qb`` quantiles (0.9 / 0.995) of the raw
   student-teacher and student-autoencoder maps over held-out normal images, stored as the
   model's ``qa_st, qb_st, qa_ae, qb_ae`` buffers.

Randomness (augmentation choice, penalty images) comes from a per-step generator kept in
buffers (:class:`~fabml.engine.step_generator.StepGenerator`), so resume is exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.engine.step_generator import StepGenerator
from fabml.anomaly.models.efficient_ad import (  # backbone_targets: also the distillation target
    EfficientAdModel, PatchDescriptionNetwork, backbone_targets, teacher_file_names,
)
from fabml.backbones import FeatureExtractor
from fabml.errors import ConfigError, DataError, FabmlError, TrainingError
from fabml.weights import WEIGHTS_DIR_ENV, load_pretrained_backbone

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def hard_feature_loss(distance: torch.Tensor, quantile: float = 0.999) -> torch.Tensor:
    """The paper's "mean of the squared differences at or above their ``quantile``" (any shape).

    With ``n`` entries the linear-interpolation quantile sits at sorted position
    ``p = quantile (n - 1)``, so the entries at or above it are the top ``n - ceil(p)``; taking
    them with ``topk`` avoids ``torch.quantile``'s 2^24-element limit.
    """
    flat = distance.flatten()
    k = max(1, flat.numel() - math.ceil(quantile * (flat.numel() - 1)))
    return flat.topk(k).values.mean()


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) for tensors of any size, via ``kthvalue``."""
    flat = values.flatten().float()
    pos = q * (flat.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = flat.kthvalue(lo + 1).values
    v_hi = flat.kthvalue(hi + 1).values if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of brightness, contrast or saturation (3 channels only) scaled by ``U(0.8, 1.2)``.

    As torchvision's ``adjust_*``: blend the image with black, its mean gray level, or its
    gray version with ratio ``lambda``, clamped to [0, 1].
    """
    choices = 3 if images.shape[1] == 3 else 2
    draws = torch.rand(2, generator=generator)
    factor = 0.8 + 0.4 * float(draws[0])
    kind = min(int(float(draws[1]) * choices), choices - 1)
    gray = gray_level(images)
    if kind == 0:
        other = torch.zeros_like(images)
    elif kind == 1:
        other = gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(images)
    else:
        other = gray.expand_as(images)
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)


def gray_level(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luminance (ITU-R 601 weights for RGB; the channel itself for gray)."""
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class PenaltyImages:
    """Generic images for the penalty term, read from ``folder`` (recursively, sorted by path).

    Each image is resized to twice the model size, turned gray with probability 0.3 (RGB
    models) and centre-cropped to the model size, as in the paper's ImageNet loader.
    """

    def __init__(self, folder: str, image_size: tuple[int, int], in_chans: int) -> None:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"penalty image folder not found: {root} (setting model.penalty_dir)")
        self.paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ConfigError(
                f"model.penalty_dir={root} holds no images ({', '.join(IMAGE_SUFFIXES)}); fill it or unset the setting"
            )
        self.image_size = image_size
        self.in_chans = in_chans

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """``[n, in_chans, H, W]`` float images in [0, 1], drawn with ``generator``."""
        draws = torch.rand(2 * n, generator=generator).tolist()
        images = [self.load(self.paths[int(draws[2 * i] * len(self.paths)) % len(self.paths)], draws[2 * i + 1] < 0.3)
                  for i in range(n)]
        return torch.stack(images).to(device)

    def load(self, path: Path, grayscale: bool) -> torch.Tensor:
        """One image ``[in_chans, H, W]`` in [0, 1]: resize to 2x, centre crop, gray when asked."""
        h, w = self.image_size
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.in_chans == 1 or grayscale else "RGB")
                img = img.resize((2 * w, 2 * h), Image.Resampling.BILINEAR)
                img = img.crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
                array = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as err:
            raise DataError(f"cannot read penalty image {path} ({err}); remove it from model.penalty_dir") from None
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        if tensor.shape[0] != self.in_chans:
            tensor = tensor.expand(self.in_chans, -1, -1).contiguous()
        return tensor


def cycle(loader: Iterable[dict[str, torch.Tensor]], steps: int) -> Iterator[torch.Tensor]:
    """``steps`` image batches, going over ``loader`` again as often as needed."""
    done = 0
    while done < steps:
        empty = True
        for batch in loader:
            empty = False
            yield batch["image"]
            done += 1
            if done >= steps:
                return
        if empty:
            raise DataError("the training loader is empty: EfficientAD needs normal training images")


def distill_teacher(
    teacher: PatchDescriptionNetwork,
    extractor: FeatureExtractor,
    loader: Iterable[dict[str, torch.Tensor]],
    grid: tuple[int, int],
    steps: int,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
) -> dict[str, float]:
    """Train ``teacher`` (in place) to regress standardised :func:`backbone_targets` on ``loader``'s images.

    A first pass over ``loader`` gives the targets' per-channel mean and std; then ``steps``
    Adam steps minimise the mean squared error. The paper distils WideResNet-101 features on
    ImageNet for 60 000 steps; here the training images stand in for ImageNet. Returns the
    first and last step's loss. The teacher ends frozen (no gradients, eval mode).
    """
    device = next(teacher.parameters()).device
    extractor.to(device).eval()
    channels = pdn_channels(teacher)
    with torch.no_grad():
        mean, std, _ = channel_mean_std(
            backbone_targets(extractor, batch["image"].to(device), channels, grid) for batch in loader
        )
    teacher.requires_grad_(True).train()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for images in cycle(loader, steps):
        images = images.to(device)
        with torch.no_grad():
            target = (backbone_targets(extractor, images, channels, grid) - mean) / std
        loss = F.mse_loss(teacher(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    teacher.requires_grad_(False).eval()
    return {"distill_loss_first": losses[0], "distill_loss_last": losses[-1], "distill_steps": float(len(losses))}


def pdn_channels(pdn: PatchDescriptionNetwork) -> int:
    """Output channels of a PDN (those of its last convolution)."""
    return getattr(pdn, pdn.tail[-1]).out_channels


def channel_mean_std(maps: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and population std ``[1, C, 1, 1]`` over every position of ``[B, C, h, w]``
    batches (float64 sums), and the number of images; an empty iterable is a DataError."""
    total = total_sq = None
    count = images = 0
    for x in maps:
        x = x.double()
        sums, sq = x.sum(dim=(0, 2, 3)), (x**2).sum(dim=(0, 2, 3))
        total, total_sq = (sums, sq) if total is None else (total + sums, total_sq + sq)
        count += x[:, 0].numel()
        images += x.shape[0]
    if total is None or total_sq is None:
        raise DataError("the training loader is empty: EfficientAD needs normal training images")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-8).sqrt()  # floor: a constant channel must not divide by 0
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1), images


@torch.no_grad()
def teacher_channel_stats(
    teacher: PatchDescriptionNetwork, loader: Iterable[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`channel_mean_std` of the teacher's output over the images of ``loader``."""
    device = next(teacher.parameters()).device
    return channel_mean_std(teacher(batch["image"].to(device)) for batch in loader)


@ANOMALY_METHODS.register("efficient_ad")
class EfficientAdMethod(AnomalyMethod):
    """Trains the student and the autoencoder of an :class:`EfficientAdModel`; the teacher stays frozen.

    Paper: Adam, lr 1e-4, weight decay 1e-5, batch size 1, 70 000 steps (lr x0.1 for the last
    5 %, not reproduced: the rate stays constant). ``default_train`` uses these numbers with
    ``max_steps`` as the length; lower ``train.max_steps`` on a CPU.
    """

    default_train: ClassVar[dict[str, Any]] = {
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "batch_size": 1,
        "epochs": 70_000,
        "max_steps": 70_000,
        "scheduler": "constant",
    }

    model: EfficientAdModel

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__(model)
        self.rng = StepGenerator()
        cfg = model.config
        self.penalty = PenaltyImages(cfg.penalty_dir, model.image_size, model.in_chans) if cfg.penalty_dir else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and autoencoder parameters (the teacher is frozen)."""
        return [p for p in (*self.model.student.parameters(), *self.model.autoencoder.parameters()) if p.requires_grad]

    def prepare(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Before training: distil the teacher if needed, then set the teacher's channel mean/std."""
        model = self.model
        stats: dict[str, float] = {}
        if not bool(model.teacher_ready):
            extractor = self.distillation_backbone()
            stats.update(distill_teacher(model.teacher, extractor, loader, model.grid, model.config.distill_steps,
                                         model.config.distill_lr))
            model.teacher_ready.fill_(True)
        model.teacher.eval()
        mean, std, n = teacher_channel_stats(model.teacher, loader)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(std)
        model.stats_ready.fill_(True)
        stats["teacher_stats_images"] = float(n)
        return stats

    def distillation_backbone(self) -> FeatureExtractor:
        """The pretrained local backbone to distil from; ConfigError naming every way to get a teacher."""
        cfg = self.model.config
        try:
            extractor = FeatureExtractor(
                cfg.backbone, cfg.layers, self.model.in_chans, pretrained=True, channel_mode=cfg.channel_mode,
            )
            load_pretrained_backbone(extractor, weights=cfg.weights, weights_dir=cfg.weights_dir)
        except FabmlError as err:
            folder = cfg.weights_dir or f"${WEIGHTS_DIR_ENV}"
            raise ConfigError(
                f"EfficientAD has no teacher: set model.teacher_weights to a teacher file, or put "
                f"{teacher_file_names(cfg.model_size)[0]} in the weights folder ({folder}, setting model.weights_dir), "
                f"or provide local weights for model.backbone='{cfg.backbone}' to distil one ({err}); "
                "model.pretrained=false trains against a random teacher"
            ) from None
        return extractor.to(next(self.model.parameters()).device)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch["image"]`` ``[B, C, H, W]`` -> ``{"loss", "loss_hard", "loss_penalty", "loss_ae", "loss_stae"}``."""
        model = self.model
        if not bool(model.stats_ready):
            raise TrainingError(
                "EfficientAD needs the teacher's channel statistics before training: call method.prepare(train_loader) "
                "first (fabml.anomaly.pipeline.fit does)"
            )
        c = model.config.out_channels
        images = batch["image"]
        generator = self.rng.next()
        distance = (model.teacher_features(images) - model.student(images)[:, :c]) ** 2
        loss_hard = hard_feature_loss(distance, model.config.hard_quantile)
        loss_penalty = images.new_zeros(())
        if self.penalty is not None:
            generic = self.penalty.sample(images.shape[0], generator, images.device)
            loss_penalty = (model.student(generic)[:, :c] ** 2).mean()
        teacher_aug, student_aug, ae_aug = model(augment(images, generator))
        loss_ae = ((teacher_aug - ae_aug) ** 2).mean()
        loss_stae = ((ae_aug - student_aug[:, c:]) ** 2).mean()
        loss = loss_hard + loss_penalty + loss_ae + loss_stae
        return {
            "loss": loss,
            "loss_hard": loss_hard.detach(),
            "loss_penalty": loss_penalty.detach(),
            "loss_ae": loss_ae.detach(),
            "loss_stae": loss_stae.detach(),
        }

    @torch.no_grad()
    def finalize(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Map-normalisation quantiles from the raw maps of the normal images (label 0) of ``loader``."""
        model = self.model
        was_training = model.training
        model.eval()
        device = model.qa_st.device
        maps_st, maps_ae = [], []
        for batch in loader:
            images = batch["image"].to(device)
            if "label" in batch:
                images = images[batch["label"].to(device) == 0]
            if images.shape[0] == 0:
                continue
            st, ae = model.raw_maps(model.teacher_features(images), model.student(images), model.autoencoder(images))
            maps_st.append(st.flatten())
            maps_ae.append(ae.flatten())
        model.train(was_training)
        if not maps_st:
            raise DataError("EfficientAD finalize needs held-out normal images (label 0) to normalise its maps")
        qa, qb = model.config.map_quantiles
        values = {}
        for name, maps in (("st", torch.cat(maps_st)), ("ae", torch.cat(maps_ae))):
            lo, hi = linear_quantile(maps, qa), linear_quantile(maps, qb)
            hi = torch.maximum(hi, lo + 1e-12)  # a constant map would divide by zero
            getattr(model, f"qa_{name}").copy_(lo)
            getattr(model, f"qb_{name}").copy_(hi)
            values[f"qa_{name}"], values[f"qb_{name}"] = float(lo), float(hi)
        return values
