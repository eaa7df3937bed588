"""Calibrated thresholds, score normalisation (threshold -> 0.5), decisions, pixel masks and grades.

Calibration uses validation data only (held-out normal training images, plus defective or
synthetic-anomaly images when there are some), never the test set:

- ``f1``: the F1-max threshold of normal vs anomalous scores (anomalous = score >= threshold); when
  the two separate perfectly (F1 = 1 on a whole interval), the middle of the gap,
  ``(max normal + min anomalous) / 2``, rather than its top end, so real defects fainter than the
  calibration ones are not passed for want of a margin;
- ``quantile``: the ``quantile`` of the normal scores (linear interpolation, ``np.quantile``);
- ``auto``: ``f1`` when anomalous scores are given, else ``quantile``.

:class:`ScoreNormalizer` maps raw scores so that the threshold lands exactly on 0.5 and nothing
saturates (the "softsign" normalisation, equation in its docstring): below the threshold values fall
monotonically into (0, 0.5), above it they rise monotonically into (0.5, 1) and never reach 1, so a
very large anomaly still reads larger than a large one. Decisions, pixel masks and grades then read
normalised values: anomalous when ``>= 0.5``; grade = number of cut points ``<= score``
(0 = normal ... 4 = severe).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from fabml.errors import ConfigError, DataError
from fabml.metrics.anomaly import f1_max

METHODS = ("auto", "f1", "quantile")
SOURCES = ("defective", "synthetic")
GRADE_NAMES = ["normal", "minor", "moderate", "major", "severe"]
DEFAULT_CUTS = (0.5, 0.625, 0.75, 0.875)
_NOUN = {"defective": "defective", "synthetic": "synthetic-anomaly"}


@dataclass(frozen=True)
class ThresholdResult:
    """A calibrated threshold in raw score units.

    method: ``f1`` | ``quantile`` (what was used, after ``auto`` chose).
    source: ``defective`` | ``synthetic`` (the anomalous scores behind ``f1``) | ``normal`` (quantile).
    message: the one line the CLI prints.
    """

    value: float
    method: str
    source: str
    message: str


# ---------------------------------------------------------------- calibration


def _flat(x: Any, what: str) -> np.ndarray:
    """1-D float array (torch or numpy, any shape); DataError on NaN/inf."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.ravel()
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{what} contain NaN or infinite values; check the model outputs on the validation images")
    return arr


def _check_options(method: str, quantile: float, source: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"threshold method '{method}' is unknown; choose one of: {', '.join(METHODS)}")
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"threshold quantile={quantile} must be in (0, 1), e.g. 0.99")
    if source not in SOURCES:
        raise ConfigError(f"threshold source '{source}' is unknown; choose one of: {', '.join(SOURCES)}")


def _percentile(q: float) -> str:
    return f"{q * 100:g}th percentile"


def calibrate_threshold(
    normal_scores: Any,
    anomalous_scores: Any = None,
    method: str = "auto",
    quantile: float = 0.99,
    source: str = "defective",
) -> ThresholdResult:
    """Image threshold from validation scores.

    Args:
        normal_scores: ``[N]`` raw scores of held-out normal images.
        anomalous_scores: ``[M]`` raw scores of anomalous validation images, or None / empty.
        method: ``auto`` | ``f1`` | ``quantile`` (module docstring).
        quantile: share of normal scores at or below the ``quantile`` threshold.
        source: what the anomalous images are: ``defective`` (real) or ``synthetic``.
    """
    _check_options(method, quantile, source)
    normal = _flat(normal_scores, "normal validation scores")
    if normal.size == 0:
        raise DataError("no normal validation scores to calibrate the threshold; hold out some normal training images")
    anomalous = None if anomalous_scores is None else _flat(anomalous_scores, "anomalous validation scores")
    has_anomalous = anomalous is not None and anomalous.size > 0
    if method == "f1" and not has_anomalous:
        raise ConfigError(
            "threshold method 'f1' needs anomalous validation scores (defective or synthetic images); "
            "use method 'auto' or 'quantile'"
        )
    if method == "quantile" or not has_anomalous:
        value = float(np.quantile(normal.astype(np.float64), quantile))
        why = "method 'quantile'" if method == "quantile" else "no anomalous validation images for F1-max"
        return ThresholdResult(
            value, "quantile", "normal",
            f"threshold {value:.4g} = {_percentile(quantile)} of {normal.size} held-out normal image scores ({why})",
        )
    labels = np.r_[np.zeros(normal.size, dtype=bool), np.ones(anomalous.size, dtype=bool)]
    f1, value = f1_max(labels, np.r_[normal.astype(np.float64), anomalous.astype(np.float64)])
    gap = ""
    if float(normal.max()) < float(anomalous.min()):  # perfectly separated: F1 = 1 anywhere in the gap
        value = 0.5 * (float(normal.max()) + float(anomalous.min()))
        gap = ", midway between the highest normal and the lowest anomalous score"
    return ThresholdResult(
        value, "f1", source,
        f"threshold {value:.4g} from F1-max (F1 {f1:.3f}{gap}) on {normal.size} held-out normal and "
        f"{anomalous.size} {_NOUN[source]} images",
    )


def _maps(x: Any, what: str) -> np.ndarray:
    """``[N, H, W]`` view of ``[N, H, W]`` / ``[N, 1, H, W]`` maps or masks."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise DataError(f"{what} must be [N, H, W] or [N, 1, H, W], got {list(arr.shape)}")
    return arr


def calibrate_pixel_threshold(
    normal_maps: Any,
    anomalous_maps: Any = None,
    anomalous_masks: Any = None,
    quantile: float = 0.999,
    source: str = "defective",
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> ThresholdResult:
    """Pixel threshold from validation maps.

    With ``anomalous_maps`` and their 0/1 ``anomalous_masks`` (``[M, H, W]`` or ``[M, 1, H, W]``):
    F1-max over the pixels of all maps (normal maps count as all-normal pixels); above
    ``max_pixels`` pixels a deterministic random sample of about ``max_pixels`` (``seed``) is used.
    Otherwise (no masks, or masks with no anomalous pixel): the exact ``quantile`` of all normal pixels.
    """
    _check_options("auto", quantile, source)
    if int(max_pixels) < 1:
        raise ConfigError(f"pixel threshold max_pixels={max_pixels} must be >= 1")
    normal = _maps(normal_maps, "normal validation maps")
    if normal.size == 0:
        raise DataError(
            "no normal validation maps to calibrate the pixel threshold; hold out some normal training images"
        )
    normal_px = _flat(normal, "normal validation maps")
    if anomalous_masks is not None and anomalous_maps is None:
        raise DataError("anomalous validation masks were given without their anomaly maps; pass both or neither")
    why = "no masks for F1-max"
    if anomalous_maps is not None and anomalous_masks is not None:
        amaps = _maps(anomalous_maps, "anomalous validation maps")
        amasks = _maps(anomalous_masks, "anomalous validation masks")
        if amaps.shape != amasks.shape:
            raise DataError(
                f"anomalous validation maps {list(amaps.shape)} and masks {list(amasks.shape)} differ in shape"
            )
        if amaps.shape[1:] != normal.shape[1:]:
            raise DataError(
                f"anomalous maps are {list(amaps.shape[1:])} but normal maps {list(normal.shape[1:])}; use one size"
            )
        positives = _flat(amasks, "anomalous validation masks") > 0.5
        if positives.any():
            scores = np.r_[normal_px, _flat(amaps, "anomalous validation maps")]
            labels = np.r_[np.zeros(normal_px.size, dtype=bool), positives]
            total = scores.size
            if total > max_pixels:
                keep = np.random.default_rng(seed).random(total, dtype=np.float32) < max_pixels / total
                keep |= labels & ~labels[keep].any()  # a sample without positives keeps them all
                scores, labels = scores[keep], labels[keep]
            f1, value = f1_max(labels, scores)
            sample = f" (a fixed random sample of {total:,})" if scores.size < total else ""
            return ThresholdResult(
                value, "f1", source,
                f"pixel threshold {value:.4g} from F1-max (F1 {f1:.3f}) on {scores.size:,} pixels{sample} of "
                f"{len(normal)} held-out normal and {len(amaps)} {_NOUN[source]} images",
            )
        why = "the anomalous validation masks have no anomalous pixel"
    value = float(np.quantile(normal_px, quantile))
    return ThresholdResult(
        value, "quantile", "normal",
        f"pixel threshold {value:.4g} = {_percentile(quantile)} of the {normal_px.size:,} pixels of "
        f"{len(normal)} held-out normal images ({why})",
    )


# ---------------------------------------------------------------- normalisation


def _largest_below(one: float, dtype: Any) -> float:
    """The largest value below ``one`` (a power of two: 1 or 0.5) of a float dtype: ``one * (1 - eps / 2)``."""
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else np.finfo(dtype).eps
    return one * (1.0 - float(eps) / 2.0)


def _softsign_norm(x: Any, threshold: float, scale: float) -> Any:
    """``0.5 + 0.5 * d / (1 + |d|)`` with ``d = (x - threshold) / scale`` (see :class:`ScoreNormalizer`).

    Computed as ``q = 0.5 / (1 + |d|)``, ``norm = 1 - q`` where ``d >= 0`` else ``q``: each step is a
    monotone rounding, so the result never reverses the order of two inputs in floating point, and
    ``x == threshold`` gives exactly 0.5. The only bounds are representation guards of the dtype:
    ``norm <= 1 - eps/2`` (reached only for ``d`` > ~1.7e7 in float32, ~9e15 in float64), so no value
    equals 1, and ``norm < 0.5`` for every ``d < 0`` (``1 + |d|`` rounds to 1 for ``|d|`` below eps),
    so ``norm >= 0.5`` exactly when ``x >= threshold``. Torch in, torch out (constants only:
    ONNX-exportable); anything else -> numpy (a float dtype is kept, others become float64).
    """
    if isinstance(x, torch.Tensor):
        d = (x - threshold) / scale
        q = 0.5 / (1.0 + d.abs())
        below, above = q.clamp(max=_largest_below(0.5, d.dtype)), (1.0 - q).clamp(max=_largest_below(1.0, d.dtype))
        return torch.where(d >= 0, above, below)
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    one = arr.dtype.type(1.0)
    d = (arr - arr.dtype.type(threshold)) / arr.dtype.type(scale)
    q = arr.dtype.type(0.5) / (one + np.abs(d))
    below = np.minimum(q, arr.dtype.type(_largest_below(0.5, arr.dtype)))
    above = np.minimum(one - q, arr.dtype.type(_largest_below(1.0, arr.dtype)))
    return np.where(d >= 0, above, below).astype(arr.dtype, copy=False)


def normalisation_scale(low: float, high: float) -> float:
    """``(high - low) / 2``, or 0.5 when ``high <= low`` (a zero range): the softsign scale, raw units."""
    return (high - low) / 2.0 if high > low else 0.5


@dataclass
class ScoreNormalizer:
    """Order-keeping, non-saturating normalisation with the calibrated threshold at 0.5 (image scores, pixel maps).

    All fields are raw-score units; ``*_min`` / ``*_max`` are the smallest and largest validation
    (calibration) scores or map values. With threshold ``t`` and ``s = (max - min) / 2``
    (:func:`normalisation_scale`; 0.5 when ``max == min``)::

        d    = (x - t) / s
        norm = 0.5 + 0.5 * d / (1 + |d|)        # the softsign of d, moved to (0, 1)

    so ``norm(t) = 0.5`` exactly, ``norm`` is strictly increasing, below ``t`` it lies in (0, 0.5) and
    above it in (0.5, 1) without clipping: ``norm -> 1`` only as ``x -> inf``. Why this form:

    - the slope at the threshold, ``0.5 / s = 1 / (max - min)``, is that of the min-max normalisation
      used before, so scores near the threshold read as they did; cut points sit at
      ``x = t + s * c / (1 - c)`` for ``c = (norm - 0.5) / 0.5``: with the default grade cuts
      (0.5, 0.625, 0.75, 0.875) at ``t``, ``t + s/3``, ``t + s`` and ``t + 3 s``;
    - the tail is algebraic (``1 - norm = 0.5 / (1 + d)``), not exponential: ``1 - exp(-d)`` rounds to
      exactly 1 in float32 from ``d ~ 17``, this only from ``d ~ 1.7e7``, so huge anomalies keep
      distinct values and grades 1-4 stay distinct however large the anomaly;
    - it needs only the two statistics every run already stores, so saved normalisers (``model.pt`` of
      older runs) load unchanged; their values near the threshold hardly move, while values the old
      ``clip((x - t) / (max - min) + 0.5, 0, 1)`` pinned at 0 or 1 now spread out.
    """

    image_threshold: float
    image_min: float
    image_max: float
    pixel_threshold: float
    pixel_min: float
    pixel_max: float

    @classmethod
    def fit(
        cls,
        scores: Any,
        image_threshold: float,
        maps: Any = None,
        pixel_threshold: float | None = None,
    ) -> ScoreNormalizer:
        """From validation ``scores`` ``[N]`` and ``maps`` (any shape) and the calibrated thresholds.

        Without ``maps`` the pixel statistics are the image ones; without ``pixel_threshold`` the
        image threshold serves for pixels too (meaningful when the image score pools the map).
        """
        s = _flat(scores, "validation scores")
        if s.size == 0:
            raise DataError("no validation scores to fit the score normaliser; hold out some normal training images")
        p = s if maps is None else _flat(maps, "validation maps")
        if p.size == 0:
            raise DataError("the validation maps are empty; the score normaliser needs at least one map")
        pixel_threshold = image_threshold if pixel_threshold is None else pixel_threshold
        return cls(
            float(image_threshold), float(s.min()), float(s.max()),
            float(pixel_threshold), float(p.min()), float(p.max()),
        )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"score normaliser '{f.name}' must be a finite number, got {value!r}")
            setattr(self, f.name, float(value))
        for kind in ("image", "pixel"):
            if getattr(self, f"{kind}_max") < getattr(self, f"{kind}_min"):
                raise ConfigError(f"score normaliser {kind}_max < {kind}_min; refit it on the validation data")

    @property
    def image_scale(self) -> float:
        """``s`` of the image scores, raw units (class docstring)."""
        return normalisation_scale(self.image_min, self.image_max)

    @property
    def pixel_scale(self) -> float:
        """``s`` of the pixel maps, raw units (class docstring)."""
        return normalisation_scale(self.pixel_min, self.pixel_max)

    def normalize_scores(self, scores: Any) -> Any:
        """Image scores in (0, 1), the image threshold at exactly 0.5, order kept (same type as the input)."""
        return _softsign_norm(scores, self.image_threshold, self.image_scale)

    def normalize_maps(self, maps: Any) -> Any:
        """Pixel maps in (0, 1), the pixel threshold at exactly 0.5, order kept (same type and shape as the input)."""
        return _softsign_norm(maps, self.pixel_threshold, self.pixel_scale)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreNormalizer:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            got = sorted(data) if isinstance(data, dict) else repr(data)
            raise ConfigError(f"score normaliser needs exactly the keys {', '.join(names)}; got {got}")
        return cls(**{k: data[k] for k in names})


# ---------------------------------------------------------------- decisions and grades


def check_cuts(cuts: Sequence[float]) -> list[float]:
    """Validated grade cut points: 4 increasing values in (0, 1], the first 0.5 (the threshold)."""
    values = [float(c) for c in cuts]
    if len(values) != 4:
        raise ConfigError(f"grade cuts must be 4 increasing values in (0, 1] starting at 0.5, got {values}")
    if values[0] != 0.5:
        raise ConfigError(
            f"grade cuts must start at 0.5 (the calibrated threshold) so that grade 0 = normal agrees "
            f"with the pass/fail decision, got {values}"
        )
    if any(b <= a for a, b in zip(values, values[1:])) or values[-1] > 1.0:
        raise ConfigError(f"grade cuts must be strictly increasing and at most 1, got {values}")
    return values


@dataclass
class GradeConfig:
    """Cut points on the normalised score: grade k = number of cuts <= score.

    Grade 0 (normal) is below cuts[0] = 0.5; 1 minor, 2 moderate, 3 major, 4 severe (>= cuts[3]).
    """

    cuts: list[float] = field(default_factory=lambda: list(DEFAULT_CUTS))

    def __post_init__(self) -> None:
        self.cuts = check_cuts(self.cuts)


def _check_no_nan(x: Any, what: str) -> None:
    if isinstance(x, torch.Tensor):
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and torch.isnan(x).any():
            raise DataError(f"{what} contain NaN; check the model outputs")
    elif np.isnan(np.asarray(x, dtype=np.float64)).any():
        raise DataError(f"{what} contain NaN; check the model outputs")


def grade(normalized_scores: Any, cuts: GradeConfig | Sequence[float] | None = None) -> Any:
    """Grades 0..4 (int64, same shape; torch in -> torch out) of normalised scores; names in ``GRADE_NAMES``."""
    values = GradeConfig().cuts if cuts is None else cuts.cuts if isinstance(cuts, GradeConfig) else check_cuts(cuts)
    _check_no_nan(normalized_scores, "normalised scores")
    if isinstance(normalized_scores, torch.Tensor):
        return sum((normalized_scores >= c).long() for c in values)
    return np.searchsorted(np.asarray(values), np.asarray(normalized_scores), side="right").astype(np.int64)


def decide(normalized: Any) -> Any:
    """Anomalous (True) where the normalised score is >= 0.5, i.e. the raw score >= the threshold."""
    _check_no_nan(normalized, "normalised scores")
    if isinstance(normalized, torch.Tensor):
        return normalized >= 0.5
    return np.asarray(normalized) >= 0.5


def pixel_mask(normalized_maps: Any) -> Any:
    """Predicted defect mask (bool, same shape) of normalised maps: pixel >= 0.5."""
    return decide(normalized_maps)
