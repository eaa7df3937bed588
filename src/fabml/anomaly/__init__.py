"""Visual anomaly detection: eight models on one contract (one with a fault-severity head), thresholds, grades, metrics, ONNX export.

The public Python API (imported on first use, so ``import fabml.anomaly`` stays light)::

    from fabml.anomaly import create_anomaly_model, create_anomaly_method, AnomalyOutput
    from fabml.anomaly import AnomalyConfig, fit, evaluate, predict, load_fitted

``create_anomaly_model(name, **settings)`` builds any model with random weights (common
settings in :data:`COMMON_SETTINGS`); ``create_anomaly_method(name, model)`` loads its
pretrained weights (the weights step) and wraps it for fitting; ``fit / evaluate / predict``
are what the ``fabml anomaly`` commands call (``export`` is
``fabml.anomaly.pipeline.export``: ``fabml.anomaly.export`` is the ONNX module);
``load_fitted(run_dir)`` gives a fitted model back without searching for any pretrained file.
"""

from __future__ import annotations

from fabml.lazy import lazy_exports

_EXPORTS = {
    "ANOMALY_MODELS": "fabml.anomaly.models",
    "AnomalyModel": "fabml.anomaly.models",
    "AnomalyOutput": "fabml.anomaly.models",
    "SeverityOutput": "fabml.anomaly.models.base",
    "CutPasteFaults": "fabml.anomaly.cutpaste_faults",
    "CutPasteFaultConfig": "fabml.anomaly.cutpaste_faults",
    "evaluate_severity": "fabml.anomaly.ablation",
    "evaluate_real_severity": "fabml.anomaly.ablation",
    "measure_severity": "fabml.anomaly.ablation",
    "BackboneModelConfig": "fabml.anomaly.models",
    "COMMON_SETTINGS": "fabml.anomaly.models",
    "PoolingConfig": "fabml.anomaly.models",
    "create_anomaly_model": "fabml.anomaly.models",
    "model_config": "fabml.anomaly.models",
    "pool_anomaly_map": "fabml.anomaly.models",
    "AnomalyMethod": "fabml.anomaly.method",
    "create_anomaly_method": "fabml.anomaly.method",
    "AnomalyConfig": "fabml.anomaly.config",
    "CalibrationConfig": "fabml.anomaly.config",
    "AnomalyDataConfig": "fabml.data.anomaly_data",
    "AnomalyImageDataset": "fabml.data.anomaly_data",
    "ImageRecord": "fabml.data.anomaly_data",
    "GradeConfig": "fabml.anomaly.threshold",
    "ScoreNormalizer": "fabml.anomaly.threshold",
    "FitReport": "fabml.anomaly.pipeline",
    "EvalReport": "fabml.anomaly.pipeline",
    "Predictions": "fabml.anomaly.pipeline",
    "fit": "fabml.anomaly.pipeline",
    "evaluate": "fabml.anomaly.pipeline",
    "predict": "fabml.anomaly.pipeline",
    "FittedModel": "fabml.anomaly.runs",
    "load_fitted": "fabml.anomaly.runs",
    "load_pretrained": "fabml.weights",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
