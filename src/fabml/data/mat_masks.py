"""MATLAB ``.mat`` defect masks: v4/v5/v7 files through ``scipy.io.loadmat``, v7.3 (HDF5) through h5py.

The variable is named by ``data.mask_variable``; by default the file's only 2-D numeric array.
A pixel is defective where the array is nonzero (NaN counts as zero), so 0/1, 0/255, boolean
and label masks (0 = good, k = defect type k) all work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fabml.errors import DataError


def _variables_v5(path: str) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    data = loadmat(path)
    return {k: v for k, v in data.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def _variables_v73(path: str) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for name, item in f.items():
            if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                out[name] = np.asarray(item[()]).T  # MATLAB stores column-major: HDF5 holds the transpose
    return out


def mat_variables(path: str) -> dict[str, np.ndarray]:
    """The numeric array variables of a .mat file (any version); a DataError naming the file otherwise."""
    if not Path(path).is_file():
        raise DataError(f"mask file {path} does not exist")
    try:
        return _variables_v5(path)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        try:
            return _variables_v73(path)
        except ImportError:
            raise DataError(f"mask file {path} is a MATLAB v7.3 (HDF5) file and h5py is not installed: "
                            "pip install h5py, or save it in MATLAB with save(..., '-v7')") from None
        except OSError as exc:
            raise DataError(f"cannot read MATLAB v7.3 mask file {path}: {exc}") from None
    except (ValueError, TypeError, OSError) as exc:
        raise DataError(f"cannot read MATLAB mask file {path}: {exc}") from None


def read_mat_mask(path: str, variable: str = "") -> np.ndarray:
    """bool ``[H, W]``: where variable ``variable`` (default: the only 2-D array) of ``path`` is nonzero."""
    variables = mat_variables(path)
    listed = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in sorted(variables.items())) or "none"
    if variable:
        if variable not in variables:
            raise DataError(f"mask file {path} has no variable '{variable}' (data.mask_variable); "
                            f"its variables: {listed}")
        arr = variables[variable]
    else:
        planes = {k: v for k, v in variables.items() if np.squeeze(v).ndim == 2}
        if len(planes) != 1:
            why = "no 2-D array" if not planes else "several 2-D arrays"
            raise DataError(f"mask file {path} has {why} (variables: {listed}); "
                            "set data.mask_variable to the mask's name")
        variable, arr = next(iter(planes.items()))
    arr = np.squeeze(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise DataError(f"mask file {path}: variable '{variable}' is {arr.dtype} of shape {arr.shape}, "
                        "not a 2-D numeric mask")
    return np.nan_to_num(arr.astype(np.float64), nan=0.0) != 0
