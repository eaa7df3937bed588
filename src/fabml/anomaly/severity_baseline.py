"""A model-free severity baseline: hand-made intensity statistics of each image fed to a small regressor.

What a user would try before a learned severity head: a cut-paste fault raises a rectangle's intensity by
``s x scale`` (:mod:`fabml.anomaly.cutpaste_faults`), so the bright tail of the image's intensity distribution,
measured from the image's own median, should grow with the severity ``s``. For each image ``x [C, H, W]`` in
[0, 1], with ``g`` the channel mean (``[H, W]``), ``m = median(g)`` and ``d = g - m``, and the same on the
high-passed image ``h = g - boxblur_k(g)`` (``k`` = :data:`HIGHPASS_FRACTION` of the image width, odd), the
features (:func:`severity_features`, :data:`FEATURE_NAMES`) are per image:

- quantiles ``q_p(d)`` for ``p`` in :data:`QUANTILES` (high percentiles minus the median; ``p = 1`` is the max);
- top-k means: the mean of the largest ``k`` percent of ``d`` for ``k`` in :data:`TOP_PERCENTS`;
- areas: the fraction of pixels with ``d > t`` for ``t`` in :data:`AREA_THRESHOLDS` (intensity units, [0, 1]
  scale: one unit of severity adds 0.05 at the seed's ``scale``);
- the same three groups on ``h - median(h)``;

``6 + 5 + 5 = 16`` per version, 32 in all (float64). :class:`SeverityBaseline` standardises them and fits a
scikit-learn regressor (gradient-boosted trees by default, ``"ridge"`` as the linear alternative) to the known
severities of synthetic faults pasted on training normals (:func:`training_faults`); predictions are clipped
to ``[0, severity_max]``. Nothing here is learned from pixels: it is the floor a learned head has to beat.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fabml.errors import ConfigError, DataError

QUANTILES = (0.5, 0.9, 0.99, 0.995, 0.999, 1.0)
TOP_PERCENTS = (0.25, 0.5, 1.0, 2.0, 5.0)
AREA_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4)
HIGHPASS_FRACTION = 0.25
REGRESSORS = ("gbr", "ridge")


def _groups(prefix: str) -> list[str]:
    return ([f"{prefix}q{p:g}" for p in QUANTILES] + [f"{prefix}top{k:g}%" for k in TOP_PERCENTS]
            + [f"{prefix}area>{t:g}" for t in AREA_THRESHOLDS])


FEATURE_NAMES = tuple(_groups("") + _groups("hp_"))


def _stats(d: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` deviations from the median -> ``[B, 16]`` quantiles, top-k means, areas."""
    n = d.shape[1]
    q = torch.quantile(d, torch.tensor(QUANTILES, dtype=d.dtype), dim=1).T
    ordered = d.sort(dim=1, descending=True).values
    top = torch.stack([ordered[:, :max(1, int(round(n * k / 100)))].mean(dim=1) for k in TOP_PERCENTS], dim=1)
    area = torch.stack([(d > t).to(d.dtype).mean(dim=1) for t in AREA_THRESHOLDS], dim=1)
    return torch.cat([q, top, area], dim=1)


def severity_features(images: torch.Tensor) -> np.ndarray:
    """Images ``[B, C, H, W]`` float in [0, 1] -> features ``[B, 32]`` float64 (see the module doc)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise DataError(f"severity_features expects float images [B, C, H, W], got {tuple(images.shape)} "
                        f"{images.dtype}")
    g = images.detach().to("cpu", torch.float64).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    b, _, height, width = g.shape
    k = max(3, int(width * HIGHPASS_FRACTION) // 2 * 2 + 1)
    background = F.avg_pool2d(F.pad(g, (k // 2,) * 4, mode="replicate"), k, stride=1)
    flat, high = g.reshape(b, -1), (g - background).reshape(b, -1)
    d = flat - flat.median(dim=1, keepdim=True).values
    h = high - high.median(dim=1, keepdim=True).values
    return torch.cat([_stats(d), _stats(h)], dim=1).numpy()


def training_faults(images: torch.Tensor, faults: Any, n_images: int, seed: int = 1,
                    batch_size: int = 16) -> Iterator[Any]:
    """``n_images`` training draws of :class:`~fabml.anomaly.cutpaste_faults.CutPasteFaults` with the
    ``faults`` config as given (its ``probability`` of a fault; the rest come back normal with severity 0),
    on the normal ``images`` ``[N, C, H, W]`` (the split's training normals: never test or calibration images),
    in a random order that covers every image once per pass; one CPU generator seeded with ``seed``."""
    from fabml.anomaly.cutpaste_faults import CutPasteFaults

    if len(images) == 0:
        raise DataError("the severity baseline needs at least one training normal image")
    paste = CutPasteFaults(faults)
    generator = torch.Generator().manual_seed(seed)
    passes = -(-n_images // len(images))
    order = torch.cat([torch.randperm(len(images), generator=generator) for _ in range(passes)])[:n_images]
    for start in range(0, n_images, batch_size):
        yield paste(images[order[start:start + batch_size]], generator)


class SeverityBaseline:
    """Hand-made intensity features (:func:`severity_features`) -> standardise -> regressor -> clip.

    regressor: ``"gbr"`` (scikit-learn ``HistGradientBoostingRegressor``, squared error, seeded) or
    ``"ridge"`` (``Ridge``, alpha 1.0). severity_max: the upper clip (the faults' ``severity_max``).
    """

    def __init__(self, regressor: str = "gbr", severity_max: float = 10.0, seed: int = 0) -> None:
        if regressor not in REGRESSORS:
            raise ConfigError(f"regressor={regressor!r} is not one of {', '.join(REGRESSORS)}")
        if not severity_max > 0:
            raise ConfigError(f"severity_max={severity_max} must be > 0")
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        head = (HistGradientBoostingRegressor(random_state=seed) if regressor == "gbr" else Ridge(alpha=1.0))
        self.regressor, self.severity_max = regressor, float(severity_max)
        self.model = make_pipeline(StandardScaler(), head)
        self.fitted = False
        self.train_faulty = 0  # faulty rows (severity > 0) of the last fit

    def fit(self, features: np.ndarray, severity: np.ndarray) -> "SeverityBaseline":
        """Fit on features ``[N, F]`` and known severities ``[N]`` (severity units, 0 for a normal image)."""
        if len(features) != len(severity) or len(features) < 2:
            raise DataError(f"the baseline needs >= 2 rows and one severity per row, got {len(features)} feature "
                            f"rows and {len(severity)} severities")
        self.model.fit(np.asarray(features, dtype=np.float64), np.asarray(severity, dtype=np.float64))
        self.fitted = True
        self.train_faulty = int((np.asarray(severity) > 0).sum())
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted severities ``[N]`` in ``[0, severity_max]``."""
        if not self.fitted:
            raise DataError("the severity baseline is not fitted; call fit(features, severity) first")
        return np.clip(self.model.predict(np.asarray(features, dtype=np.float64)), 0.0, self.severity_max)

    def predict_images(self, images: torch.Tensor) -> np.ndarray:
        """Predicted severities ``[B]`` of images ``[B, C, H, W]`` in [0, 1]."""
        return self.predict(severity_features(images))


def fit_on_training_faults(images: torch.Tensor, faults: Any, n_images: int, regressor: str = "gbr",
                           seed: int = 1, batch_size: int = 16) -> SeverityBaseline:
    """A :class:`SeverityBaseline` fitted on ``n_images`` draws of :func:`training_faults` (``faults`` as
    given, e.g. the recipe's probability) on the training normals ``images`` ``[N, C, H, W]``."""
    feats, sev = [], []
    for batch in training_faults(images, faults, n_images, seed, batch_size):
        feats.append(severity_features(batch.images))
        sev.append(batch.severity.double().numpy())
    return SeverityBaseline(regressor, faults.severity_max, seed).fit(np.concatenate(feats), np.concatenate(sev))

