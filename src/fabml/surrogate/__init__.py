"""Simulation surrogate: a hierarchical VAE over simulation fields [N, T, M, V] plus a latent conditioner
(MLP for parameter vectors, CNN / ViT for images) that predicts a whole field from a case's inputs
(``fabml surrogate``).

The public Python API (imported on first use, so ``import fabml.surrogate`` stays light)::

    from fabml.surrogate import SurrogateConfig, HierarchicalVAE, build_conditioner, SurrogateMethod
    from fabml.surrogate import train, load_surrogate, predict, predict_arrays, evaluate, write_report
    from fabml.surrogate import make_ensemble, load_ensemble, SurrogateEnsemble

``train(cfg, run_dir, mode)`` runs one training mode (vae | conditioner | e2e | all); ``load_surrogate(run_dir)``
gives the trained models, scalers and sizes back; ``predict_arrays(loaded, inputs, samples)`` turns raw inputs
into fields (mean and Monte-Carlo-dropout spread); ``make_ensemble(runs, out)`` combines runs trained from
different seeds into one surrogate (their mean; their disagreement as the spread); ``import_legacy`` converts the seed's text configs and
``import_darcy`` neuraloperator's Darcy ``.pt`` files.
"""

from __future__ import annotations

from fabml.lazy import lazy_exports

_EXPORTS = {
    "SurrogateConfig": "fabml.surrogate.config",
    "SurrogateDataConfig": "fabml.surrogate.config",
    "VAEConfig": "fabml.surrogate.config",
    "ConditionerConfig": "fabml.surrogate.config",
    "E2EConfig": "fabml.surrogate.config",
    "SurrogateTrainConfig": "fabml.surrogate.config",
    "SurrogateEvalConfig": "fabml.surrogate.config",
    "load_surrogate_config": "fabml.surrogate.config",
    "HierarchicalVAE": "fabml.surrogate.models",
    "MLPConditioner": "fabml.surrogate.models",
    "CNNConditioner": "fabml.surrogate.models",
    "ViTConditioner": "fabml.surrogate.models",
    "build_conditioner": "fabml.surrogate.models",
    "SurrogateMethod": "fabml.surrogate.method",
    "build_method": "fabml.surrogate.runs",
    "SurrogateShapes": "fabml.surrogate.runs",
    "LoadedSurrogate": "fabml.surrogate.runs",
    "make_config": "fabml.surrogate.pipeline",
    "train": "fabml.surrogate.pipeline",
    "TrainReport": "fabml.surrogate.pipeline",
    "load_surrogate": "fabml.surrogate.pipeline",
    "predict": "fabml.surrogate.pipeline",
    "predict_arrays": "fabml.surrogate.pipeline",
    "PredictReport": "fabml.surrogate.pipeline",
    "make_ensemble": "fabml.surrogate.ensemble",
    "load_ensemble": "fabml.surrogate.ensemble",
    "SurrogateEnsemble": "fabml.surrogate.ensemble",
    "evaluate": "fabml.surrogate.evaluation",
    "EvaluationReport": "fabml.surrogate.evaluation",
    "write_report": "fabml.surrogate.report",
    "import_legacy": "fabml.surrogate.legacy",
    "import_darcy": "fabml.surrogate.darcy",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
