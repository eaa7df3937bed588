"""Training logic of the anomaly models: the base class every per-model method follows.

Gradient models (STFPM, FastFlow, DRAEM, EfficientAD, autoencoder) implement
``training_step(batch) -> {"loss": ...}`` and are driven by the shared
:class:`~fabml.engine.trainer.Trainer`. Memory-bank models (PatchCore, PaDiM) set
``memory_bank = True`` and implement ``fit(loader)`` instead. Every method may implement
``prepare(loader)`` (before gradient training, on the training images) and
``finalize(loader)``, run once after training on the held-out normal images (EfficientAD
computes its map-normalisation quantiles there).

A batch is a dict: ``image`` ``[B, C, H, W]`` float in [0, 1], ``mask`` ``[B, 1, H, W]``
float {0, 1}, ``label`` ``[B]`` int64 (0 normal, 1 anomalous), ``index`` ``[B]`` int64.
Training batches hold normal images only.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, ClassVar, Iterable

import torch

from fabml.anomaly.models.base import AnomalyModel
from fabml.engine.method import Method
from fabml.errors import DataError, TrainingError
from fabml.registry import Registry
from fabml.weights import load_pretrained

ANOMALY_METHODS: Registry[Any] = Registry("anomaly method")

METHOD_MODULES = {
    "patchcore": "fabml.anomaly.methods.patchcore",
    "padim": "fabml.anomaly.methods.padim",
    "stfpm": "fabml.anomaly.methods.stfpm",
    "fastflow": "fabml.anomaly.methods.fastflow",
    "draem": "fabml.anomaly.methods.draem",
    "draem_severity": "fabml.anomaly.methods.draem_severity",
    "efficient_ad": "fabml.anomaly.methods.efficient_ad",
    "autoencoder": "fabml.anomaly.methods.autoencoder",
    "reference": "fabml.anomaly.methods.reference",
}


@torch.no_grad()
def held_out_outputs(
    model: AnomalyModel, loader: Iterable[dict[str, torch.Tensor]], fn: Callable[[torch.Tensor], torch.Tensor],
    setting: str,
) -> torch.Tensor:
    """``fn(images)`` of every batch of ``loader`` (the held-out normal images), concatenated along the batch,
    with the model in eval mode; a one-line DataError naming ``setting`` when the loader is empty."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [fn(batch["image"].to(device)) for batch in loader]
    if not outputs:
        raise DataError(
            f"{setting} needs held-out normal images and the validation split is empty; raise data.val_fraction "
            f"or set {setting}: false"
        )
    return torch.cat(outputs)


class AnomalyMethod(Method):
    """Holds ``self.model`` (an :class:`AnomalyModel`) and how it learns from normal images.

    ``default_train`` lists the paper's optimiser settings as overrides of
    :class:`~fabml.engine.trainer.TrainConfig` fields (lr, optimizer, weight_decay, epochs,
    batch_size, ...); the pipeline applies them under the user's own settings.
    """

    memory_bank: ClassVar[bool] = False
    default_train: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        raise TrainingError(
            f"{type(self.model).__name__} is a memory-bank model: it has no gradient step; call fit(loader)"
        )

    def fit(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Memory-bank models: build the model's statistics from every batch of ``loader``."""
        raise TrainingError(f"{type(self.model).__name__} trains by gradient steps under the Trainer, not fit(loader)")

    def prepare(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Before gradient training (not on resume): statistics or a teacher the loss needs (default: nothing).

        EfficientAD computes its teacher's channel statistics here (and distils the teacher when no
        teacher file is given). Everything it sets must live in ``state_dict`` so a resumed run has it.
        """
        return {}

    @torch.no_grad()
    def finalize(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """After training: optional statistics from normal images (default: nothing)."""
        return {}


def create_anomaly_method(name: str, model: AnomalyModel, load_weights: bool = True) -> AnomalyMethod:
    """The method class registered as ``name`` wrapped around a newly built ``model``, to fit it.

    First the weights step (:func:`fabml.weights.load_pretrained`) puts the pretrained weights
    the model's config asks for (backbones, EfficientAD's teacher file) into ``model``; a missing
    file is a one-line ConfigError naming it and the setting. ``load_weights=False`` skips that
    step (the weights come from elsewhere, e.g. a checkpoint). A fitted model is reloaded with
    :func:`fabml.anomaly.runs.load_fitted`, which never comes here.
    """
    for module in METHOD_MODULES.values():
        importlib.import_module(module)
    cls = ANOMALY_METHODS.get(name)
    if load_weights:
        load_pretrained(model)
    return cls(model)
