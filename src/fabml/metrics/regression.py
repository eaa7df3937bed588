"""Field-regression metrics: relative L2 error per case, per variable, per time step; spread coverage.

Fields are arrays ``[n cases, T timesteps, M nodes, V variables]`` (``[n, T, M]`` means V = 1), numpy
arrays or torch tensors; any layout with the cases first works for :func:`relative_l2`. All sums are
taken in float64.

The relative L2 error of case ``i`` is

    rel_l2_i = ||pred_i - true_i||_2 / ||true_i||_2

with both norms over every entry of the case (all axes but the first), as in Li et al. (FNO, ICLR
2021) and neuraloperator's ``LpLoss`` (``reduction="mean"``): the overall figure is the *mean over
cases* of ``rel_l2_i``. Where the true field is zero everywhere (``||true_i|| = 0``: e.g. a zero
initial condition at one time step) the ratio is undefined and the value is NaN; the summaries use
``nanmean`` / ``nanmedian`` and report how many values were undefined.

Coverage of a predicted spread (Monte-Carlo dropout, an ensemble's disagreement): the fraction of entries with
``|true - mean| <= sigma * std``. For a calibrated Gaussian spread it is about 0.683 at sigma 1 and
0.954 at sigma 2. :func:`spread_scale` is the one factor on the spread that reaches a target coverage on
held-out cases (post-hoc scaling of the spread, as in Levi et al. 2019, "Evaluating and calibrating uncertainty
prediction in regression tasks").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fabml.errors import DataError


def _f64(x: Any, name: str) -> np.ndarray:
    """``x`` (array or tensor) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return arr


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _f64(pred, "pred"), _f64(true, "true")
    if p.shape != t.shape:
        raise DataError(f"pred has shape {list(p.shape)} but true has {list(t.shape)}; they must match")
    if p.ndim < 2:
        raise DataError(f"fields need a case axis and at least one more axis, got shape {list(p.shape)}")
    if not np.isfinite(p).all():
        raise DataError("pred contains NaN or infinite values; check the model outputs")
    return p, t


def _as_ntmv(x: np.ndarray) -> np.ndarray:
    """[n, T, M, V] view of an [n, T, M] or [n, T, M, V] field."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise DataError(f"fields must be [n, T, M] or [n, T, M, V], got shape {list(x.shape)}")
    return x


def _ratio(num_sq: np.ndarray, den_sq: np.ndarray) -> np.ndarray:
    """sqrt(num_sq / den_sq), NaN where den_sq == 0."""
    out = np.full(num_sq.shape, np.nan)
    ok = den_sq > 0
    out[ok] = np.sqrt(num_sq[ok] / den_sq[ok])
    return out


def relative_l2(pred: Any, true: Any) -> np.ndarray:
    """Per-case relative L2 error ``[n]``: ``||pred_i - true_i|| / ||true_i||`` over all axes but the first.

    NaN for a case whose true field is zero everywhere.
    """
    p, t = _pair(pred, true)
    axes = tuple(range(1, p.ndim))
    return _ratio(((p - t) ** 2).sum(axis=axes), (t**2).sum(axis=axes))


def relative_l2_per_variable(pred: Any, true: Any) -> np.ndarray:
    """Per-case, per-variable relative L2 error ``[n, V]`` of fields ``[n, T, M, V]`` (``[n, T, M]``: V = 1);
    the norms run over time and nodes."""
    p, t = (_as_ntmv(a) for a in _pair(pred, true))
    return _ratio(((p - t) ** 2).sum(axis=(1, 2)), (t**2).sum(axis=(1, 2)))


def relative_l2_per_step(pred: Any, true: Any) -> np.ndarray:
    """Per-case, per-time-step relative L2 error ``[n, T]`` of fields ``[n, T, M, V]`` (``[n, T, M]``: V = 1);
    the norms run over nodes and variables. NaN at a step where the case's true field is zero."""
    p, t = (_as_ntmv(a) for a in _pair(pred, true))
    return _ratio(((p - t) ** 2).sum(axis=(2, 3)), (t**2).sum(axis=(2, 3)))


def _spread_arrays(true: Any, mean: Any, std: Any, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(|true - mean|, std)`` in float64, checked: one shape, sigma > 0, std >= 0, not empty."""
    t, m, s = _f64(true, "true"), _f64(mean, "mean"), _f64(std, "std")
    if not (t.shape == m.shape == s.shape):
        raise DataError(f"true {list(t.shape)}, mean {list(m.shape)} and std {list(s.shape)} must have one shape")
    if sigma <= 0:
        raise DataError(f"coverage sigma must be > 0, got {sigma}")
    if (s < 0).any():
        raise DataError("std contains negative values; pass a standard deviation")
    if t.size == 0:
        raise DataError("coverage of an empty array is undefined")
    return np.abs(t - m), s


def coverage(true: Any, mean: Any, std: Any, sigma: float = 2.0) -> float:
    """Fraction of entries with ``|true - mean| <= sigma * std`` (all arrays the same shape).

    Where std is 0 an entry counts only when the mean equals the truth exactly.
    """
    err, s = _spread_arrays(true, mean, std, sigma)
    return float(np.mean(err <= sigma * s))


def spread_ratios(true: Any, mean: Any, std: Any, sigma: float = 2.0) -> np.ndarray:
    """Per entry, the smallest factor ``k`` on the spread that covers it: ``|true - mean| <= sigma * k * std``
    holds exactly when ``k >= r = |true - mean| / (sigma * std)`` (0 where the error is 0, inf where std is 0 and
    the error is not). Flat float64 array."""
    err, s = _spread_arrays(true, mean, std, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = err / (sigma * s)
    return np.where(err == 0, 0.0, r).ravel()


def spread_scale(ratios: Any, target: float) -> float:
    """The factor ``k`` on a predicted spread that makes ``mean ± sigma * k * std`` cover the fraction ``target`` of
    the entries whose :func:`spread_ratios` are given: the ``target`` quantile of the ratios (the smallest ratio
    with at least that fraction at or below it), so the coverage after scaling is ``target`` up to ties. A one-line
    error when the spread is 0 on more than ``1 - target`` of the entries (no factor reaches the target)."""
    r = np.asarray(ratios, dtype=np.float64).ravel()
    if not 0.0 < target < 1.0:
        raise DataError(f"target coverage must be in (0, 1), got {target}")
    if r.size == 0:
        raise DataError("no spread to calibrate: the ratios are empty")
    k = float(np.quantile(r, target, method="inverted_cdf"))
    if not np.isfinite(k):
        raise DataError(f"the spread is 0 where the error is not on {np.mean(~np.isfinite(r)):.0%} of the entries: "
                        f"no factor covers {target:.1%}; use --samples > 1 with dropout, or an ensemble")
    return k


def summarise(values: Any) -> dict[str, float | int | None]:
    """``{"mean", "median", "min", "max", "n", "n_undefined"}`` of a rel-L2 array, NaNs (undefined) left out.

    ``None`` for the statistics when every value is undefined.
    """
    v = _f64(values, "values").ravel()
    ok = v[np.isfinite(v)]
    stats: dict[str, float | int | None] = {"n": int(v.size), "n_undefined": int(v.size - ok.size)}
    if ok.size == 0:
        stats.update(mean=None, median=None, min=None, max=None)
    else:
        stats.update(mean=float(ok.mean()), median=float(np.median(ok)), min=float(ok.min()), max=float(ok.max()))
    return stats


def column_means(values: Any) -> list[float | None]:
    """Mean over cases (axis 0) of a ``[n, K]`` rel-L2 array, per column, NaNs left out (``None`` when a
    column has no defined value): the per-variable / per-step figure of a split."""
    v = _f64(values, "values")
    if v.ndim != 2:
        raise DataError(f"column_means needs an [n, K] array, got shape {list(v.shape)}")
    out: list[float | None] = []
    for col in v.T:
        ok = col[np.isfinite(col)]
        out.append(float(ok.mean()) if ok.size else None)
    return out
