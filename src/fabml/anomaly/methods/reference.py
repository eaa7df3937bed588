"""Reference-mode fit: the whitening of normal differences from good (image, reference) pairs.

One pass, no gradients: for each normal pair the differences to the best neighbourhood match in
both directions (:func:`fabml.anomaly.models.reference.nearest_differences`) are summed into the
second moment ``M = (1/n) sum delta delta^T`` (float64 running sum of float32 batch products),
and :meth:`ReferenceCompare.set_whitening` turns ``M`` into ``W``. Memory: ``d x d`` doubles plus
one batch of features.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Iterable

import torch

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.methods.patchcore import batch_images
from fabml.anomaly.models.reference import ReferenceCompare, nearest_differences
from fabml.errors import DataError


@ANOMALY_METHODS.register("reference")
class ReferenceMethod(AnomalyMethod):
    """Fits a :class:`ReferenceCompare` model on normal pairs (module docstring)."""

    memory_bank: ClassVar[bool] = True
    default_train: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 16, "drop_last": False}
    model: ReferenceCompare

    @torch.no_grad()
    def fit(self, loader: Iterable[Any]) -> dict[str, float]:
        """Learn ``W`` from every batch of ``loader`` (normal pairs ``[B, 2C, H, W]``).

        Returns ``n_pairs``, ``n_differences`` (vectors summed), ``feature_dim`` and ``fit_seconds``.
        """
        start = time.perf_counter()
        model = self.model
        model.eval()
        device = model.whiten.device
        radius = model.config.search_radius
        moment: torch.Tensor | None = None
        pairs = count = 0
        for batch in loader:
            images = batch_images(batch).to(device)
            model.check_input(images)
            test_features, reference_features = model.embed(images)
            for a, b in ((test_features, reference_features), (reference_features, test_features)):
                delta = nearest_differences(a, b, radius)
                product = (delta.T @ delta).double()
                moment = product if moment is None else moment + product
                count += delta.shape[0]
            pairs += images.shape[0]
        if moment is None or pairs < 1:
            raise DataError("the reference model needs at least one normal (image, reference) pair to fit; "
                            "give good images with their references")
        model.set_whitening(moment / count, count)
        return {"n_pairs": float(pairs), "n_differences": float(count), "feature_dim": float(moment.shape[0]),
                "fit_seconds": time.perf_counter() - start}
