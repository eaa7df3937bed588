"""PCA whitening of the learned embedding (``eval.whiten_dim``), fitted without labels.

An embedding row ``e [D]`` becomes the unit row of ``Lambda^(-1/2) U^T (e - mu)`` ``[d]``, where ``mu [D]`` is the
mean, ``U [D, d]`` the top ``d`` principal directions and ``Lambda [d]`` their variances over the embeddings of
the maps it is fitted on (no labels). The cosine of two whitened rows gives each of the ``d`` main directions of
the embedding the same weight.

Why: cosine kNN on the raw embedding is dominated by its few directions of largest variance (how much of the wafer
fails, and where on the outline), so a pattern carried by weaker directions (a scratch, a small local cluster) is
outvoted by the overall failure density. Measured on WM-811K (``val_data`` against the four training files, a
3-epoch probe of the CPU recipe, D4-averaged): kNN macro accuracy 0.733 unwhitened, 0.748 / 0.758 / 0.759 whitened
to 48 / 96 / 128 directions (Scratch recall 0.03 -> 0.10, Loc 0.44 -> 0.46). The PCA is scikit-learn's; this module
only fits it to the ``EmbedFn`` contract and keeps it with the embeddings it made.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from fabml.errors import ConfigError, DataError
from fabml.metrics.classification import knn_macro_accuracy
from fabml.wafer.fusion import best_setting

#: the directions :func:`choose_dim` tries by default (0 = no whitening)
DIMS = (0, 48, 96, 128, 192)


def check_dim(dim: int) -> int:
    """``eval.whiten_dim`` as an int, or a one-line error when it is negative or not an integer."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ConfigError(f"eval.whiten_dim must be an integer >= 0 (0 = no whitening), got {dim!r}")
    return dim


class Whitening:
    """PCA whitening ``[N, D] -> [N, d]`` unit rows (module docstring), ``d = min(dim, D, N - 1)``."""

    def __init__(self, dim: int) -> None:
        self.dim = check_dim(dim)
        if self.dim == 0:
            raise ConfigError("eval.whiten_dim=0 means no whitening: do not build a Whitening for it")
        self.pca = None

    def fit(self, emb: np.ndarray) -> Whitening:
        """Fit on embeddings ``[N, D]`` (N >= 2, finite); returns self."""
        from sklearn.decomposition import PCA

        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or len(emb) < 2 or not np.isfinite(emb).all():
            raise DataError(f"whitening needs finite embeddings [N >= 2, D], got shape {emb.shape}")
        dim = min(self.dim, emb.shape[1], len(emb) - 1)
        self.pca = PCA(dim, whiten=True, svd_solver="full").fit(emb)
        return self

    @property
    def out_dim(self) -> int:
        """``d``: the whitened rows' length (after :meth:`fit`)."""
        if self.pca is None:
            raise ConfigError("the whitening is not fitted yet: call fit(embeddings) first")
        return int(self.pca.n_components_)

    def transform(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, D]`` -> whitened unit rows ``[N, d]`` float32."""
        if self.pca is None:
            raise ConfigError("the whitening is not fitted yet: call fit(embeddings) first")
        z = self.pca.transform(np.asarray(emb, dtype=np.float64))
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class WhitenedEmbedder:
    """The ``EmbedFn`` contract (``x [B,2,S,S] -> [B, d]`` unit rows): ``embed`` followed by a fitted whitening."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], whitening: Whitening) -> None:
        self.embed, self.whitening = embed, whitening

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.whitening.transform(self.embed(x).numpy()))


def whitened(embed: Callable[[torch.Tensor], torch.Tensor], fit_on: np.ndarray, dim: int):
    """``embed`` whitened to ``dim`` directions fitted on the embeddings ``fit_on [N, D]`` of maps ``embed`` made;
    ``embed`` itself when ``dim`` is 0."""
    return WhitenedEmbedder(embed, Whitening(dim).fit(fit_on)) if check_dim(dim) else embed


def choose_dim(ref_emb: np.ndarray, ref_labels: Sequence[str], val_emb: np.ndarray, val_labels: Sequence[str],
               k: int = 5, dims: Sequence[int] = DIMS) -> tuple[int, dict[int, float]]:
    """The ``eval.whiten_dim`` with the best kNN macro accuracy of labelled validation maps against labelled
    references, the whitening fitted on the references' embeddings ``ref_emb [N, D]`` (``val_emb [M, D]``: the same
    encoder's). Returns the best (the smallest on a tie) and the accuracy of every one tried."""
    scores = {}
    for dim in dims:
        fitted = Whitening(dim).fit(ref_emb) if check_dim(dim) else None
        pair = (fitted.transform(ref_emb), fitted.transform(val_emb)) if fitted else (ref_emb, val_emb)
        scores[int(dim)] = knn_macro_accuracy(pair[0], ref_labels, pair[1], val_labels, k)
    return int(best_setting(scores)), scores
