"""k-nearest-neighbour classification on embeddings and its per-class report.

``knn_predict`` ranks a labelled reference set by cosine similarity (L2-normalised here) and
takes a majority vote of the k nearest; a tie in votes goes to the label whose tied voters have
the larger summed similarity (then to the label that sorts first).

``classification_report`` gives the figure published work reports for WM-811K, ``macro_acc``:
the mean over classes of per-class recall (= balanced accuracy, classes with support in
``y_true``), beside plain ``accuracy``, ``macro_f1`` and a per-class table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fabml.errors import ConfigError, DataError
from fabml.metrics.retrieval import cosine_scores, query_chunk_size


def knn_predict(
    ref_emb: np.ndarray,
    ref_labels: Sequence | np.ndarray,
    query_emb: np.ndarray,
    k: int = 5,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Majority-vote labels of ``query_emb`` [Q, D] from its k most cosine-similar ``ref_emb`` [N, D].

    Args:
        ref_labels: [N] labels (any comparable type: ints or strings).
        k: neighbours voting; capped at the reference size (less one with ``exclude_self``).
        exclude_self: the queries are the reference set (Q == N): query i does not vote for itself.
    Returns:
        [Q] predicted labels with the dtype of ``np.asarray(ref_labels)``.
    """
    labels = np.asarray(ref_labels)
    q, ref = cosine_scores(query_emb, ref_emb)
    if labels.ndim != 1 or len(labels) != len(ref):
        raise DataError(f"ref_labels must hold one label per reference embedding ({len(ref)}), got shape {list(labels.shape)}")
    if int(k) < 1:
        raise ConfigError(f"kNN k must be >= 1, got {k}")
    if exclude_self and len(q) != len(ref):
        raise DataError(f"exclude_self needs the queries to be the reference set (Q == N), got Q={len(q)}, N={len(ref)}")
    n_cand = len(ref) - 1 if exclude_self else len(ref)
    if n_cand < 1:
        raise DataError("the kNN reference set is empty (after excluding each query itself)")
    k = min(int(k), n_cand)
    classes, codes = np.unique(labels, return_inverse=True)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    out = np.empty(len(q), dtype=np.int64)
    step = query_chunk_size(len(ref), chunk_size)
    for start in range(0, len(q), step):
        sims = q[start : start + step] @ ref.T
        rows = torch.arange(len(sims))
        if exclude_self:
            sims[rows, rows + start] = -torch.inf
        top_sim, top_idx = sims.topk(k, dim=1)
        voter = codes_t[top_idx]  # [c, k]
        votes = torch.zeros(len(sims), len(classes), dtype=torch.float64)
        votes.scatter_add_(1, voter, torch.ones_like(top_sim, dtype=torch.float64))
        summed = torch.zeros_like(votes).scatter_add_(1, voter, top_sim.double())
        tied = votes == votes.max(dim=1, keepdim=True).values
        # argmax returns the first maximum: equal sums go to the label that sorts first
        out[start : start + len(sims)] = torch.where(tied, summed, -torch.inf).argmax(dim=1).numpy()
    return classes[out]


def classification_report(
    y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray, labels: Sequence | None = None
) -> dict:
    """Accuracy, balanced (macro) accuracy, macro F1 and a per-class table.

    Args:
        y_true, y_pred: [N] true and predicted labels.
        labels: classes of the table and the macro averages (default: the sorted union of both).
    Returns:
        ``accuracy`` (all samples), ``macro_acc`` (mean recall over the listed classes with support,
        = sklearn's balanced accuracy with the default labels), ``macro_f1`` (mean F1 over the listed
        classes, F1 = 0 where precision or recall is undefined or both are 0), ``n`` and ``per_class``:
        one dict per class ``{label, support, recall, acc, precision, f1}`` where ``acc`` = ``recall``
        (the per-class accuracy of the published tables), recall is None without support and precision
        None when the class is never predicted.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise DataError(f"y_true and y_pred must be 1-D of equal length, got {list(t.shape)} and {list(p.shape)}")
    if len(t) == 0:
        raise DataError("classification report of zero samples")
    classes = list(np.unique(np.concatenate([t, p]))) if labels is None else list(labels)
    rows, recalls, f1s = [], [], []
    for c in classes:
        support = int((t == c).sum())
        predicted = int((p == c).sum())
        correct = int(((t == c) & (p == c)).sum())
        recall = correct / support if support else None
        precision = correct / predicted if predicted else None
        f1 = 2 * precision * recall / (precision + recall) if recall and precision else 0.0
        if recall is not None:
            recalls.append(recall)
        f1s.append(f1)
        label = c.item() if isinstance(c, np.generic) else c
        rows.append({"label": label, "support": support, "recall": recall, "acc": recall,
                     "precision": precision, "f1": f1})
    return {
        "accuracy": float((t == p).mean()),
        "macro_acc": float(np.mean(recalls)) if recalls else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "n": int(len(t)),
        "per_class": rows,
    }


def knn_macro_accuracy(ref_emb: np.ndarray, ref_labels: Sequence | np.ndarray, query_emb: np.ndarray,
                       query_labels: Sequence | np.ndarray, k: int = 5) -> float:
    """Macro accuracy (mean per-class recall) of the :func:`knn_predict` labels of ``query_emb [M,D]`` against
    ``ref_emb [N,D]`` (cosine, unit rows): the figure a setting is chosen by on validation maps."""
    pred = knn_predict(ref_emb, ref_labels, query_emb, k=k)
    return float(classification_report(np.asarray(query_labels), pred)["macro_acc"])
