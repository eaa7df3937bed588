"""Anomaly-detection metrics: image/pixel AUROC, AUPRO, F1-max, F1 at a threshold, the baselines that keep
F1 honest (anomalous share, F1 of calling everything anomalous), box hit rate, region recall, per-type breakdown.

Inputs are numpy arrays or torch tensors. ``labels`` ``[N]`` are 0 (normal) / 1 (anomalous),
``scores`` ``[N]`` raw or normalised image scores (higher = more anomalous); ``masks`` are
``[N, H, W]`` or ``[N, 1, H, W]`` 0/1 ground truth and ``maps`` the pixel scores of the same
``N, H, W``. A pixel or image counts as predicted anomalous when its score is ``>= threshold``.

Curves are exact: every distinct score is a threshold (ties move TPR and FPR together, the
trapezoid joins them by a straight line, as scikit-learn does). Image AUROC and F1-max come from
scikit-learn (``roc_auc_score``, ``precision_recall_curve``). Pixel AUROC and AUPRO are computed
here: pixel AUROC gives scikit-learn's value (to ~1e-10) from one float32 sort, measured 1.9x
faster than ``roc_auc_score`` (5.6 s against 10.9 s on 100 maps of 256x256, busy 2-core CPU) with
half the memory (sklearn sorts a float64 copy); AUPRO is not in scikit-learn. A metric that cannot be computed
(one class only, no anomalous pixels, empty input) raises :class:`MetricUndefinedError` with a
one-line reason; :func:`anomaly_metrics` turns those into ``None`` plus a note.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from fabml.errors import DataError, FabmlError


class MetricUndefinedError(FabmlError):
    """A metric cannot be computed on this data (e.g. no anomalous test images); the message says why."""


# ---------------------------------------------------------------- input checks


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _binary(x: np.ndarray, what: str) -> np.ndarray:
    """Bool array from 0/1 (or bool) values, DataError otherwise."""
    if x.dtype == bool:
        return x
    if x.size and not np.isin(x, (0, 1)).all():
        bad = x[~np.isin(x, (0, 1))].ravel()[0]
        raise DataError(f"{what} must be 0 (normal) or 1 (anomalous), found {bad!r}; binarise them first")
    return x.astype(bool)


def _finite(x: np.ndarray, what: str) -> None:
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values; check the model outputs")


def _labels_scores(labels: Any, scores: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(bool [N], float64 [N])``; MetricUndefinedError when empty."""
    y, s = _array(labels).ravel(), _array(scores)
    if s.ndim != 1 or len(y) != len(s):
        raise DataError(
            f"{metric}: labels and scores must be 1-D of one length, "
            f"got {list(_array(labels).shape)} and {list(s.shape)}"
        )
    if len(y) == 0:
        raise MetricUndefinedError(f"{metric} is undefined: no images were scored")
    s = s.astype(np.float64)
    _finite(s, "image scores")
    return _binary(y, "image labels"), s


def _require_both(y: np.ndarray, metric: str, unit: str = "images") -> None:
    if not y.any():
        raise MetricUndefinedError(
            f"{metric} is undefined: the test set has no anomalous {unit}; add defective images to evaluate"
        )
    if y.all():
        raise MetricUndefinedError(
            f"{metric} is undefined: the test set has no normal {unit}; add defect-free images to evaluate"
        )


def _masks_maps(masks: Any, maps: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(bool [N, H, W], float32 [N, H, W])``."""
    m, a = _array(masks), _array(maps)
    m = m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m
    a = a[:, 0] if a.ndim == 4 and a.shape[1] == 1 else a
    if m.ndim != 3 or m.shape != a.shape:
        raise DataError(
            f"{metric}: masks and maps must both be [N, H, W] or [N, 1, H, W] of one size, "
            f"got {list(_array(masks).shape)} and {list(_array(maps).shape)}"
        )
    if m.size == 0:
        raise MetricUndefinedError(f"{metric} is undefined: no pixels were scored")
    a = a.astype(np.float32, copy=False)
    _finite(a, "anomaly maps")
    return _binary(m, "masks"), a


# ---------------------------------------------------------------- curves


def _counts_at_thresholds(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative counts at every distinct score, highest first.

    Returns ``(thresholds [T], tps [T], fps [T])``: ``tps[i]`` / ``fps[i]`` = positives / negatives
    with score ``>= thresholds[i]``.
    """
    order = np.argsort(s)[::-1]
    s_sorted = s[order]
    tps_all = np.cumsum(y[order], dtype=np.int32 if len(s) < 2**31 else np.int64)
    del order
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s_sorted) - 1]
    tps = tps_all[ends].astype(np.int64)
    return s_sorted[ends], tps, ends + 1 - tps


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area of a curve starting at (0, 0) given by points ``x``, ``y`` (nondecreasing x)."""
    x = np.r_[0.0, x]
    y = np.r_[0.0, y]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    _, tps, fps = _counts_at_thresholds(y, s)
    return min(1.0, _auc(fps / fps[-1], tps / tps[-1]))


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image ``scores`` [N] against ``labels`` [N] (0/1): ``sklearn.metrics.roc_auc_score``."""
    y, s = _labels_scores(labels, scores, "image AUROC")
    _require_both(y, "image AUROC")
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC area over all pixels of ``maps`` against ``masks``.

    Exact (scikit-learn's ``roc_auc_score`` value) from one sort of the N·H·W float32 scores; kept
    instead of scikit-learn because it is about 2x faster and sorts no float64 copy (module docstring).
    """
    m, a = _masks_maps(masks, maps, "pixel AUROC")
    _require_both(m, "pixel AUROC", "pixels")
    return _roc_auc(m.ravel(), a.ravel())


# ---------------------------------------------------------------- AUPRO


def _regions(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel region id ``[N, H, W]`` int32 (0 = normal, 1..R over all images, 8-connected) and R."""
    ids = np.zeros(m.shape, dtype=np.int32)
    structure = np.ones((3, 3), dtype=bool)
    total = 0
    for i in range(len(m)):
        lab, k = ndimage.label(m[i], structure=structure)
        ids[i] = np.where(lab > 0, lab + total, 0)
        total += k
    return ids, total


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Area under (fpr, pro) from 0 to ``limit``, the curve interpolated linearly at ``limit``."""
    fpr, pro = np.r_[0.0, fpr], np.r_[0.0, pro]
    n = int(np.searchsorted(fpr, limit, side="right"))
    x, y = fpr[:n], pro[:n]
    if x[-1] < limit:
        x0, x1, y0, y1 = fpr[n - 1], fpr[n], pro[n - 1], pro[n]
        x = np.r_[x, limit]
        y = np.r_[y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by ``fpr_limit`` (in [0, 1]).

    Regions are the 8-connected components of each image's mask. At a threshold t,
    PRO(t) = mean over all regions r of |{p in r: map(p) >= t}| / |r| and FPR(t) = the share of
    normal pixels (mask 0, of every image) with map >= t. The curve is interpolated linearly at
    exactly ``fpr_limit``.

    Args:
        num_thresholds: None (default) = exact, every distinct map value is a threshold; only the
            pixels scoring at or above the highest threshold whose FPR reaches ``fpr_limit`` are
            sorted (about ``fpr_limit`` of the normal pixels plus the anomalous ones), so
            300 × 256 × 256 pixels take a few seconds. An int K = K thresholds spaced linearly
            between the map's min and max (one binning pass, no sort; approximate, anomalib's
            older scheme).
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise DataError(f"AUPRO fpr_limit={fpr_limit} must be in (0, 1]")
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise DataError(f"AUPRO num_thresholds={num_thresholds} must be >= 2 (or None for exact)")
    m, a = _masks_maps(masks, maps, "AUPRO")
    _require_both(m, "AUPRO", "pixels")
    ids, n_regions = _regions(m)
    sizes = np.bincount(ids.ravel(), minlength=n_regions + 1)
    n_normal = int(sizes[0])
    # weight of one pixel in PRO: 1 / (R |r|); normal pixels weigh 0 there
    pro_weight = np.r_[0.0, 1.0 / (n_regions * sizes[1:].astype(np.float64))]
    a, ids = a.ravel(), ids.ravel()
    if num_thresholds is None:
        normal_scores = a[ids == 0]
        k = max(1, math.ceil(fpr_limit * n_normal))
        t_star = np.partition(normal_scores, n_normal - k)[n_normal - k]  # k-th highest normal score
        del normal_scores
        keep = a >= t_star
        s, rid = a[keep], ids[keep]
        order = np.argsort(s)[::-1]
        s, rid = s[order], rid[order]
        ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
        fpr = np.cumsum(rid == 0, dtype=np.int64)[ends] / n_normal
        pro = np.cumsum(pro_weight[rid])[ends]
    else:
        grid = np.linspace(float(a.min()), float(a.max()), int(num_thresholds))
        # bin j holds pixels with grid[j] <= score < grid[j+1]; a pixel clears thresholds 0..j
        bins = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 1)
        fp_hist = np.bincount(bins[ids == 0], minlength=len(grid))
        pro_hist = np.bincount(bins, weights=pro_weight[ids], minlength=len(grid))
        fpr = np.cumsum(fp_hist[::-1]) / n_normal  # highest threshold first
        pro = np.cumsum(pro_hist[::-1])
    return min(1.0, max(0.0, _area_to_limit(fpr, np.minimum(pro, 1.0), fpr_limit) / fpr_limit))


# ---------------------------------------------------------------- F1


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold giving it (an observed score; ties -> the highest).

    F1(t) = 2 P R / (P + R) with "anomalous" = score >= t, over the points of scikit-learn's
    ``precision_recall_curve`` (every distinct score). Needs normal and anomalous images.
    """
    y, s = _labels_scores(labels, scores, "F1-max")
    _require_both(y, "F1-max")
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best_f1 = float(f1.max())
    best = int(np.flatnonzero(f1 >= best_f1 - 1e-12)[-1])  # thresholds ascend: the last is the highest
    return best_f1, float(thresholds[best])


def f1_at_threshold(labels: Any, scores: Any, threshold: float) -> float:
    """F1 of the decision ``score >= threshold``; needs at least one anomalous image."""
    y, s = _labels_scores(labels, scores, "F1 at threshold")
    if not y.any():
        raise MetricUndefinedError(
            "F1 at threshold is undefined: the test set has no anomalous images; add defective images to evaluate"
        )
    pred = s >= float(threshold)
    tp = int((pred & y).sum())
    return float(2.0 * tp / (pred.sum() + y.sum()))


# ---------------------------------------------------------------- baselines


def anomalous_share(labels: Any) -> float:
    """Share ``p`` of anomalous images among ``labels`` [N] (0/1); MetricUndefinedError when empty."""
    y = _binary(_array(labels).ravel(), "image labels")
    if y.size == 0:
        raise MetricUndefinedError("anomalous share is undefined: no images were scored")
    return float(y.mean())


def f1_all_anomalous(labels: Any) -> float:
    """F1 of calling every image anomalous: precision ``p``, recall 1, so ``F1 = 2p / (1 + p)``.

    ``p`` = :func:`anomalous_share`. The floor any F1 must beat: with 80% defective test images a
    detector that flags everything already scores 0.889. Needs at least one anomalous image.
    """
    p = anomalous_share(labels)
    if p == 0.0:
        raise MetricUndefinedError(
            "F1 of calling everything anomalous is undefined: the test set has no anomalous images"
        )
    return 2.0 * p / (1.0 + p)


# ---------------------------------------------------------------- localisation


def box_hit_rate(masks: Any, maps: Any) -> float:
    """Share of defective images whose anomaly-map maximum lies inside the defect mask.

    Counted over the images whose mask has at least one defect pixel (a box annotation drawn as a
    mask counts the same as a pixel mask). When the maximum value is reached at several pixels, the
    image counts the share of those pixels that lie inside the mask (so a flat map scores the mask's
    area, chance level, rather than a hit); with one maximum pixel this is 1 (hit) or 0 (miss).
    """
    m, a = _masks_maps(masks, maps, "box hit rate")
    defective = m.reshape(len(m), -1).any(axis=1)
    if not defective.any():
        raise MetricUndefinedError("box hit rate is undefined: no test image has defect pixels in its mask")
    hits = []
    for i in np.flatnonzero(defective):
        top = a[i] == a[i].max()
        hits.append(float(m[i][top].sum()) / float(top.sum()))
    return float(np.mean(hits))


def region_recall(masks: Any, maps: Any, threshold: float) -> float:
    """Share of defect regions with at least one map pixel ``>= threshold``.

    Regions are the 8-connected components of each image's mask (``scipy.ndimage.label``, as in
    :func:`aupro`); overlapping boxes drawn into one mask form one region. ``threshold`` is in map
    units: the raw pixel threshold for raw maps, 0.5 for normalised maps.
    """
    m, a = _masks_maps(masks, maps, "region recall")
    ids, n_regions = _regions(m)
    if n_regions == 0:
        raise MetricUndefinedError("region recall is undefined: no test image has defect pixels in its mask")
    flagged = np.bincount(ids[a >= float(threshold)], minlength=n_regions + 1)[1:]
    return float(np.mean(flagged > 0))


# ---------------------------------------------------------------- reports


def _try(notes: list[str], fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except MetricUndefinedError as err:
        notes.append(str(err))
        return None


def anomaly_metrics(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
    pixel_threshold: float | None = None,
) -> dict[str, Any]:
    """All test figures at once.

    Returns ``image_auroc``, ``pixel_auroc``, ``aupro``, ``f1_max``, ``f1_at_threshold`` (each in
    [0, 1] or None when undefined / not requested), ``f1_max_threshold`` (in score units),
    ``anomalous_share`` and ``f1_all_anomalous`` (the F1 that calling every image anomalous scores: read
    F1-max beside it), ``box_hit_rate`` (with masks and maps) and ``region_recall`` (with masks, maps and
    ``pixel_threshold``, in map units), and ``notes``: one line per figure left None saying why.
    """
    notes: list[str] = []
    out: dict[str, Any] = {"image_auroc": _try(notes, image_auroc, labels, scores)}
    best = _try(notes, f1_max, labels, scores)
    out["f1_max"], out["f1_max_threshold"] = best if best is not None else (None, None)
    if threshold is None:
        out["f1_at_threshold"] = None
        notes.append("F1 at threshold not computed: no calibrated threshold was given")
    else:
        out["f1_at_threshold"] = _try(notes, f1_at_threshold, labels, scores, threshold)
    out["anomalous_share"] = _try(notes, anomalous_share, labels)
    out["f1_all_anomalous"] = _try(notes, f1_all_anomalous, labels) if out["anomalous_share"] is not None else None
    if masks is None or maps is None:
        out["pixel_auroc"] = out["aupro"] = out["box_hit_rate"] = out["region_recall"] = None
        notes.append("pixel AUROC, AUPRO, box hit rate and region recall not computed: they need ground-truth "
                     "masks and anomaly maps")
    else:
        out["pixel_auroc"] = _try(notes, pixel_auroc, masks, maps)
        out["aupro"] = _try(notes, aupro, masks, maps, fpr_limit)
        out["box_hit_rate"] = _try(notes, box_hit_rate, masks, maps)
        if pixel_threshold is None:
            out["region_recall"] = None
            notes.append("region recall not computed: no pixel threshold was given")
        else:
            out["region_recall"] = _try(notes, region_recall, masks, maps, pixel_threshold)
    out["notes"] = notes
    return out


def per_type_metrics(
    types: Sequence[str],
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    normal_type: str | None = None,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
    pixel_threshold: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Each defect type against all normal images.

    Normal images are those with label 0. For every type of the anomalous images (sorted): ``count``,
    ``image_auroc``, ``f1_max``, ``recall_at_threshold`` (share of that type with score >=
    ``threshold``), ``pixel_auroc`` and ``aupro`` when ``masks`` and ``maps`` are given (that type's
    images plus all normal images), ``box_hit_rate`` and ``region_recall`` (at ``pixel_threshold``, map
    units; None without it) on that type's images, and ``notes``. The normal entry, keyed by ``normal_type`` (default:
    the type name of the normal images if they share one, else ``"normal"``), has ``count`` and
    ``false_positive_rate`` (share of normal images with score >= ``threshold``). Rates are None
    without a threshold.
    """
    y, s = _labels_scores(labels, scores, "per-type metrics")
    kinds = np.asarray([str(t) for t in types])
    if len(kinds) != len(y):
        raise DataError(f"per-type metrics: {len(kinds)} types for {len(y)} images; give one type per image")
    with_pixels = masks is not None and maps is not None
    if with_pixels:
        m, a = _masks_maps(masks, maps, "per-type pixel metrics")
        if len(m) != len(y):
            raise DataError(f"per-type metrics: {len(m)} masks for {len(y)} images; give one mask per image")
    if normal_type is not None and (bad := np.flatnonzero((kinds == normal_type) & y)).size:
        raise DataError(
            f"image {bad[0]} of the normal type '{normal_type}' is labelled anomalous; fix its label or type"
        )
    if normal_type is None:
        names = np.unique(kinds[~y])
        normal_type = str(names[0]) if len(names) == 1 and not (y & (kinds == names[0])).any() else "normal"
    normal_idx = np.flatnonzero(~y)
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds[y].tolist())):
        idx = np.flatnonzero(y & (kinds == kind))
        sub = np.r_[normal_idx, idx]
        notes: list[str] = []
        best = _try(notes, f1_max, y[sub], s[sub])
        row: dict[str, Any] = {
            "count": int(len(idx)),
            "image_auroc": _try(notes, image_auroc, y[sub], s[sub]),
            "f1_max": None if best is None else best[0],
            "recall_at_threshold": None if threshold is None else float(np.mean(s[idx] >= threshold)),
        }
        if with_pixels:
            row["pixel_auroc"] = _try(notes, pixel_auroc, m[sub], a[sub])
            row["aupro"] = _try(notes, aupro, m[sub], a[sub], fpr_limit)
            row["box_hit_rate"] = _try(notes, box_hit_rate, m[idx], a[idx])
            row["region_recall"] = (None if pixel_threshold is None
                                    else _try(notes, region_recall, m[idx], a[idx], pixel_threshold))
        row["notes"] = notes
        out[kind] = row
    fp_rate = None if threshold is None or not len(normal_idx) else float(np.mean(s[normal_idx] >= threshold))
    out[normal_type] = {"count": int(len(normal_idx)), "false_positive_rate": fp_rate}
    return out
