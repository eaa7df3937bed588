"""Wafer-map patterns: self-supervised (BYOL) embeddings, pattern clusters, search, novelty and trend.

The public Python API (imported on first use, so ``import fabml.wafer`` stays light)::

    from fabml.wafer import WaferConfig, wafer_config, train, embed, cluster, assign, search, evaluate
    from fabml.wafer import load_trained, WaferEncoder, BYOLMethod, WaferAugment

``train / embed / cluster / assign / search / evaluate / ablation`` are what the ``fabml wafer``
commands call; ``load_trained(run_dir)`` gives a trained run's config and method back.
"""

from __future__ import annotations

from fabml.lazy import lazy_exports

_EXPORTS = {
    "WaferConfig": "fabml.wafer.config",
    "EvalConfig": "fabml.wafer.config",
    "wafer_config": "fabml.wafer.config",
    "EncoderConfig": "fabml.wafer.model",
    "WaferEncoder": "fabml.wafer.model",
    "BYOLConfig": "fabml.wafer.method",
    "BYOLMethod": "fabml.wafer.method",
    "AugmentConfig": "fabml.wafer.augment",
    "WaferAugment": "fabml.wafer.augment",
    "ClusterConfig": "fabml.wafer.clusters",
    "ClusterModel": "fabml.wafer.clusters",
    "PCABaseline": "fabml.wafer.embedding",
    "evaluate_embeddings": "fabml.wafer.evaluation",
    "load_dataset": "fabml.wafer.pipeline",
    "train": "fabml.wafer.pipeline",
    "embed": "fabml.wafer.pipeline",
    "cluster": "fabml.wafer.pipeline",
    "assign": "fabml.wafer.pipeline",
    "search": "fabml.wafer.pipeline",
    "evaluate": "fabml.wafer.pipeline",
    "ablation": "fabml.wafer.ablation_runner",
    "load_trained": "fabml.wafer.runs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
