"""Name -> model class table and the factory ``create_anomaly_model``.

Every model class declares ``config_class`` (a dataclass with at least ``image_size``,
``in_chans`` and ``pooling``) and is built as ``ModelClass(config)``.
"""

from __future__ import annotations

import importlib
from typing import Any

from fabml.config import from_dict
from fabml.registry import Registry

ANOMALY_MODELS: Registry[Any] = Registry("anomaly model")

# module of each model; imported lazily so that `create_anomaly_model` sees every model
MODEL_MODULES = {
    "patchcore": "fabml.anomaly.models.patchcore",
    "padim": "fabml.anomaly.models.padim",
    "stfpm": "fabml.anomaly.models.stfpm",
    "fastflow": "fabml.anomaly.models.fastflow",
    "draem": "fabml.anomaly.models.draem",
    "efficient_ad": "fabml.anomaly.models.efficient_ad",
    "autoencoder": "fabml.anomaly.models.autoencoder",
}


def import_all_models() -> None:
    """Import every model module so that each has registered itself."""
    for module in MODEL_MODULES.values():
        importlib.import_module(module)


def model_config(name: str, cfg: dict[str, Any] | None = None) -> Any:
    """The config dataclass of model ``name`` built from ``cfg`` (unknown keys -> ConfigError)."""
    import_all_models()
    cls = ANOMALY_MODELS.get(name)
    return from_dict(cls.config_class, cfg or {}, where="model")


def create_anomaly_model(name: str, **cfg: Any) -> Any:
    """Build model ``name`` (e.g. ``"patchcore"``) from keyword settings of its config dataclass.

    >>> model = create_anomaly_model("padim", image_size=(64, 64), in_chans=1, pretrained=False)  # doctest: +SKIP
    """
    import_all_models()
    cls = ANOMALY_MODELS.get(name)
    return cls(from_dict(cls.config_class, cfg, where="model"))
