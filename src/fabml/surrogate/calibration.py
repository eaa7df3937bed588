"""A calibrated spread: one factor on the predicted standard deviation, fitted on held-out cases.

Monte-Carlo dropout and an ensemble's disagreement both give a spread that is usually too narrow (the demo's covers
38% of the true values at 2 std, the Darcy ensemble's 28%, where a calibrated Gaussian spread covers 95%).
``fabml surrogate evaluate --split val --calibrate`` finds the factor ``k`` with which ``mean ± sigma * k * std``
covers the Gaussian share ``erf(sigma / sqrt 2)`` (0.954 at ``eval.coverage_sigma`` 2) of the validation values
(:func:`fabml.metrics.regression.spread_scale`; post-hoc scaling as in Levi et al. 2019) and writes it to
``RUN/calibration.json``; from then on ``predict`` and ``evaluate`` multiply the spread by ``k``
(``spread_scale`` of the loaded surrogate). Calibrating on the test split is refused: it must stay held out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fabml.errors import DataError

CALIBRATION_FILE = "calibration.json"
MAX_RATIOS_PER_BATCH = 100_000  # entries sampled per evaluation batch for the quantile (bounded memory)


def gaussian_coverage(sigma: float) -> float:
    """Share of a Gaussian within ``± sigma`` standard deviations: ``erf(sigma / sqrt 2)``."""
    return math.erf(float(sigma) / math.sqrt(2.0))


def write_calibration(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """``RUN/calibration.json`` (written atomically: :func:`fabml.engine.checkpoint._atomic_write`)."""
    from fabml.engine.checkpoint import _atomic_write

    path = Path(run_dir) / CALIBRATION_FILE
    text = json.dumps(record, indent=2).encode("utf-8")
    _atomic_write(path, lambda handle: handle.write(text))
    return path


def read_spread_scale(run_dir: str | Path) -> float:
    """The factor of ``RUN/calibration.json``, 1.0 without one; a one-line error for an unreadable file."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0
    try:
        scale = float(json.loads(path.read_text())["spread_scale"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a readable calibration ({type(err).__name__}: {err}); delete it or run "
                        "`fabml surrogate evaluate --split val --calibrate` again") from None
    if not (math.isfinite(scale) and scale > 0):
        raise DataError(f"{path}: spread_scale {scale} must be a positive number; calibrate again")
    return scale
