"""The ``unknown`` threshold of open-set prediction, calibrated on the validation split.

``predict`` calls an image ``unknown`` when its best cosine similarity to any reference is below a
threshold t. Two ways to choose t from the validation queries against the training references:

- ``far`` (the default): the rate at which images of a class the index does not hold are accepted.
  The classes are split into ``round(1 / heldout_class_fraction)`` folds (seeded); for each fold, its
  classes are removed from the references and their validation queries become impostors, whose best
  similarity to the remaining references is recorded. Pooled over the folds (every class is an impostor
  once), t is the smallest value such that at most ``unknown_far`` of the impostors reach it:
  ``FAR(t) = #{impostor best similarity >= t} / #impostors <= unknown_far``. This sets the error a
  user cares about ("a new defect type is silently given a known name") directly, on classes the
  model never saw as references, which is the situation ``unknown`` is for.
- ``quantile``: t = the ``unknown_quantile`` quantile of the genuine best similarities (each validation
  query's best similarity to a reference of its own class): the ``floor(q * n)``-th smallest of the n,
  so at most that fraction of known-class images is rejected (the false-reject rate). It needs no held-out classes (works with 1 class) but
  says nothing about how often a new class is accepted.

Both are computed from one matrix ``M [Q, C]``: the best similarity of each query to each class's
references (:func:`class_max_similarity`). The result reports the other error too: the fraction of
known-class queries accepted at t (``true_accept_rate``) and, for ``far``, the achieved FAR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fabml.errors import ConfigError, DataError
from fabml.metrics.retrieval import cosine_scores, query_chunk_size

METHODS = ("far", "quantile")


@dataclass
class UnknownThreshold:
    """A calibrated threshold on the best cosine similarity (below it: ``unknown``).

    method: ``far`` | ``quantile``; target: the asked FAR or quantile; threshold: t in [-1, 1] (slightly
    above 1 when no impostor may be accepted); achieved_far: impostors accepted at t (``far`` only);
    true_accept_rate: known-class validation queries whose best similarity reaches t; n_impostor /
    n_genuine: queries behind each figure; folds: class folds used (``far``).
    """

    method: str
    target: float
    threshold: float
    achieved_far: float | None = None
    true_accept_rate: float | None = None
    n_impostor: int = 0
    n_genuine: int = 0
    folds: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnknownThreshold":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def is_unknown(self, best_similarity: np.ndarray) -> np.ndarray:
        """bool [Q]: best similarity below the threshold."""
        return np.asarray(best_similarity, dtype=np.float32) < np.float32(self.threshold)


def class_max_similarity(query_emb: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray,
                         n_classes: int | None = None) -> np.ndarray:
    """``M [Q, C]`` float32: ``M[q, c]`` = max cosine similarity of query q to the references of class c
    (-inf where class c has no reference). ``ref_labels`` [N] int codes in [0, C)."""
    q, ref = cosine_scores(query_emb, ref_emb)
    labels = torch.from_numpy(np.asarray(ref_labels, dtype=np.int64))
    if labels.shape != (len(ref),) or (len(labels) and int(labels.min()) < 0):
        raise DataError(f"reference labels must be [N={len(ref)}] class codes >= 0, got shape {list(labels.shape)}")
    n_classes = int(n_classes if n_classes is not None else (int(labels.max()) + 1 if len(labels) else 0))
    out = torch.full((len(q), n_classes), -torch.inf)
    step = query_chunk_size(len(ref), None)
    for start in range(0, len(q), step):
        sims = q[start : start + step] @ ref.T
        index = labels[None, :].expand(len(sims), -1)
        out[start : start + len(sims)] = out[start : start + len(sims)].scatter_reduce(1, index, sims, "amax")
    return out.numpy()


def _far_threshold(impostor: np.ndarray, far: float) -> float:
    """Smallest t with #{impostor >= t} <= far * n (t just above the allowed-th highest score)."""
    ranked = np.sort(impostor.astype(np.float32))[::-1]
    allowed = int(np.floor(far * len(ranked) + 1e-9))
    if allowed >= len(ranked):
        return float(ranked[-1])
    return float(np.nextafter(ranked[allowed], np.float32(np.inf), dtype=np.float32))


def calibrate_unknown(
    query_emb: np.ndarray, query_labels: np.ndarray, ref_emb: np.ndarray, ref_labels: np.ndarray,
    method: str = "far", far: float = 0.05, quantile: float = 0.05, heldout_class_fraction: float = 0.2,
    seed: int = 0,
) -> UnknownThreshold:
    """Calibrate the ``unknown`` threshold (see the module docstring).

    Args:
        query_emb / query_labels: validation embeddings [Q, D] and their class codes [Q] (-1 = a class
            without references: an impostor in every fold).
        ref_emb / ref_labels: reference (training) embeddings [N, D] and class codes [N].
        method: ``far`` or ``quantile``; far / quantile: the target rate in [0, 1);
        heldout_class_fraction: share of the classes in each ``far`` fold; seed: fold assignment.
    """
    if method not in METHODS:
        raise ConfigError(f"eval.unknown_method={method!r} is unknown: use one of {', '.join(METHODS)}")
    for name, value in (("eval.unknown_far", far), ("eval.unknown_quantile", quantile)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{name}={value} must be in [0, 1)")
    q_labels = np.asarray(query_labels, dtype=np.int64)
    r_labels = np.asarray(ref_labels, dtype=np.int64)
    if len(q_labels) == 0:
        raise DataError("the validation split has no images: the unknown threshold cannot be calibrated")
    classes = np.unique(r_labels)
    n_classes = int(max(r_labels.max(initial=-1), q_labels.max(initial=-1))) + 1
    sims = class_max_similarity(query_emb, ref_emb, r_labels, n_classes)
    known = (q_labels >= 0) & np.isin(q_labels, classes)
    best = sims.max(axis=1)
    genuine = sims[np.flatnonzero(known), q_labels[known]]
    if method == "quantile":
        if len(genuine) == 0:
            raise DataError("no validation image belongs to a class of the references: the quantile threshold "
                            "needs known-class queries")
        ranked = np.sort(genuine.astype(np.float32))
        t = float(ranked[min(int(np.floor(float(quantile) * len(ranked) + 1e-9)), len(ranked) - 1)])
        return UnknownThreshold("quantile", float(quantile), t, None, float((best[known] >= np.float32(t)).mean()),
                                0, int(len(genuine)))
    fraction = float(heldout_class_fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"eval.heldout_class_fraction={fraction} must be in (0, 1)")
    if len(classes) < 2:
        raise DataError(f"the far threshold holds classes out of the references, which needs >= 2 classes "
                        f"(found {len(classes)}): set eval.unknown_method=quantile")
    n_folds = int(min(len(classes), max(2, round(1.0 / fraction))))
    order = np.random.default_rng(seed).permutation(classes)
    impostors = [best[q_labels < 0]] if (q_labels < 0).any() else []
    for fold in range(n_folds):
        held = order[fold::n_folds]
        kept = np.setdiff1d(classes, held)
        rows = np.flatnonzero(np.isin(q_labels, held))
        if len(rows):
            impostors.append(sims[np.ix_(rows, kept)].max(axis=1))
    impostor = np.concatenate(impostors) if impostors else np.zeros(0, np.float32)
    if len(impostor) == 0:
        raise DataError("no validation image of a held-out class: the far threshold needs validation images "
                        "of several classes (or set eval.unknown_method=quantile)")
    t = _far_threshold(impostor, float(far))
    notes = []
    if len(impostor) < 1.0 / max(float(far), 1e-9):
        notes.append(f"only {len(impostor)} impostor queries: a FAR of {far:g} is resolved to 1/{len(impostor)} "
                     "at best")
    accepted = float((impostor >= np.float32(t)).mean())
    tar = float((best[known] >= np.float32(t)).mean()) if known.any() else None
    return UnknownThreshold("far", float(far), t, accepted, tar, int(len(impostor)), int(known.sum()), n_folds, notes)
