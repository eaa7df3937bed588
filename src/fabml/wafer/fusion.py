"""The learned embedding joined with a model-free one (``fabml wafer embed --method fused``).

Both parts are unit rows; the fused row is ``[sqrt(w) * a, sqrt(1 - w) * b]`` (``a`` the run's learned
embedding [B, D_a], ``b`` the baseline's [B, D_b], ``w`` = ``baseline.fusion_weight``), itself a unit row,
so the cosine of two fused rows is the weighted mean of the two cosines::

    cos(f_i, f_j) = w * cos(a_i, a_j) + (1 - w) * cos(b_i, b_j)

and every index, kNN and cluster command works on it unchanged. Why it exists: on WM-811K the hand-made
Wu 2015 features (kNN macro accuracy 0.768) beat the learned embedding alone (0.730), but the two make
different mistakes: fused with w = 0.3 (chosen on val_data) they reach 0.793 on test_data
(``benchmarks/wafer_wm811k.py``). ``w = 1`` is the learned embedding, ``w = 0`` the baseline.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from fabml.errors import ConfigError
from fabml.metrics.classification import knn_macro_accuracy

#: the weights :func:`choose_weight` tries by default
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def check_weight(weight: float) -> float:
    """``weight`` as a float, or a one-line error when it is outside [0, 1]."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ConfigError(f"baseline.fusion_weight must be in [0, 1] (the learned embedding's share of the cosine), "
                          f"got {weight}")
    return float(weight)


def fuse(learned: np.ndarray, baseline: np.ndarray, weight: float) -> np.ndarray:
    """``[N, D_a]`` and ``[N, D_b]`` unit rows -> ``[N, D_a + D_b]`` unit rows (module docstring)."""
    weight = check_weight(weight)
    if len(learned) != len(baseline):
        raise ConfigError(f"cannot fuse {len(learned)} learned rows with {len(baseline)} baseline rows")
    return np.hstack([np.sqrt(weight) * learned, np.sqrt(1.0 - weight) * baseline]).astype(np.float32)


class FusedEmbedder:
    """The ``EmbedFn`` contract (``x [B,2,S,S] -> [B, D_a + D_b]`` unit rows) of :func:`fuse` applied to two
    embed functions; picklable parts are the caller's business (the baseline is saved on its own)."""

    def __init__(self, learned: Callable[[torch.Tensor], torch.Tensor],
                 baseline: Callable[[torch.Tensor], torch.Tensor], weight: float) -> None:
        self.learned, self.baseline, self.weight = learned, baseline, check_weight(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.learned(x).numpy()
        b = self.baseline(x).numpy()
        return torch.from_numpy(fuse(a, b, self.weight))


def choose_weight(ref: tuple[np.ndarray, np.ndarray], ref_labels: Sequence[str], val: tuple[np.ndarray, np.ndarray],
                  val_labels: Sequence[str], k: int = 5,
                  weights: Sequence[float] = WEIGHTS) -> tuple[float, dict[float, float]]:
    """The weight with the best kNN macro accuracy of labelled validation maps against labelled references.

    ``ref`` / ``val``: (learned, baseline) unit rows of the references and of the validation maps. Returns the
    best weight (the smallest on a tie) and the accuracy of every weight tried."""
    scores = {float(w): knn_macro_accuracy(fuse(*ref, w), ref_labels, fuse(*val, w), val_labels, k) for w in weights}
    return best_setting(scores), scores


def best_setting(scores: dict[float, float]) -> float:
    """The setting with the highest score, the smallest on a tie (``{setting: validation score}``)."""
    return max(scores, key=lambda w: (scores[w], -w))
