"""How the retrieval job trains: ArcFace cross-entropy with a frozen-backbone warm-up and a margin schedule.

Per batch ``{"image": [B, 3, S, S] in [0, 1], "label": [B] int64}``::

    e = model.embed(image)                          [B, D], |e| = 1
    loss = CE(ArcFace(e, label; s, m(epoch)), label)
    accuracy = mean(argmax_j cos θ_j == label)      (nearest class weight, no margin)

Schedule, a function of the 0-based epoch only (so a resumed run matches an uninterrupted one),
with W = ``model.warmup_epochs``, R = ``model.margin_ramp_epochs``::

    epoch <  W:  backbone frozen (neck and head train), m = m_warmup
    epoch >= W:  everything trains, m = m_finetune                            (R = 0)
                 m = m_warmup + (m_finetune - m_warmup) · min(1, (epoch - W + 1) / R)   (R > 0)

The trainer freezes through :meth:`frozen_prefixes` (a frozen backbone also stays in eval mode,
so its BatchNorm statistics are those of the pretrained network) and sets the margin through
:meth:`on_epoch_start`. Biases and norm weights get no weight decay; the backbone's learning
rate is ``model.backbone_lr_scale`` × the schedule's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fabml.engine.method import Method
from fabml.engine.param_groups import decay_groups
from fabml.errors import ConfigError, DataError, TrainingError
from fabml.retrieval.config import RetrievalConfig, RetrievalModelConfig
from fabml.retrieval.model import RetrievalModel

BACKBONE_PREFIX = "model.backbone"


def margin_at(epoch: int, cfg: RetrievalModelConfig) -> float:
    """ArcFace margin m (radians) in 0-based ``epoch`` (equations in the module docstring)."""
    warmup = int(cfg.warmup_epochs)
    if epoch < warmup:
        return float(cfg.arcface_m_warmup)
    ramp = int(cfg.margin_ramp_epochs)
    if ramp <= 0:
        return float(cfg.arcface_m_finetune)
    t = min(1.0, (epoch - warmup + 1) / ramp)
    return float(cfg.arcface_m_warmup + (cfg.arcface_m_finetune - cfg.arcface_m_warmup) * t)


def check_model_config(cfg: RetrievalModelConfig) -> None:
    """Reject schedule settings that cannot be honoured, naming the setting."""
    for name in ("warmup_epochs", "margin_ramp_epochs"):
        if int(getattr(cfg, name)) < 0:
            raise ConfigError(f"model.{name}={getattr(cfg, name)} must be >= 0")
    if cfg.backbone_lr_scale < 0:
        raise ConfigError(f"model.backbone_lr_scale={cfg.backbone_lr_scale} must be >= 0")


class RetrievalMethod(Method):
    """ArcFace training of a :class:`RetrievalModel` (see the module docstring)."""

    def __init__(self, model: RetrievalModel, cfg: RetrievalConfig) -> None:
        super().__init__()
        check_model_config(cfg.model)
        self.model = model
        self.cfg = cfg
        self.model.head.margin = margin_at(0, cfg.model)

    # ------------------------------------------------------------------ schedule
    def frozen_prefixes(self, epoch: int) -> set[str]:
        """``{"model.backbone"}`` during the warm-up epochs, else nothing."""
        return {BACKBONE_PREFIX} if epoch < int(self.cfg.model.warmup_epochs) else set()

    def on_epoch_start(self, epoch: int) -> None:
        """Set the ArcFace margin of ``epoch`` (:func:`margin_at`)."""
        self.model.head.margin = margin_at(epoch, self.cfg.model)

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone (``lr_scale = model.backbone_lr_scale``) and neck + head, each split into a
        decayed group and a no-decay group of biases and norm weights."""
        backbone = [(n, p) for n, p in self.named_parameters() if n.startswith(BACKBONE_PREFIX + ".")]
        rest = [(n, p) for n, p in self.named_parameters() if not n.startswith(BACKBONE_PREFIX + ".")]
        return (decay_groups(backbone, lr_scale=self.cfg.model.backbone_lr_scale, name="backbone")
                + decay_groups(rest, name="head"))

    # ------------------------------------------------------------------ loss
    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """``batch["image"]`` [B, 3, S, S] in [0, 1], ``batch["label"]`` [B] class indices ->
        ``{"loss": ArcFace cross-entropy, "accuracy": nearest-class-weight accuracy, "margin": m}``.

        During the frozen warm-up a batch may carry ``"features"`` [B, C] instead of images: the
        backbone's pooled output (``model.backbone(images)`` in eval mode), computed once and
        cached, so the warm-up epochs train the neck and head without running the backbone.
        """
        labels = batch["label"].long()
        if "features" in batch:  # cached pooled backbone features [B, C]: only valid while the backbone is frozen
            if any(p.requires_grad for p in self.model.backbone.parameters()):
                raise TrainingError("a batch of cached backbone features while the backbone trains: "
                                    "cached features are for the frozen warm-up epochs only (model.warmup_epochs)")
            inputs = batch["features"]
            embeddings = self.model.neck(inputs)
        else:
            inputs = batch["image"]
            embeddings = self.model.features(inputs)
        if labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
            raise DataError(f"batch labels {list(labels.shape)} do not match inputs {list(inputs.shape)}")
        head = self.model.head
        cosine = head.cosine(embeddings)
        logits = head.logits(cosine, labels)
        loss = F.cross_entropy(logits, labels)
        accuracy = (cosine.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy, "margin": torch.tensor(head.margin)}


def build_method(cfg: RetrievalConfig, num_classes: int) -> RetrievalMethod:
    """A :class:`RetrievalMethod` with random weights; a new run then calls
    :func:`fabml.weights.load_pretrained` on ``method.model`` (when ``model.pretrained``)."""
    return RetrievalMethod(RetrievalModel(cfg.model, num_classes), cfg)
