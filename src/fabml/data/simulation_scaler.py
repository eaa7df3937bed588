"""Scalers of the surrogate job, fitted on the training cases only and saved with the run.

:class:`FieldScaler`: per-variable min-max scaling of the fields to [-r, r] (r = ``data.scale_range``,
the seed's 0.7). With ``lo_v`` / ``hi_v`` the minimum / maximum of variable v over every time step
and node of the training cases, ``centre_v = (hi_v + lo_v) / 2`` and ``half_v = (hi_v - lo_v) / 2``:

    scaled = (x - centre_v) * r / half_v,        x = scaled * half_v / r + centre_v.

A constant variable (``half_v = 0``) is scaled by 0 (every value becomes 0) and inverted back to its
constant, so nothing divides by zero. Values outside the training range map outside [-r, r]
(nothing is clipped).

:class:`ParamScaler`: the CSV design parameters standardised per column, ``(p - mean) / std`` over
the training cases; a constant column has std 1 (it becomes 0).

Both work on numpy arrays and torch tensors (same dtype and device out as in), save to plain
dicts (``state_dict``, JSON-ready lists) and load back (``from_state``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from fabml.errors import ConfigError, DataError

Array = Any  # np.ndarray | torch.Tensor


def _like(values: np.ndarray, x: Array, axis: int) -> Array:
    """``values`` [V] shaped to broadcast along ``axis`` of ``x``, as x's array type / dtype / device."""
    ndim = x.ndim
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = len(values)
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(values, dtype=dtype, device=x.device).reshape(shape)
    dtype = x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float32
    return values.astype(dtype).reshape(shape)


def _check_axis(x: Array, axis: int, size: int, what: str) -> None:
    if x.ndim == 0 or x.shape[axis] != size:
        raise DataError(f"{what}: an array of shape {tuple(x.shape)} has no axis {axis} of size {size} to scale")


class FieldScaler:
    """Per-variable min-max scaling to [-r, r] (see the module doc). ``lo`` / ``hi``: float64 [V]."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float], scale_range: float = 0.7) -> None:
        self.lo = np.asarray(lo, dtype=np.float64).ravel()
        self.hi = np.asarray(hi, dtype=np.float64).ravel()
        self.range = float(scale_range)
        if self.range <= 0:
            raise ConfigError(f"setting 'data.scale_range' = {scale_range} must be positive (the seed uses 0.7)")
        if self.lo.shape != self.hi.shape or np.any(self.hi < self.lo):
            raise DataError("field scaler: lo and hi must have one value per variable with lo <= hi")
        self.centre = (self.hi + self.lo) / 2.0
        half = (self.hi - self.lo) / 2.0
        self.forward_scale = np.divide(self.range, half, out=np.zeros_like(half), where=half > 0)
        self.inverse_scale = half / self.range

    @property
    def variables(self) -> int:
        return int(len(self.lo))

    @classmethod
    def fit(cls, source: Any, indices: Sequence[int] | np.ndarray, scale_range: float = 0.7) -> "FieldScaler":
        """Min / max per variable over the cases ``indices`` of ``source`` (a FieldSource: anything
        with ``get(i) -> [T, M, V]`` and ``path``), read one case at a time. A non-finite value is
        a DataError naming the case."""
        idx = [int(i) for i in np.asarray(indices).ravel()]
        if not idx:
            raise DataError("field scaler: no training cases to fit on; lower data.val_fraction / data.test_fraction")
        lo = hi = None
        for i in idx:
            case = source.get(i)
            flat = case.reshape(-1, case.shape[-1])
            if not np.isfinite(flat).all():
                where = getattr(source, "path", "the fields")
                raise DataError(f"fields file {where}: case index {i} holds NaN or infinite values; fix or remove it")
            c_lo, c_hi = flat.min(axis=0).astype(np.float64), flat.max(axis=0).astype(np.float64)
            lo = c_lo if lo is None else np.minimum(lo, c_lo)
            hi = c_hi if hi is None else np.maximum(hi, c_hi)
        return cls(lo, hi, scale_range)

    def transform(self, x: Array, axis: int = -1, inplace: bool = False) -> Array:
        """Scaled copy of ``x`` (numpy or torch) whose variables lie along ``axis`` (default last).
        ``inplace``: overwrite a float numpy ``x`` instead (same values, no temporaries)."""
        _check_axis(x, axis, self.variables, "field scaler")
        if inplace and isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            x -= _like(self.centre, x, axis)
            x *= _like(self.forward_scale, x, axis)
            return x
        return (x - _like(self.centre, x, axis)) * _like(self.forward_scale, x, axis)

    def inverse(self, x: Array, axis: int = -1) -> Array:
        """Original units of a scaled ``x`` (numpy or torch), variables along ``axis``."""
        _check_axis(x, axis, self.variables, "field scaler")
        return x * _like(self.inverse_scale, x, axis) + _like(self.centre, x, axis)

    def state_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) state: ``kind``, ``range``, ``lo``, ``hi``."""
        return {"kind": "field_minmax", "range": self.range, "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "FieldScaler":
        if state.get("kind") != "field_minmax":
            raise DataError(f"not a field scaler state (kind {state.get('kind')!r}); the run's scaler file is damaged")
        return cls(state["lo"], state["hi"], state["range"])


class ParamScaler:
    """Per-column standardisation of design parameters (see the module doc). ``mean`` / ``std``: float64 [P]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).ravel()
        std_arr = np.asarray(std, dtype=np.float64).ravel()
        self.std = np.where(std_arr > 0, std_arr, 1.0)

    @property
    def features(self) -> int:
        return int(len(self.mean))

    @classmethod
    def fit(cls, params: np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> "ParamScaler":
        """Mean and std per column of ``params`` [n, P] over ``rows`` (default all): the training cases' rows."""
        arr = np.asarray(params, dtype=np.float64)
        if rows is not None:
            arr = arr[np.asarray(rows, dtype=np.int64)]
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(f"parameter scaler: need [n >= 1, P] training parameters, got shape {arr.shape}")
        return cls(arr.mean(axis=0), arr.std(axis=0))

    def transform(self, x: Array, axis: int = -1) -> Array:
        """Standardised copy of ``x`` (numpy or torch), parameters along ``axis``."""
        _check_axis(x, axis, self.features, "parameter scaler")
        return (x - _like(self.mean, x, axis)) / _like(self.std, x, axis)

    def inverse(self, x: Array, axis: int = -1) -> Array:
        """Original units of standardised parameters."""
        _check_axis(x, axis, self.features, "parameter scaler")
        return x * _like(self.std, x, axis) + _like(self.mean, x, axis)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "param_standard", "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ParamScaler":
        if state.get("kind") != "param_standard":
            raise DataError(
                f"not a parameter scaler state (kind {state.get('kind')!r}); the run's scaler file is damaged"
            )
        return cls(state["mean"], state["std"])
