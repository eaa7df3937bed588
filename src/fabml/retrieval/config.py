"""The retrieval job's configuration (saved as ``config.yaml`` beside every run).

Defaults are the seed's (EfficientNetV2 + ArcFace + Faiss): embedding 512, ArcFace s=64,
margin 0 during a 5-epoch frozen-backbone warm-up then 0.5, lr 1e-4, weight decay 1e-4,
50 epochs, early stopping on validation Recall@1 with patience 10, cosine restarts
(t0 10 epochs, t_mult 2), image size 480, P×K batches with K=4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fabml.config import load_config
from fabml.engine.train_config import TrainConfig
from fabml.index import IndexConfig

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
UNKNOWN_METHODS = ("far", "quantile")


@dataclass
class RetrievalDataConfig:
    """Where the labelled images are and how they are grouped and split.

    root: ``DATA/<class>/<ID>_<seq>.<ext>`` (folder = class); or list_file: ``path, label[, id]`` lines.
    id_pattern: regular expression whose group 1 is the object ID (default: everything before the
        last ``_``); group_by_id=False makes each image its own group.
    min_image_size: an ID group with any image whose shorter side is below this (pixels) is excluded.
    class_names: classes to use (empty = every folder); a name with no folder is an error.
    image_size: side S of the square model input [3, S, S] (pixels).
    """

    root: str = ""
    list_file: str = ""
    id_pattern: str = r"^(.*)_[^_]+$"
    group_by_id: bool = True
    min_image_size: int = 224
    class_names: list[str] = field(default_factory=list)
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    skip_bad: bool = False
    image_size: int = 480


@dataclass
class RetrievalAugmentConfig:
    """Training augmentations (the seed's): random resized crop with scale in [crop_scale_min, 1],
    rotation in ±``rotation`` degrees, colour jitter (brightness, contrast, saturation, hue)."""

    enabled: bool = True
    crop_scale_min: float = 0.8
    rotation: float = 15.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.05


@dataclass
class PKSamplerConfig:
    """P×K batches: P classes (``None`` = all classes) times K images per class.

    The batch of one micro-step is P*K images; the effective batch is P*K*grad_accum_steps.
    """

    num_classes_per_batch: int | None = None
    samples_per_class: int = 4


@dataclass
class RetrievalModelConfig:
    """Backbone, embedding head and ArcFace head (:class:`fabml.retrieval.model.RetrievalModel`).

    backbone: a timm name from :mod:`fabml.backbones`, or ``auto`` (:func:`resolve_backbone`): the
        seed's ``tf_efficientnetv2_l`` when its weights are found (``weights`` / ``weights_dir`` /
        ``$FABML_WEIGHTS_DIR``), else the bundled EfficientNet-Lite0. The default is
        ``tf_efficientnet_lite0``, whose ImageNet weights ship with fabml (works offline with no
        weight files); ``configs/retrieval_default.yaml`` (the seed's settings) says ``auto``.
    pretrained: load ImageNet weights for the backbone at the start of a new run (the weights step).
    embedding_dim: D of the L2-normalised embedding.
    arcface_s: ArcFace scale s; arcface_m_warmup / arcface_m_finetune: additive angular margin m
        (radians) during / after the warm-up; margin_ramp_epochs: 0 = step change when the warm-up
        ends, > 0 = linear ramp from m_warmup to m_finetune over that many epochs after it.
    warmup_epochs: epochs with the backbone frozen (only the neck and the ArcFace head train).
    backbone_lr_scale: the backbone's learning rate as a multiple of ``train.lr``.
    dropout: dropout probability on the pooled features before the neck.
    """

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: str = ""
    weights_dir: str = ""
    embedding_dim: int = 512
    arcface_s: float = 64.0
    arcface_m_warmup: float = 0.0
    arcface_m_finetune: float = 0.5
    margin_ramp_epochs: int = 0
    warmup_epochs: int = 5
    backbone_lr_scale: float = 1.0
    dropout: float = 0.0


@dataclass
class RetrievalTrainConfig(TrainConfig):
    """:class:`~fabml.engine.train_config.TrainConfig` with the seed's defaults (a subclass so that a
    YAML ``train:`` section or ``--set train.x=...`` keeps every other seed default).

    ``batch_size`` is set by the pipeline to P*K from the sampler. ``precision``, ``num_workers`` and
    ``grad_accum_steps`` left at their defaults are filled by
    :func:`fabml.retrieval.hardware.auto_train_settings` from the GPU.
    """

    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 1e-4
    early_stop_patience: int = 10
    monitor: str = "val_recall_at_1"
    monitor_mode: str = "max"
    t0_epochs: float = 10.0
    t_mult: int = 2
    auto_resume: bool = True


@dataclass
class RetrievalEvalConfig:
    """Evaluation and prediction settings.

    recall_k_values: k of Recall@k. top_k: neighbours returned by predict and used by the
    similarity-weighted vote. unknown_method: how the ``unknown`` threshold on the best cosine
    similarity is calibrated on the validation split: ``far`` = the threshold at which
    ``unknown_far`` of queries from held-out classes (``heldout_class_fraction`` of the classes,
    left out of the gallery) are accepted; ``quantile`` = the ``unknown_quantile`` quantile of the
    best similarities of correctly matched queries.
    """

    recall_k_values: list[int] = field(default_factory=lambda: [1, 5])
    top_k: int = 20
    unknown_method: str = "far"
    unknown_far: float = 0.05
    unknown_quantile: float = 0.05
    heldout_class_fraction: float = 0.2


@dataclass
class RetrievalConfig:
    """Everything a retrieval run needs."""

    data: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    augment: RetrievalAugmentConfig = field(default_factory=RetrievalAugmentConfig)
    sampler: PKSamplerConfig = field(default_factory=PKSamplerConfig)
    model: RetrievalModelConfig = field(default_factory=RetrievalModelConfig)
    train: RetrievalTrainConfig = field(default_factory=RetrievalTrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: RetrievalEvalConfig = field(default_factory=RetrievalEvalConfig)


SEED_BACKBONE = "tf_efficientnetv2_l"
OFFLINE_BACKBONE = "tf_efficientnet_lite0"


def resolve_backbone(cfg: RetrievalModelConfig) -> str:
    """The timm name ``model.backbone`` stands for: itself, or for ``auto`` the seed's
    ``tf_efficientnetv2_l`` when its pretrained weights are on this machine, else the bundled
    ``tf_efficientnet_lite0``. Looks for files only; reads none. A new run writes the resolved
    name into its config, so a resume never changes backbone."""
    if cfg.backbone != "auto":
        return cfg.backbone
    from fabml.errors import ConfigError
    from fabml.weights import resolve_weights

    try:
        resolve_weights(SEED_BACKBONE, cfg.weights or None, cfg.weights_dir or None)
    except ConfigError:
        return OFFLINE_BACKBONE
    return SEED_BACKBONE


def retrieval_config(config: str | Path | None = None, overrides: Sequence[str] | None = None) -> RetrievalConfig:
    """Defaults <- YAML file ``config`` <- ``overrides`` (``a.b=c``)."""
    return load_config(RetrievalConfig, config, overrides or [])
