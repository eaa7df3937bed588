"""The retrieval embedding model: timm backbone -> global average pool -> neck -> L2-normalised embedding.

``RetrievalModel.embed(images [B, 3, S, S] in [0, 1]) -> [B, D]`` with ``|e| = 1``::

    f = avgpool(backbone((x - mean) / std))          [B, C]   (C = backbone.num_features)
    z = BatchNorm1d(Linear(Dropout(f)))              [B, D]   (D = model.embedding_dim)
    e = z / |z|

``mean``/``std`` are the backbone's own (ImageNet, or 0.5/0.5, i.e. inputs in [-1, 1], for the
EfficientNet-Lite weights). The neck is Linear + BatchNorm1d (no activation), the usual
embedding head of metric learning: the BatchNorm centres the features before the
normalisation, so the embedding uses the whole sphere. ``head`` is the :class:`ArcFaceHead`,
used for training only; retrieval uses ``embed``. The model reads no file: it is built with
random weights and gets the backbone's pretrained weights from :func:`fabml.weights.load_pretrained`
(which finds the backbone as a :class:`~fabml.backbones.FeatureExtractor` with ``pretrained``
set, and the ``weights`` / ``weights_dir`` settings in ``model.config``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fabml.backbones import FeatureExtractor, create_backbone
from fabml.errors import ConfigError, DataError
from fabml.retrieval.arcface import ArcFaceHead
from fabml.retrieval.config import RetrievalModelConfig


class PooledBackbone(FeatureExtractor):
    """A whole timm network without its classifier (``num_classes=0``): images in [0, 1] ->
    globally average-pooled features ``[B, num_features]`` (for EfficientNets this includes the
    ``conv_head`` 1×1 conv, which ``features_only`` extractors drop).

    A :class:`FeatureExtractor` for the weights step (``name``, ``pretrained``, ``model``) and for
    freezing (a frozen backbone stays in eval mode, so its BatchNorm statistics do not move during
    the warm-up); unlike the multi-scale extractor its ``forward`` returns one tensor. Built with
    random weights and trainable (not frozen) by default.
    """

    def __init__(self, name: str, pretrained: bool = True) -> None:
        nn.Module.__init__(self)  # not FeatureExtractor.__init__: the whole network, not features_only
        model = create_backbone(name, num_classes=0, global_pool="avg")
        self.name = name
        self.pretrained = bool(pretrained)
        self.in_chans = 3
        self.channel_mode = "repeat"
        self.folded = False
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))
        self.register_buffer("std", std.reshape(1, -1, 1, 1))
        self.model = model
        self.num_features = int(model.num_features)
        self.layers = [len(model.feature_info) - 1]
        self.channels = [self.num_features]
        self.reductions = [int(model.feature_info[-1]["reduction"])]
        self.unfreeze()

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x: [B, 3, H, W] in [0, 1] -> pooled features [B, num_features]."""
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x.ndim != 4 or x.shape[1] != 3:
                raise DataError(f"backbone '{self.name}' expects images [B, 3, H, W], got {list(x.shape)}")
        return self.model((x - self.mean) / self.std)


class RetrievalModel(nn.Module):
    """Backbone + neck (embedding) + ArcFace head; see the module docstring for the equations.

    ``config`` is the :class:`RetrievalModelConfig` (read by the weights step).
    """

    def __init__(self, cfg: RetrievalModelConfig, num_classes: int) -> None:
        super().__init__()
        if cfg.embedding_dim < 1:
            raise ConfigError(f"model.embedding_dim={cfg.embedding_dim} must be >= 1")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"model.dropout={cfg.dropout} must be in [0, 1)")
        if cfg.backbone == "auto":
            raise ConfigError("model.backbone=auto must be resolved before the model is built "
                              "(fabml.retrieval.config.resolve_backbone); or name a timm backbone")
        self.config = cfg
        self.num_classes = int(num_classes)
        self.backbone = PooledBackbone(cfg.backbone, pretrained=cfg.pretrained)
        self.neck = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(self.backbone.num_features, cfg.embedding_dim),
            nn.BatchNorm1d(cfg.embedding_dim),
        )
        self.head = ArcFaceHead(cfg.embedding_dim, num_classes, s=cfg.arcface_s, m=cfg.arcface_m_warmup)

    @property
    def embedding_dim(self) -> int:
        return int(self.config.embedding_dim)

    def features(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] in [0, 1] -> neck output z [B, D] before normalisation."""
        return self.neck(self.backbone(images))

    def embed(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] in [0, 1] -> L2-normalised embeddings [B, D] (fp32)."""
        return F.normalize(self.features(images).float(), dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`embed` (what the index and the ONNX export use)."""
        return self.embed(images)

    def fp32_state_dict(self) -> dict[str, Tensor]:
        """The state dict on the CPU with every floating tensor in fp32, whatever the model's
        device and dtype: what a run saves, so it loads on any GPU or on a CPU."""
        return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
                for k, v in self.state_dict().items()}
