"""Anomaly models (nn.Modules only) and the factory ``create_anomaly_model``."""

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, PoolingConfig, pool_anomaly_map
from fabml.anomaly.models.registry import ANOMALY_MODELS, create_anomaly_model, model_config

__all__ = [
    "ANOMALY_MODELS",
    "AnomalyModel",
    "AnomalyOutput",
    "PoolingConfig",
    "create_anomaly_model",
    "model_config",
    "pool_anomaly_map",
]
