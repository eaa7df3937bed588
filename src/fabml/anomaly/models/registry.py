"""Name -> model class table and the factory ``create_anomaly_model``.

Every model class declares ``config_class`` (a dataclass with at least ``image_size``,
``in_chans`` and ``pooling``) and is built as ``ModelClass(config)``, with random weights and
no file access (pretrained weights are the weights step, :func:`fabml.weights.load_pretrained`).

Common settings: every model accepts the fields of
:class:`~fabml.anomaly.models.base.BackboneModelConfig` (``image_size``, ``in_chans``,
``pooling``, ``backbone``, ``layers``, ``pretrained``, ``weights``, ``weights_dir``,
``channel_mode``). A common setting a model has no use for (``pretrained`` for DRAEM, which has no
backbone) is accepted and ignored, so one settings mapping can build any model; any other
unknown setting is a one-line ConfigError listing the model's valid settings.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

from fabml.anomaly.models.base import BackboneModelConfig
from fabml.config import from_dict
from fabml.errors import ConfigError
from fabml.registry import Registry

ANOMALY_MODELS: Registry[Any] = Registry("anomaly model")

# module of each model; imported lazily so that `create_anomaly_model` sees every model
MODEL_MODULES = {
    "patchcore": "fabml.anomaly.models.patchcore",
    "padim": "fabml.anomaly.models.padim",
    "stfpm": "fabml.anomaly.models.stfpm",
    "fastflow": "fabml.anomaly.models.fastflow",
    "draem": "fabml.anomaly.models.draem",
    "draem_severity": "fabml.anomaly.models.draem_severity",
    "efficient_ad": "fabml.anomaly.models.efficient_ad",
    "autoencoder": "fabml.anomaly.models.autoencoder",
    "reference": "fabml.anomaly.models.reference",
}

COMMON_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(BackboneModelConfig))


def import_all_models() -> None:
    """Import every model module so that each has registered itself."""
    for module in MODEL_MODULES.values():
        importlib.import_module(module)


def model_settings_for(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``cfg`` that model ``name``'s config has: common settings it does not use are
    dropped; any other unknown key is a ConfigError listing the valid settings."""
    import_all_models()
    own = {f.name for f in fields(ANOMALY_MODELS.get(name).config_class)}
    unknown = [k for k in cfg if k not in own and k not in COMMON_SETTINGS]
    if unknown:
        valid = ", ".join(sorted(own | set(COMMON_SETTINGS)))
        raise ConfigError(f"unknown setting 'model.{unknown[0]}' for model '{name}'; valid settings: {valid}")
    return {k: v for k, v in cfg.items() if k in own}


def model_config(name: str, cfg: dict[str, Any] | None = None) -> Any:
    """The config dataclass of model ``name`` built from ``cfg`` (common settings it does not use
    are ignored; other unknown keys -> ConfigError)."""
    settings = model_settings_for(name, cfg or {})
    cls = ANOMALY_MODELS.get(name)
    return from_dict(cls.config_class, settings, where="model")


def create_anomaly_model(name: str, **settings: Any) -> Any:
    """Build model ``name`` (e.g. ``"patchcore"``) with random weights from keyword settings of its
    config dataclass, or any common setting (see the module doc).

    >>> model = create_anomaly_model("padim", image_size=(64, 64), in_chans=1, pretrained=False)  # doctest: +SKIP
    >>> model = create_anomaly_model("draem", image_size=(64, 64), pretrained=False)  # doctest: +SKIP
    """
    config = model_config(name, settings)
    return ANOMALY_MODELS.get(name)(config)
