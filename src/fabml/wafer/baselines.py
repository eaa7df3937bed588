"""Model-free wafer embeddings: the bar a learned encoder has to clear, and an ``embed --method`` for users
without time to train.

Every baseline has one interface (:class:`Baseline`)::

    base = build_baseline("wu2015", cfg.baseline).fit(reference_tensors)   # [N,2,S,S] -> fitted
    emb = base.embed(tensors)                                               # -> float32 [N,D], unit rows
    base(x)                                                                 # an EmbedFn: [B,2,S,S] -> [B,D]

so a baseline goes through exactly the same evaluation, clustering and search as the encoder. Distances
are cosine (rows are L2-normalised), as for the encoder. Inputs are the resized maps of
:mod:`fabml.data.wafer_dataset`: channel 0 = failed die, channel 1 = die present, both 0/1.

- ``pca``: PCA of the flattened failed-die channel (``pca_dim`` components).
- ``raw``: the failed-die channel itself, area-averaged to ``raw_size`` x ``raw_size`` (fraction of failed
  pixels per cell), flattened. An all-pass map has no direction: its row is 0 and its cosine to every map is 0.
- ``wu2015``: the hand-crafted features of Wu, Jang and Chen, "Wafer map failure pattern recognition and
  similarity ranking for large-scale data sets", IEEE Trans. Semicond. Manuf. 28(1), 2015 — failure density in
  13 regions, the mean and standard deviation of the Radon transform over angles (``radon_points`` each) and the
  geometry of the largest failed-die region (6 numbers): ``13 + 2 * radon_points + 6`` numbers (59 by default),
  standardised with the reference set's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, sparse
from scipy.interpolate import CubicSpline
from scipy.spatial import ConvexHull
from sklearn.decomposition import PCA

from fabml.errors import ConfigError, DataError
from fabml.wafer.fusion import check_weight

BASELINES = ("pca", "raw", "wu2015")
"""The baseline names ``fabml wafer embed --method`` and ``baseline.methods`` accept."""


@dataclass
class BaselineConfig:
    """Model-free embeddings (YAML section ``baseline``), evaluated beside the learned one.

    methods: the baselines ``fabml wafer evaluate`` runs (each reported as ``baseline_<name>``).
    pca_dim: PCA components (at most the number of reference maps or pixels).
    raw_size: side of the area-averaged failed-die map used as raw pixels (``raw_size**2`` dimensions;
        maps smaller than this are used as they are).
    wu_size: side at which the Wu 2015 features are computed: the commands resize the original die grids to it
        (the dataset's resize, which keeps every failed die), whatever ``data.size`` is; tensors handed in
        directly are max-pooled down to it, and smaller ones used as they are. On WM-811K the features
        at 64 reach kNN macro accuracy 0.768, at 32 only 0.687.
    radon_angles: projection angles over [0°, 180°) (even, so that a 90° rotation permutes them).
    radon_points: points each Radon profile (mean, std) is resampled to (paper: 20).
    fuse_with / fusion_weight: ``embed --method fused`` joins the run's learned embedding with this baseline,
        weighing the learned cosine by ``fusion_weight`` w (:mod:`fabml.wafer.fusion`). 0.3 is the weight
        chosen on WM-811K's val_data (``benchmarks/wafer_wm811k.py``); choose yours on labelled validation
        maps with :func:`fabml.wafer.fusion.choose_weight`.
    """

    methods: list[str] = field(default_factory=lambda: list(BASELINES))
    pca_dim: int = 128
    raw_size: int = 32
    wu_size: int = 64
    radon_angles: int = 64
    radon_points: int = 20
    fuse_with: str = "wu2015"
    fusion_weight: float = 0.3

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in BASELINES]
        if unknown:
            raise ConfigError(f"baseline.methods: unknown {unknown}; choose from {list(BASELINES)}")
        if self.fuse_with not in BASELINES:
            raise ConfigError(f"baseline.fuse_with={self.fuse_with!r} is unknown; choose from {list(BASELINES)}")
        check_weight(self.fusion_weight)
        for name in ("pca_dim", "raw_size", "wu_size", "radon_angles", "radon_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"baseline.{name} must be a positive integer, got {getattr(self, name)}")
        if self.radon_angles % 2:
            raise ConfigError(f"baseline.radon_angles must be even (a 90° rotation then permutes the angles), "
                              f"got {self.radon_angles}")
        if self.radon_points < 4:
            raise ConfigError(f"baseline.radon_points must be at least 4 (cubic resampling), got {self.radon_points}")


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 2:
        raise DataError(f"baselines expect maps [B,2,S,S] (fail, wafer), got {tuple(x.shape)}")
    return x.float()


class Baseline:
    """Fit on reference maps, then embed maps as unit rows ``[N,D]``; subclasses define :meth:`features`
    (``[B,2,S,S] -> [B,F]``, no fitted state) and may fit a transform of them (:meth:`_fit`, :meth:`_transform`)."""

    name = ""
    input_size: int | None = None
    """The map side this baseline wants its input resized to from the original die grids (None: the
    ``data.size`` tensors the encoder sees); see :func:`fabml.wafer.embedder.baseline_tensors`."""

    def features(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, feats: np.ndarray) -> None:
        """Fit the transform on the reference features ``[N,F]`` (none by default)."""

    def _transform(self, feats: np.ndarray) -> np.ndarray:
        return feats

    def _features_batched(self, tensors: torch.Tensor, batch_size: int) -> np.ndarray:
        return np.concatenate([self.features(_check(tensors[i : i + batch_size]))
                               for i in range(0, len(tensors), batch_size)])

    def fit(self, tensors: torch.Tensor, batch_size: int = 512) -> Baseline:
        """Fit on reference maps ``[N,2,S,S]``; returns self."""
        self._fit_features(tensors, batch_size)
        return self

    def _fit_features(self, tensors: torch.Tensor, batch_size: int) -> np.ndarray:
        """Fit on reference maps; returns their features ``[N,F]`` (computed once, for :meth:`fit_transform`)."""
        if len(tensors) == 0:
            raise DataError(f"baseline {self.name}: no reference maps to fit on")
        feats = self._features_batched(tensors, batch_size)
        self._fit(feats)
        return feats

    def fit_transform(self, tensors: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """``fit(tensors).transform(tensors)`` with each map's features computed once."""
        return self._transform(self._fit_features(tensors, batch_size)).astype(np.float32)

    def transform(self, tensors: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """The fitted features ``[N,D]`` float32 of maps ``[N,2,S,S]`` before the rows are normalised (for
        ``wu2015``: each feature standardised over the reference maps)."""
        return self._transform(self._features_batched(tensors, batch_size)).astype(np.float32)

    def embed(self, tensors: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Unit-norm embeddings ``[N,D]`` float32 of maps ``[N,2,S,S]`` (zero rows stay zero)."""
        z = self.transform(tensors, batch_size)
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.maximum(norm, 1e-12)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The :data:`~fabml.wafer.embedding.EmbedFn` contract: ``[B,2,S,S] -> [B,D]`` unit rows."""
        return torch.from_numpy(self.embed(x, batch_size=max(len(x), 1)))


class PCABaseline(Baseline):
    """PCA of the resized failed-die maps (flattened channel 0). The embedding has ``min(dim, N, S*S)``
    dimensions: PCA has no more components than reference maps or pixels."""

    name = "pca"

    def __init__(self, dim: int = 128, seed: int = 0) -> None:
        self.dim = dim
        self.pca = PCA(n_components=dim, random_state=seed, svd_solver="randomized")

    def features(self, x: torch.Tensor) -> np.ndarray:
        return x[:, 0].reshape(len(x), -1).numpy()

    def _fit(self, feats: np.ndarray) -> None:
        self.pca.set_params(n_components=min(self.dim, *feats.shape))
        self.pca.fit(feats)

    def _transform(self, feats: np.ndarray) -> np.ndarray:
        return self.pca.transform(feats)


class RawBaseline(Baseline):
    """Raw pixels: the failed-die channel area-averaged to ``size`` x ``size`` (the fraction of failed pixels
    per cell; maps already at or below ``size`` are used as they are), flattened; cosine distance."""

    name = "raw"

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def features(self, x: torch.Tensor) -> np.ndarray:
        fail = x[:, :1]
        if fail.shape[-1] > self.size:
            fail = F.adaptive_avg_pool2d(fail, self.size)
        return fail.reshape(len(x), -1).numpy()


# ------------------------------------------------------------------------------------------- Wu, Jang, Chen 2015

def region_weights(size: int) -> np.ndarray:
    """The 13 regions of Wu et al. (2015) on a ``size`` x ``size`` frame as pixel weights ``[13, size*size]``.

    The frame (the wafer's bounding box: resized maps fill it) is cut into 5 x 5 cells. Regions 0-3 are the
    edge ring (the 16 outer cells) split into the top, right, bottom and left sector by the two diagonals
    through the centre; a pixel on a diagonal counts half to each of its two sectors, so a D4 transform of the
    map permutes the four edge densities exactly. Regions 4-12 are the inner 3 x 3 cells, row by row.
    """
    edges = [round(size * k / 5) for k in range(6)]  # symmetric: size - edges[k] == edges[5 - k]
    cell = np.searchsorted(edges, np.arange(size), side="right") - 1  # cell index 0..4 of each row/column
    rows, cols = np.meshgrid(cell, cell, indexing="ij")
    centre = (size - 1) / 2
    dy, dx = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")  # dy > 0: downwards
    weights = np.zeros((13, size, size))
    inner = (rows >= 1) & (rows <= 3) & (cols >= 1) & (cols <= 3)
    for r in range(3):
        for c in range(3):
            weights[4 + 3 * r + c] = inner & (rows == r + 1) & (cols == c + 1)
    ring = ~inner
    ady, adx = np.abs(dy), np.abs(dx)
    share = np.where(np.isclose(ady, adx), 0.5, 1.0)
    vertical = (ady > adx) | np.isclose(ady, adx)
    horizontal = (adx > ady) | np.isclose(ady, adx)
    weights[0] = ring * vertical * (dy < 0) * share  # top
    weights[1] = ring * horizontal * (dx > 0) * share  # right
    weights[2] = ring * vertical * (dy > 0) * share  # bottom
    weights[3] = ring * horizontal * (dx < 0) * share  # left
    return weights.reshape(13, -1)


def radon_matrix(size: int, angles: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The Radon transform of a ``size`` x ``size`` image as a sparse matrix ``[angles * n_bins, size*size]``.

    Angle ``k`` is ``theta_k = 180° k / angles``; a pixel with centre ``(x, y)`` (origin at the image centre,
    y up) adds its value to the projection at ``r = x cos(theta) + y sin(theta)``, split linearly between
    the two nearest integer bins (the pixel-driven projector). Bins run from ``-B`` to ``B`` with
    ``B = ceil((size - 1) / sqrt 2) + 1``; returns the matrix and the bin positions ``[n_bins]``.
    A precomputed matrix turns a batch of Radon transforms into one sparse product.
    """
    half = int(np.ceil((size - 1) / np.sqrt(2))) + 1
    bins = np.arange(-half, half + 1, dtype=float)
    centre = (size - 1) / 2
    yy, xx = np.meshgrid(centre - np.arange(size), np.arange(size) - centre, indexing="ij")
    x, y = xx.ravel(), yy.ravel()
    theta = np.pi * np.arange(angles) / angles
    r = np.cos(theta)[:, None] * x[None] + np.sin(theta)[:, None] * y[None]  # [angles, pixels]
    lo = np.floor(r)
    frac = r - lo
    pix = np.broadcast_to(np.arange(size * size), r.shape)
    row0 = np.arange(angles)[:, None] * len(bins) + (lo + half).astype(int)
    rows = np.concatenate([row0.ravel(), (row0 + 1).ravel()])
    cols = np.concatenate([pix.ravel(), pix.ravel()])
    vals = np.concatenate([(1 - frac).ravel(), frac.ravel()])
    matrix = sparse.csr_matrix((vals, (rows, cols)), shape=(angles * len(bins), size * size))
    return matrix, bins


def largest_region_geometry(fail: np.ndarray) -> np.ndarray:
    """Geometry of the largest 8-connected failed-die region of each binary map ``[B, s, s]`` -> ``[B, 6]``.

    Columns (lengths divided by the frame diagonal ``s sqrt 2``, the area by the wafer's pixels ``s*s``):
    area, perimeter (pixel edges between the region and the rest, an exactly D4-invariant count), major and
    minor axis length (``4 sqrt(lambda)`` of the pixel-coordinate covariance, as scikit-image's
    ``regionprops``), eccentricity ``sqrt(1 - lambda_2 / lambda_1)`` and solidity (region pixels / area of the
    convex hull of the pixel squares). A map without failed dies gives zeros. 8-connectivity keeps a
    diagonal scratch (dies touching at corners) one region.
    """
    n, s, _ = fail.shape
    out = np.zeros((n, 6))
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a map, never across maps
    labels, count = ndimage.label(fail, structure=structure)
    if count == 0:
        return out
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    owner = np.zeros(count + 1, dtype=int)
    owner[labels.ravel()] = np.repeat(np.arange(n), s * s)
    best_size = np.zeros(n, dtype=int)
    np.maximum.at(best_size, owner[1:], sizes[1:])
    best = np.zeros(n, dtype=int)
    for lab in range(count, 0, -1):  # the lowest label among equally large regions wins
        if sizes[lab] == best_size[owner[lab]]:
            best[owner[lab]] = lab
    diag = s * np.sqrt(2)
    for i in np.flatnonzero(best_size):
        mask = labels[i] == best[i]
        area = best_size[i]
        padded = np.pad(mask, 1)
        perimeter = (np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1]))
        rr, cc = np.nonzero(mask)
        if area > 1:
            lam = np.sort(np.linalg.eigvalsh(np.cov(np.stack([rr, cc]).astype(float), bias=True)))[::-1]
            lam = np.maximum(lam, 0.0)
        else:
            lam = np.zeros(2)
        ecc = np.sqrt(1 - lam[1] / lam[0]) if lam[0] > 0 else 0.0
        corners = np.concatenate([np.stack([rr + a, cc + b], 1) for a in (0, 1) for b in (0, 1)])
        hull_area = ConvexHull(corners).volume  # the area of a 2-D hull
        out[i] = (area / (s * s), perimeter / diag, 4 * np.sqrt(lam[0]) / diag, 4 * np.sqrt(lam[1]) / diag, ecc,
                  area / hull_area)
    return out


class Wu2015Baseline(Baseline):
    """The hand-crafted features of Wu, Jang and Chen (2015), standardised on the reference set.

    Per map, at side ``s = min(S, wu_size)`` (max-pooled down, so a single failed die survives):

    - **density** (13): failed pixels / wafer pixels in each region of :func:`region_weights` (0 where a
      region holds no wafer);
    - **Radon** (``2 * radon_points``): ``R(theta, r)`` of the failed-die channel over ``radon_angles`` angles
      (:func:`radon_matrix`), divided by ``s``; its mean and standard deviation over angles, each a profile
      over ``r``, resampled to ``radon_points`` points by a cubic spline (the paper's cubic interpolation).
      The angles cover the full turn: ``R(theta + 180°, r) = R(theta, -r)``, so the half-turn is computed and
      mirrored. A D4 transform of the map then only permutes the angles, and both profiles are exactly
      D4-invariant (the paper's half-turn mean is not: half of its projections come back mirrored);
    - **geometry** (6): :func:`largest_region_geometry`, D4-invariant.

    The densities are position features, as in the paper: a D4 transform permutes them (edge sectors among
    themselves, inner cells among themselves). Standardisation: ``(f - mean) / std`` with the reference
    set's statistics (a constant feature gets std 1), then cosine distance.

    Implementation: NumPy/SciPy (``scipy.ndimage.label``, ``scipy.spatial.ConvexHull``, a sparse Radon
    matrix) rather than scikit-image, which is not a dependency of fabml; the precomputed Radon matrix also
    transforms a whole batch in one product instead of rotating every map once per angle.
    """

    name = "wu2015"

    def __init__(self, size: int = 64, radon_angles: int = 64, radon_points: int = 20) -> None:
        self.size, self.radon_angles, self.radon_points = size, radon_angles, radon_points
        self.input_size = size
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._cache: dict[int, tuple] = {}

    @property
    def dim(self) -> int:
        return 13 + 2 * self.radon_points + 6

    def _parts(self, s: int) -> tuple:
        if s not in self._cache:
            radon, bins = radon_matrix(s, self.radon_angles)
            resample = CubicSpline(bins, np.eye(len(bins)))(np.linspace(bins[0], bins[-1], self.radon_points))
            self._cache[s] = (region_weights(s).T, radon, len(bins), resample.T)
        return self._cache[s]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}  # the matrices are rebuilt on demand, not saved

    def features(self, x: torch.Tensor) -> np.ndarray:
        """Maps ``[B,2,S,S]`` -> raw (unstandardised) features ``[B, 13 + 2*radon_points + 6]`` float64."""
        if x.shape[-1] > self.size:
            x = F.adaptive_max_pool2d(x, self.size)
        s = x.shape[-1]
        fail = (x[:, 0] > 0.5).numpy()
        wafer = ((x[:, 1] > 0.5) | (x[:, 0] > 0.5)).numpy()
        regions, radon, n_bins, resample = self._parts(s)
        flat = fail.reshape(len(x), -1).astype(float)
        density = (flat @ regions) / np.maximum(wafer.reshape(len(x), -1).astype(float) @ regions, 1e-12)
        density[(wafer.reshape(len(x), -1) @ regions) == 0] = 0.0
        sino = np.asarray(radon @ flat.T).T  # [B, angles * bins]
        sino = sino.reshape(len(x), self.radon_angles, n_bins) / s
        full = np.concatenate([sino, sino[:, :, ::-1]], axis=1)  # theta + 180°: mirrored in r
        mean = full.mean(axis=1) @ resample
        std = full.std(axis=1) @ resample
        return np.concatenate([density, mean, std, largest_region_geometry(fail)], axis=1)

    def _fit(self, feats: np.ndarray) -> None:
        self.mean = feats.mean(axis=0)
        std = feats.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)

    def _transform(self, feats: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise DataError("the wu2015 baseline is not fitted: call fit(reference maps) first")
        return (feats - self.mean) / self.std


def build_baseline(name: str, cfg: BaselineConfig | None = None, seed: int = 0) -> Baseline:
    """An unfitted baseline by name (``pca``, ``raw``, ``wu2015``) with its settings from ``cfg``."""
    cfg = cfg or BaselineConfig()
    if name == "pca":
        return PCABaseline(cfg.pca_dim, seed)
    if name == "raw":
        return RawBaseline(cfg.raw_size)
    if name == "wu2015":
        return Wu2015Baseline(cfg.wu_size, cfg.radon_angles, cfg.radon_points)
    raise ConfigError(f"unknown baseline {name!r}: choose from {list(BASELINES)}")
