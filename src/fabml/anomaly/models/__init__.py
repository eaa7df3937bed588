"""Anomaly models (nn.Modules only, built with random weights) and the factory ``create_anomaly_model``."""

from fabml.anomaly.models.base import (
    AnomalyModel,
    AnomalyOutput,
    BackboneModelConfig,
    PoolingConfig,
    pool_anomaly_map,
)
from fabml.anomaly.models.registry import ANOMALY_MODELS, COMMON_SETTINGS, create_anomaly_model, model_config

__all__ = [
    "ANOMALY_MODELS",
    "AnomalyModel",
    "AnomalyOutput",
    "BackboneModelConfig",
    "COMMON_SETTINGS",
    "PoolingConfig",
    "create_anomaly_model",
    "model_config",
    "pool_anomaly_map",
]
