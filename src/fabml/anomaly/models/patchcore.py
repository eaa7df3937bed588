"""PatchCore (Roth et al., CVPR 2022, arXiv:2106.08265): nearest-neighbour distance to a memory bank.

Patch embeddings are mid-level backbone features with 3×3 local aggregation
(``avg_pool2d(k=3, s=1, p=1)`` per layer), the deeper layer resized (bilinear) to the first
layer's grid and concatenated: ``D = sum(channels)`` values per patch. The memory bank
``[M, D]`` is a greedy k-center coreset of the normal training patches (built by
:class:`fabml.anomaly.methods.patchcore.PatchCoreMethod`). For a test patch ``p``:

    s(p) = min_{m in bank} ||p - m||_2                       (patch score, feature units)

The patch-score grid is upsampled (bilinear) to the image size and blurred (Gaussian, sigma
``blur_sigma`` pixels). The image score is the configured pooling of that map, or with
``reweight=True`` the paper's re-weighted score (Eq. 7): for the test patch ``m_test*`` with
the largest patch score ``s*``, its nearest bank item ``m*`` and the ``b = num_neighbors``
bank items ``N_b(m*)`` nearest to ``m*`` (``m*`` included),

    s = (1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||) * s*.

Distances are computed block by block over the bank (and, outside ONNX export, over the
queries) so that no ``[queries, M]`` matrix larger than ``chunk_size²`` floats is built. The bank
mean ``c``, the centred bank ``m - c`` and its squared norms are buffers computed once when the
bank is set or loaded; each block is one ``addmm`` (``||m - c||² - 2 (q - c)·(m - c)``) followed by
a running minimum. ``search="faiss"`` scores ``predict`` with a Faiss flat L2 index over the
centred bank instead (same neighbours; the ONNX graph always keeps the torch computation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from fabml.anomaly.models.base import AnomalyModel, AnomalyOutput, BackboneModelConfig, GaussianBlur, backbone_extractor
from fabml.anomaly.models.feature_utils import (
    concat_feature_maps,
    flatten_patches,
    require_fitted,
    resize_buffers_for_load,
)
from fabml.anomaly.models.registry import ANOMALY_MODELS
from fabml.errors import ConfigError

if TYPE_CHECKING:
    import faiss


@dataclass
class PatchCoreConfig(BackboneModelConfig):
    """Settings of :class:`PatchCore`.

    backbone / layers: timm model and ``out_indices`` (default ``tf_efficientnet_lite0`` [2, 3]
    = strides 8, 16, channels 40 + 112, the mid-level pair the paper takes from WRN-50
    layer2 + layer3). coreset_ratio: fraction of the training patches kept in the bank (1.0 =
    all). projection_dim: dimensions of the fixed Gaussian random projection used only to
    *select* the coreset (0 = select in the full feature space; also used unless it at least
    halves the embedding dimension). num_neighbors: ``b`` of the
    re-weighting. reweight: use the paper's re-weighted image score instead of ``pooling``.
    blur_sigma: Gaussian blur of the map in pixels (0 = none). chunk_size: bank rows (and query
    rows) per distance block. coreset_chunk: training patches per greedy k-center run during
    ``fit`` (bounds fit memory; see the method). coreset_oversample: candidates each chunk keeps
    for the final global greedy pass, as a multiple of its share of the bank (1-4; 1 = each chunk
    keeps its share). coreset_exact_max_mb: memory (MB of float32 features and projections) the
    fit may use to keep every training patch and select the paper's coreset in one greedy pass
    over all of them (when that pass also fits the work limit; 0 = always stream). search: ``exact`` (torch, blocks of ``chunk_size``) or ``faiss`` (a Faiss
    flat L2 index for ``predict``; same nearest neighbours, for large banks). seed: coreset start
    point and projection.
    """

    layers: list[int] = field(default_factory=lambda: [2, 3])
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    num_neighbors: int = 9
    reweight: bool = False
    blur_sigma: float = 4.0
    chunk_size: int = 4096
    coreset_chunk: int = 16384
    coreset_oversample: float = 2.0
    coreset_exact_max_mb: float = 1024.0
    search: str = "exact"
    seed: int = 0


SEARCHES = ("exact", "faiss")


def check_patchcore_config(cfg: PatchCoreConfig) -> None:
    """One-line ConfigError for an out-of-range PatchCore setting."""
    if not cfg.layers:
        raise ConfigError("model.layers is empty; PatchCore needs at least one backbone layer (e.g. [2, 3])")
    if not 0.0 < cfg.coreset_ratio <= 1.0:
        raise ConfigError(f"model.coreset_ratio={cfg.coreset_ratio} must be in (0, 1] (paper: 0.1, or 0.01 for speed)")
    if cfg.projection_dim < 0:
        raise ConfigError(f"model.projection_dim={cfg.projection_dim} must be >= 0 (0 = no random projection)")
    if cfg.num_neighbors < 1:
        raise ConfigError(f"model.num_neighbors={cfg.num_neighbors} must be >= 1")
    if cfg.blur_sigma < 0:
        raise ConfigError(f"model.blur_sigma={cfg.blur_sigma} must be >= 0 (0 = no blur)")
    if cfg.coreset_exact_max_mb < 0:
        raise ConfigError(f"model.coreset_exact_max_mb={cfg.coreset_exact_max_mb} must be >= 0 (0 = always stream)")
    if cfg.chunk_size < 1 or cfg.coreset_chunk < 1:
        raise ConfigError(f"model.chunk_size={cfg.chunk_size} and model.coreset_chunk={cfg.coreset_chunk} must be >= 1")
    if not 1.0 <= cfg.coreset_oversample <= 16.0:
        raise ConfigError(f"model.coreset_oversample={cfg.coreset_oversample} must be in [1, 16] (2-4 is usual)")
    if cfg.search not in SEARCHES:
        raise ConfigError(f"model.search='{cfg.search}' is unknown; choose one of: {', '.join(SEARCHES)}")


def squared_distances(
    queries: torch.Tensor, keys: torch.Tensor, queries_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """``[Q, K]`` squared Euclidean distances ``||q||² - 2 q·k + ||k||²`` clamped at 0.

    queries ``[Q, D]``, keys ``[K, D]``; ``queries_sq`` ``[Q, 1]`` may be passed precomputed.
    """
    if queries_sq is None:
        queries_sq = queries.pow(2).sum(dim=1, keepdim=True)
    keys_sq = keys.pow(2).sum(dim=1).unsqueeze(0)
    return torch.addmm(keys_sq, queries, keys.t(), alpha=-2.0).add_(queries_sq).clamp_min_(0.0)


class BankCache(NamedTuple):
    """What the distance search needs of a bank ``[M, D]``, computed once: mean ``[1, D]``,
    centred bank ``[M, D]`` and its squared row norms ``[1, M]``."""

    mean: torch.Tensor
    centred: torch.Tensor
    sq_norms: torch.Tensor


def bank_cache(bank: torch.Tensor) -> BankCache:
    """:class:`BankCache` of ``bank`` ``[M, D]`` (an empty bank gives empty tensors)."""
    mean = bank.mean(dim=0, keepdim=True) if bank.shape[0] else bank.new_zeros(1, bank.shape[1])
    centred = (bank - mean).contiguous()
    return BankCache(mean, centred, centred.pow(2).sum(dim=1).unsqueeze(0))


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, chunk_size: int, rows: int | None = None,
    cache: BankCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[Q]`` (Euclidean) and index ``[Q]`` (int64) of each query's nearest bank row.

    The bank ``[M, D]`` is scanned in blocks of ``chunk_size`` rows (a Python loop whose
    length is fixed by ``M``, so it traces into a fixed ONNX graph; pass ``rows`` = M as a Python
    int to keep the tracer from recording the bank's shape); memory is ``Q × chunk_size``. Each
    block is one ``addmm`` giving ``||m - c||² - 2 (q - c)·(m - c)`` on features centred on the bank
    mean ``c`` (smaller norms, smaller rounding error; ``||q - c||²`` is the same for every bank row
    and is not needed to rank them), then a running minimum; ties keep the lowest index, as an
    unchunked ``min`` does. The returned distance is recomputed directly as ``||q - m_nearest||``,
    so it carries no cancellation error and does not depend on ``chunk_size`` or the matmul
    backend. ``cache`` (:func:`bank_cache` of ``bank``) avoids recomputing the centred bank.
    """
    if cache is None:
        cache = bank_cache(bank)
    centred_q = queries - cache.mean
    best_d2 = best_idx = None
    for start in range(0, int(bank.shape[0]) if rows is None else rows, chunk_size):
        block = cache.centred[start : start + chunk_size]
        partial = torch.addmm(cache.sq_norms[:, start : start + chunk_size], centred_q, block.t(), alpha=-2.0)
        d2, idx = partial.min(dim=1)
        if best_d2 is None:
            best_d2, best_idx = d2, idx
        else:
            closer = d2 < best_d2
            best_d2 = torch.where(closer, d2, best_d2)
            best_idx = torch.where(closer, idx + start, best_idx)
    assert best_idx is not None  # the bank is never empty here
    nearest = cache.centred.index_select(0, best_idx)
    return (centred_q - nearest).pow(2).sum(dim=1).sqrt(), best_idx


def faiss_nearest(queries: torch.Tensor, index: "faiss.Index", cache: BankCache) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`nearest_neighbours`, with the search done by a Faiss L2 ``index`` of ``cache.centred``.

    The distance is recomputed in torch from the found row, as in the exact path.
    """
    centred_q = (queries - cache.mean).contiguous()
    _, ids = index.search(centred_q.detach().cpu().numpy(), 1)
    best_idx = torch.from_numpy(ids[:, 0]).to(queries.device)
    nearest = cache.centred.index_select(0, best_idx)
    return (centred_q - nearest).pow(2).sum(dim=1).sqrt(), best_idx


@ANOMALY_MODELS.register("patchcore")
class PatchCore(AnomalyModel):
    """Frozen backbone + memory bank of patch embeddings.

    Train mode: ``forward(images)`` returns the patch embeddings ``[B, D, h, w]`` (what the
    coreset is built from). Eval mode: :class:`AnomalyOutput` with the blurred nearest-neighbour
    distance map at the input resolution. ``memory_bank`` ``[M, D]`` is a buffer (saved in the
    state dict; a bank of any size loads into any PatchCore of the same backbone/layers).
    """

    config_class = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig) -> None:
        super().__init__(config.image_size, config.in_chans, config.pooling)
        check_patchcore_config(config)
        self.config = config
        self.feature_extractor = backbone_extractor(config)
        self.embedding_dim = int(sum(self.feature_extractor.channels))
        self.blur: nn.Module = GaussianBlur(config.blur_sigma) if config.blur_sigma > 0 else nn.Identity()
        self.memory_bank: torch.Tensor
        self.register_buffer("memory_bank", torch.empty(0, self.embedding_dim))
        self.bank_rows = 0  # M as a Python int: the traced graph's loop length
        # derived from the bank once (set_memory_bank / load), not saved: see BankCache
        self.bank_mean: torch.Tensor
        self.bank_centred: torch.Tensor
        self.bank_sq_norms: torch.Tensor
        self._faiss_index: faiss.Index | None = None
        self._set_cache()

    def _set_cache(self) -> None:
        cache = bank_cache(self.memory_bank)
        self.register_buffer("bank_mean", cache.mean, persistent=False)
        self.register_buffer("bank_centred", cache.centred, persistent=False)
        self.register_buffer("bank_sq_norms", cache.sq_norms, persistent=False)
        self._faiss_index = None

    @property
    def cache(self) -> BankCache:
        """The bank's mean, centred rows and squared norms (:class:`BankCache`)."""
        return BankCache(self.bank_mean, self.bank_centred, self.bank_sq_norms)

    def faiss_index(self) -> "faiss.Index":
        """A Faiss ``IndexFlatL2`` over the centred bank, built on first use and kept until the bank changes."""
        if self._faiss_index is None:
            import faiss

            index = faiss.IndexFlatL2(self.embedding_dim)
            index.add(self.bank_centred.detach().cpu().numpy())
            self._faiss_index = index
        return self._faiss_index


    @property
    def fitted(self) -> bool:
        return self.bank_rows > 0

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Install a bank ``[M, D]`` (float32, on the model's device)."""
        if bank.dim() != 2 or bank.shape[1] != self.embedding_dim or bank.shape[0] == 0:
            raise ConfigError(
                f"memory bank must be [M > 0, {self.embedding_dim}] for backbone '{self.config.backbone}' "
                f"layers {self.config.layers}, got {list(bank.shape)}"
            )
        self.memory_bank = bank.detach().to(self.memory_bank.device, torch.float32).contiguous()
        self.bank_rows = int(bank.shape[0])
        self._set_cache()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        resize_buffers_for_load(self, state_dict, prefix, ["memory_bank"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.bank_rows = int(self.memory_bank.shape[0])
        self._set_cache()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, D, h, w]`` (grid of the first layer) of images ``[B, C, H, W]``."""
        features = self.feature_extractor(images)
        pooled = [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1) for f in features]
        return concat_feature_maps(pooled, mode="bilinear")

    def patch_scores(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-bank distance ``[B, h*w]`` and bank index ``[B, h*w]`` of each patch of ``[B, D, h, w]``."""
        batch = embedding.shape[0]
        queries = flatten_patches(embedding)
        step = self.config.chunk_size
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        cache = self.cache
        if not exporting and self.config.search == "faiss":
            dist, idx = faiss_nearest(queries, self.faiss_index(), cache)
        elif exporting or queries.shape[0] <= step:
            dist, idx = nearest_neighbours(queries, self.memory_bank, step, self.bank_rows, cache)
        else:  # query blocks too, so memory is bounded by chunk_size² whatever the batch size
            parts = [
                nearest_neighbours(queries[s : s + step], self.memory_bank, step, self.bank_rows, cache)
                for s in range(0, queries.shape[0], step)
            ]
            dist = torch.cat([p[0] for p in parts])
            idx = torch.cat([p[1] for p in parts])
        return dist.reshape(batch, -1), idx.reshape(batch, -1)

    def compute_anomaly_map(self, patch_scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, 1, H, W]`` map: patch scores ``[B, h*w]`` on ``grid`` = (h, w), upsampled and blurred."""
        scores = patch_scores.reshape(patch_scores.shape[0], 1, grid[0], grid[1])
        scores = F.interpolate(scores, size=self.image_size, mode="bilinear", align_corners=False)
        return self.blur(scores)

    def reweighted_score(
        self, patch_scores: torch.Tensor, locations: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """The paper's re-weighted image score ``[B]`` (module docstring, Eq. 7).

        patch_scores / locations ``[B, h*w]`` from :meth:`patch_scores`; embedding ``[B, D, h, w]``.
        The neighbourhood search runs over the whole bank for ``B`` rows only (``B × M`` floats).
        """
        batch, dim = embedding.shape[0], embedding.shape[1]
        worst = patch_scores.argmax(dim=1, keepdim=True)  # [B, 1]: m_test*
        s_star = patch_scores.gather(1, worst).squeeze(1)
        patches = embedding.flatten(2).transpose(1, 2)  # [B, h*w, D]
        m_test = patches.gather(1, worst.unsqueeze(2).expand(batch, 1, dim)).squeeze(1)  # [B, D]
        m_star = self.memory_bank.index_select(0, locations.gather(1, worst).squeeze(1))  # [B, D]
        k = min(self.config.num_neighbors, self.bank_rows)
        if k == 1:  # a one-item neighbourhood gives weight 0; the paper's b = 1 case is s* itself
            return s_star
        # centred on the bank mean (cached): m* ranks first despite rounding; ||m* - c||² is common to all rows
        near = torch.addmm(self.bank_sq_norms, m_star - self.bank_mean, self.bank_centred.t(), alpha=-2.0)
        support = near.topk(k, dim=1, largest=False).indices  # [B, k]: N_b(m*)
        support_feats = self.memory_bank.index_select(0, support.reshape(-1)).reshape(batch, k, dim)
        dist = (support_feats - m_test.unsqueeze(1)).pow(2).sum(dim=2).sqrt()  # [B, k]; column 0 is m*
        weight = 1.0 - torch.softmax(dist, dim=1)[:, 0]
        return weight * s_star

    def forward(self, images: torch.Tensor) -> torch.Tensor | AnomalyOutput:
        self.check_input(images)
        embedding = self.embed(images)
        if self.training:
            return embedding
        require_fitted(self)
        scores, locations = self.patch_scores(embedding)
        anomaly_map = self.compute_anomaly_map(scores, (embedding.shape[2], embedding.shape[3]))
        if self.config.reweight:
            return AnomalyOutput(self.reweighted_score(scores, locations, embedding), anomaly_map)
        return self.output(anomaly_map)
