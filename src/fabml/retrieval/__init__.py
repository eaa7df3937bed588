"""Retrieval-based classification: a backbone + ArcFace embedding model, ID-grouped splits, P×K batches,
a vector index of reference images, Recall@k, and open-set prediction (``fabml retrieval``).

The public Python API (imported on first use, so ``import fabml.retrieval`` stays light)::

    from fabml.retrieval import RetrievalConfig, RetrievalModel, ArcFaceHead, build_method
    from fabml.retrieval import split, train, build_index, evaluate, predict, export, load_trained

``split / train / build_index / evaluate / predict / export`` are what the ``fabml retrieval`` commands
call (``fabml.retrieval.export`` is the ONNX module; its function is ``fabml.retrieval.pipeline.export``);
``load_trained(run_dir)`` gives ``(config, model, classes)`` back from a run folder;
``calibrate_unknown`` is the open-set threshold.
"""

from __future__ import annotations

from fabml.lazy import lazy_exports

_EXPORTS = {
    "RetrievalConfig": "fabml.retrieval.config",
    "RetrievalDataConfig": "fabml.retrieval.config",
    "RetrievalModelConfig": "fabml.retrieval.config",
    "RetrievalEvalConfig": "fabml.retrieval.config",
    "PKSamplerConfig": "fabml.retrieval.config",
    "retrieval_config": "fabml.retrieval.config",
    "RetrievalModel": "fabml.retrieval.model",
    "ArcFaceHead": "fabml.retrieval.arcface",
    "RetrievalMethod": "fabml.retrieval.method",
    "build_method": "fabml.retrieval.method",
    "UnknownThreshold": "fabml.retrieval.threshold",
    "calibrate_unknown": "fabml.retrieval.threshold",
    "make_config": "fabml.retrieval.pipeline",
    "split": "fabml.retrieval.pipeline",
    "train": "fabml.retrieval.pipeline",
    "build_index": "fabml.retrieval.pipeline",
    "evaluate": "fabml.retrieval.pipeline",
    "predict": "fabml.retrieval.pipeline",
    "EvalReport": "fabml.retrieval.pipeline",
    "Predictions": "fabml.retrieval.pipeline",
    "load_trained": "fabml.retrieval.runs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
