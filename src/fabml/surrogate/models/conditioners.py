"""``build_conditioner``: the latent conditioner a config and the case inputs call for."""

from __future__ import annotations

from torch import nn

from fabml.errors import ConfigError
from fabml.surrogate.config import CONDITIONERS, ConditionerConfig
from fabml.surrogate.models.cnn import CNNConditioner
from fabml.surrogate.models.mlp import MLPConditioner
from fabml.surrogate.models.vit import ViTConditioner

INPUT_KINDS = ("params", "image")


def resolve_kind(kind: str, input_kind: str) -> str:
    """``conditioner.kind`` with ``auto`` resolved (``mlp`` for parameters, ``cnn`` for images);
    ConfigError for an unknown kind or one that does not fit the inputs."""
    if input_kind not in INPUT_KINDS:
        raise ConfigError(f"input kind {input_kind!r} is unknown; use one of {list(INPUT_KINDS)}")
    if kind not in CONDITIONERS:
        raise ConfigError(f"conditioner.kind={kind!r} is unknown; use one of {list(CONDITIONERS)}")
    if kind == "auto":
        return "mlp" if input_kind == "params" else "cnn"
    if input_kind == "params" and kind != "mlp":
        raise ConfigError(
            f"conditioner.kind={kind!r} needs image inputs but data.inputs is a parameter table; "
            "use conditioner.kind=mlp (or auto), or point data.inputs at an image folder"
        )
    if input_kind == "image" and kind == "mlp":
        raise ConfigError(
            "conditioner.kind='mlp' needs a parameter table but data.inputs is an image folder; "
            "use conditioner.kind=cnn, vit or auto"
        )
    return kind


def build_conditioner(
    cfg: ConditionerConfig,
    input_kind: str,
    input_shape: tuple[int, ...],
    latent_dim_end: int,
    stages: int,
    latent_dim: int,
) -> nn.Module:
    """The conditioner for inputs of ``input_kind`` and per-case ``input_shape`` (``(P,)`` for
    parameters, ``(C, S, S)`` for images), predicting ``z [B, latent_dim_end]`` and
    ``xs [B, stages, latent_dim]``."""
    kind = resolve_kind(cfg.kind, input_kind)
    if kind == "mlp":
        if len(input_shape) != 1:
            raise ConfigError(f"the MLP conditioner needs a parameter-vector shape (P,), got {tuple(input_shape)}")
        return MLPConditioner(int(input_shape[0]), latent_dim_end, stages, latent_dim, cfg)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ConfigError(f"the {kind.upper()} conditioner needs square images (C, S, S), got {tuple(input_shape)}")
    cls = CNNConditioner if kind == "cnn" else ViTConditioner
    return cls(int(input_shape[0]), int(input_shape[1]), latent_dim_end, stages, latent_dim, cfg)
