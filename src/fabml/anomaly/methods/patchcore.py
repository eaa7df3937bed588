"""PatchCore training: build the memory bank as a greedy k-center coreset, streaming over the data.

Greedy k-center (Gonzalez 1985; PatchCore Alg. 1): start from one patch, then repeatedly add
the patch farthest from the centres chosen so far, keeping each patch's distance to its nearest
centre and updating it with one matrix-vector product per added centre (O(N·k) time, O(N)
extra memory). Its covering radius ``r = max_x min_c ||x - c||`` is at most twice the optimal
k-center radius. Selection runs on features mapped by a fixed Gaussian random projection
(``projection_dim`` columns, entries N(0, 1/projection_dim)), which keeps pairwise distances
within a small factor with high probability (Johnson–Lindenstrauss) and makes each update
cheaper; the bank stores the *unprojected* features of the chosen patches.

Exact pruning (:func:`greedy_kcenter`, ``n·k`` large): after the first ``P`` centres the points
are grouped into the Voronoi cells of those centres (cell ``j``: centre ``z_j``, radius ``R_j``,
largest current gap ``g_j = max_{x in j} min_c ||x - c||``). A new centre ``c`` can only lower
the gap of a point of cell ``j`` if ``||c - z_j|| - R_j < g_j`` (triangle inequality), so only
those cells are updated. The choices are those of the plain loop (up to floating-point ties).

Exact when it fits: patches arrive batch by batch and are cut into consecutive chunks of
``coreset_chunk`` patches. While every chunk so far fits in ``exact_max_bytes`` (features and
projections, float32) and one greedy pass over all of them costs at most ``GLOBAL_PASS_MAX_WORK``
distance updates (N × ceil(r·N)), the chunks are kept whole, and ``finish`` runs one greedy
k-center pass over all N patches: the paper's coreset (e.g. 613k patches of 152 dims at ratio
0.002 = 0.37 GB and 0.75·2^30 updates). The first chunk that breaks either limit switches the fit
to streaming, and the chunks kept so far are reduced in order as if they had been streamed.

Streaming: the chunks are reduced as they arrive. Chunk ``i`` has the quota ``k_i = ceil(r·N_1..i) - ceil(r·N_1..i-1)``
(the quotas add up to exactly ``M = ceil(r·N)``); greedy k-center keeps ``ceil(oversample·k_i)``
*candidates* of it. When the stream ends, one global greedy k-center pass over the union of
the candidates chooses the ``M`` bank rows. When all patches fit in one chunk, the global pass
runs on that chunk directly, so the bank is exactly the paper's coreset (same start point).
Otherwise it is a different, two-level coreset: every chunk's candidates cover the chunk within
its oversampled greedy radius, and the global pass spends the bank where the union needs it
(a chunk keeps no fixed share). This is not the same computation as the paper's single pass
over all N patches, only close to it; ``oversample`` 1 keeps each chunk's share.

The global pass costs (candidates × M) distance updates, quadratic in the bank size. When that
exceeds ``GLOBAL_PASS_MAX_WORK`` (2^31: e.g. M = 61k rows at ratio 0.1 of 613k patches, where
the pass over 2 × 61k candidates did not finish in 16 minutes on a busy 2-core CPU), each chunk
keeps only the first ``ceil(o'·k_i)`` of its candidates with ``o' = max(1, 2^31 / M²)`` — the
greedy order is prefix-consistent, so this is exactly that chunk's greedy k-center with the
smaller quota — and at ``o' = 1`` the bank is the chunks' shares (no global pass). ``fit``
reports the oversampling used (``coreset_oversample_used``).

Peak memory of ``fit`` (float32 bytes, D = embedding dim, p = projection dim, S =
``coreset_chunk``, n_b = patches per batch, M = ceil(r·N) bank rows, o = oversample):
``4·[(S + n_b)·D + S·(p + 2) + o·M·(D + p + 2)]`` plus the backbone activations of one batch —
independent of the number of training images except through the bank itself — or, on the exact
path, up to ``exact_max_bytes`` plus one copy of the patches while they are joined.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Iterable

import torch

from fabml.anomaly.method import ANOMALY_METHODS, AnomalyMethod
from fabml.anomaly.models.feature_utils import flatten_patches
from fabml.anomaly.models.patchcore import PatchCore
from fabml.errors import DataError

PRUNE_MIN_WORK = 2**24  # n·k below which the plain loop is used (pruning set-up costs more)
GLOBAL_PASS_MAX_WORK = 2**31  # candidates × bank rows the global pass may cost (about a minute on 2 CPU cores)


def coreset_size(n_patches: int, ratio: float) -> int:
    """Bank rows kept from ``n_patches`` patches: ``ceil(ratio · n)``, 0 for no patches."""
    if n_patches <= 0:
        return 0
    return max(1, min(n_patches, math.ceil(ratio * n_patches - 1e-9)))  # 1e-9: 0.1·30 is 3, not 4


def _update(min_d2: torch.Tensor, feats: torch.Tensor, sq: torch.Tensor, centre: torch.Tensor,
            centre_sq: torch.Tensor) -> torch.Tensor:
    """``min(min_d2, ||x - centre||²)`` for rows ``feats`` ``[n, d]``; returns the new distances ``[n]``."""
    d2 = torch.addmv(sq, feats, centre, alpha=-2.0).add_(centre_sq).clamp_min_(0.0)
    return torch.minimum(min_d2, d2)


def greedy_kcenter(
    features: torch.Tensor, k: int, first: int = 0, cells: int | None = None
) -> tuple[torch.Tensor, float]:
    """Indices ``[k]`` (int64) chosen by greedy farthest-point selection, and the covering radius.

    features: ``[N, d]`` points; k: centres to choose (``1 <= k <= N``); first: index of the
    first centre. The radius ``max_x min_c ||x - c||`` is in the units of ``features``.
    cells: ``P``, the centres after which the exact cell pruning (module docstring) starts;
    None = ``min(k, max(64, 2·sqrt(N)))`` when ``N·k >= 2**24``, else no pruning; 0 = no pruning.
    """
    n = features.shape[0]
    feats = features.float().contiguous()
    sq = feats.pow(2).sum(dim=1)
    if cells is None:
        cells = min(k, max(64, int(2 * math.sqrt(n)))) if n * k >= PRUNE_MIN_WORK else 0
    plain_steps = k if cells <= 0 or cells >= k else cells
    min_d2 = torch.full((n,), float("inf"), dtype=feats.dtype, device=feats.device)
    owner = torch.zeros(n, dtype=torch.long, device=feats.device)  # index (in chosen) of the nearest centre
    chosen = torch.empty(k, dtype=torch.long, device=feats.device)
    current = int(first)
    for i in range(plain_steps):
        chosen[i] = current
        new = _update(min_d2, feats, sq, feats[current], sq[current])
        if plain_steps < k:
            owner[new < min_d2] = i
        min_d2 = new
        min_d2[current] = 0.0  # rounding must never make a chosen point look uncovered
        owner[current] = i
        current = int(torch.argmax(min_d2))
    if plain_steps == k:
        return chosen, float(min_d2.max().sqrt())
    return _pruned_kcenter(feats, sq, min_d2, owner, chosen, plain_steps, current)


def _pruned_kcenter(feats: torch.Tensor, sq: torch.Tensor, min_d2: torch.Tensor, owner: torch.Tensor,
                    chosen: torch.Tensor, n_cells: int, current: int) -> tuple[torch.Tensor, float]:
    """Continue greedy k-center from ``n_cells`` chosen centres, updating only the cells a new centre can reach.

    The loop runs on one thread: its tensors are a few thousand rows, where extra threads only
    add synchronisation (measured 5-20x slower gathers with 2 threads on a busy 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pruned_loop(feats, sq, min_d2, owner, chosen, n_cells, current)
    finally:
        torch.set_num_threads(threads)


def _pruned_loop(feats: torch.Tensor, sq: torch.Tensor, min_d2: torch.Tensor, owner: torch.Tensor,
                 chosen: torch.Tensor, n_cells: int, current: int) -> tuple[torch.Tensor, float]:
    k = chosen.shape[0]
    order = torch.argsort(owner, stable=True)  # rows sorted by cell: each cell is one slice
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    feats_s, sq_s, gap = feats[order], sq[order], min_d2[order].clone()
    cell_of = owner[order]
    counts = torch.bincount(cell_of, minlength=n_cells)
    starts = torch.cumsum(counts, 0) - counts
    centres = feats[chosen[:n_cells]]
    centres_sq = sq[chosen[:n_cells]]
    cell_gap = torch.zeros(n_cells, dtype=gap.dtype).scatter_reduce_(0, cell_of, gap, "amax", include_self=False)
    cell_radius = cell_gap.sqrt()  # fixed: distances to the cell centre are the gaps at this point
    slack = 1e-4 * float(cell_radius.max()) + 1e-6  # margin for rounding in the bound
    for i in range(n_cells, k):
        chosen[i] = current
        row = int(position[current])
        x, x_sq = feats_s[row], sq_s[row]
        to_centres = torch.addmv(centres_sq, centres, x, alpha=-2.0).add_(x_sq).clamp_min_(0.0).sqrt_()
        active = (to_centres - cell_radius) < cell_gap.sqrt().add_(slack)
        active[cell_of[row]] = True
        act = active.nonzero().squeeze(1)
        if act.numel() * 2 > n_cells:  # most cells reachable: one pass over all rows
            gap = _update(gap, feats_s, sq_s, x, x_sq)
            gap[row] = 0.0
            cell_gap = torch.zeros_like(cell_gap).scatter_reduce_(0, cell_of, gap, "amax", include_self=False)
        else:
            lengths = counts[act]
            total = int(lengths.sum())
            offsets = torch.repeat_interleave(starts[act] - (torch.cumsum(lengths, 0) - lengths), lengths,
                                              output_size=total)
            rows = torch.arange(total, device=feats.device).add_(offsets)
            new = _update(gap.index_select(0, rows), feats_s.index_select(0, rows), sq_s.index_select(0, rows),
                          x, x_sq)
            gap.index_copy_(0, rows, new)
            gap[row] = 0.0
            part = torch.zeros_like(cell_gap).scatter_reduce_(
                0, cell_of.index_select(0, rows), gap.index_select(0, rows), "amax", include_self=False)
            cell_gap[act] = part[act]
        best_cell = int(torch.argmax(cell_gap))
        start = int(starts[best_cell])
        current = int(order[start + int(torch.argmax(gap[start : start + int(counts[best_cell])]))])
    return chosen, float(gap.max().sqrt())


def random_projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor | None:
    """Fixed Gaussian projection ``[dim_in, dim_out]`` (N(0, 1/dim_out)); None (select in the feature
    space) unless it at least halves the dimension: the projection's distance distortion (about
    ``1/sqrt(dim_out)`` relative) depends on ``dim_out`` alone, so a projection that saves little work
    (e.g. Lite0's 152 dims to 128: 16 %) would only blur the selection."""
    if dim_out <= 0 or 2 * dim_out > dim_in:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim_in, dim_out, generator=gen) / math.sqrt(dim_out)


class StreamingCoreset:
    """Chunk-wise candidates, then one global greedy k-center pass (module docstring).

    ``add`` rows ``[n, D]`` as they come; ``finish`` returns the bank ``[ceil(ratio·N), D]`` float32.
    ``oversample``: candidates kept per chunk as a multiple of its quota (>= 1).
    ``exact_max_bytes``: memory the exact single pass over all patches may hold (0 = stream from the
    second chunk on); ``exact`` says after ``finish`` whether the bank is the single pass's.
    """

    def __init__(self, ratio: float, chunk: int, projection: torch.Tensor | None, seed: int = 0,
                 oversample: float = 2.0, exact_max_bytes: float = 0.0) -> None:
        self.ratio = ratio
        self.exact_max_bytes = float(exact_max_bytes)
        self.exact = True  # every chunk so far is kept whole (module docstring: "exact when it fits")
        self.whole: list[torch.Tensor] = []  # those chunks
        self.chunk = chunk
        self.projection = projection
        self.oversample = max(1.0, float(oversample))
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.n_seen = 0
        self.n_chunks = 0
        self.chunk_rows: list[int] = []  # rows of each reduced chunk
        self.greedy_ordered: list[bool] = []  # whether each chunk's candidates are in greedy order
        self.kept: list[torch.Tensor] = []  # candidate rows [c_i, D]
        self.kept_proj: list[torch.Tensor] = []  # their projections [c_i, p]
        self.radii: list[float] = []  # each chunk's candidate covering radius
        self.radius = 0.0  # the final bank's covering radius over the candidates (projected units)
        self.oversample_used = self.oversample

    def _project(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.projection is None else rows @ self.projection.to(rows.device)

    def add(self, rows: torch.Tensor) -> None:
        """Queue rows ``[n, D]``; every full chunk of ``chunk`` rows is reduced to candidates at once."""
        self.pending.append(rows.detach().float())
        self.n_pending += rows.shape[0]
        while self.n_pending >= self.chunk:
            block = torch.cat(self.pending)
            self.pending = [block[self.chunk :]] if block.shape[0] > self.chunk else []
            self.n_pending = block.shape[0] - self.chunk
            self._take_chunk(block[: self.chunk])

    def _take_chunk(self, block: torch.Tensor) -> None:
        self.n_chunks += 1
        if not self.exact:
            self._reduce(block)
            return
        self.whole.append(block.clone())
        if len(self.whole) == 1 or self._exact_fits(sum(len(b) for b in self.whole), block.shape[1]):
            return  # one chunk is always kept whole: the data may end with it
        self.exact = False
        whole, self.whole = self.whole, []
        for kept in whole:
            self._reduce(kept)

    def _exact_fits(self, rows: int, dim: int) -> bool:
        """Whether ``rows`` patches of ``dim`` features fit the exact pass's memory and work limits."""
        proj_dim = dim if self.projection is None else self.projection.shape[1]
        nbytes = 4.0 * rows * (dim + proj_dim + 2)
        return nbytes <= self.exact_max_bytes and rows * coreset_size(rows, self.ratio) <= GLOBAL_PASS_MAX_WORK

    def _chunk_rows_cumulative(self) -> list[int]:
        """Patches seen after each reduced chunk (N_1..i), in order."""
        out, total = [], 0
        for n in self.chunk_rows:
            total += n
            out.append(total)
        return out

    def _reduce(self, block: torch.Tensor) -> None:
        self.chunk_rows.append(int(block.shape[0]))
        before = coreset_size(self.n_seen, self.ratio)
        self.n_seen += block.shape[0]
        quota = coreset_size(self.n_seen, self.ratio) - before
        if quota == 0:
            return
        keep = min(block.shape[0], math.ceil(self.oversample * quota))
        proj = self._project(block)
        self.greedy_ordered.append(keep < block.shape[0])
        if keep == block.shape[0]:
            self.kept.append(block.clone())
            self.kept_proj.append(proj.clone() if proj is not block else proj)
            self.radii.append(0.0)
            return
        first = int(torch.randint(block.shape[0], (1,), generator=self.generator))
        idx, radius = greedy_kcenter(proj, keep, first)
        self.kept.append(block[idx].clone())
        self.kept_proj.append(proj[idx].clone())
        self.radii.append(radius)

    def finish(self) -> torch.Tensor:
        """Reduce what is pending, run the global pass and return the bank ``[M, D]``."""
        if self.n_pending:
            block = torch.cat(self.pending)
            self.pending, self.n_pending = [], 0
            self._take_chunk(block)
        if self.exact and self.whole:  # every patch kept: the paper's coreset of all of them
            block = self.whole[0] if len(self.whole) == 1 else torch.cat(self.whole)
            self.whole = []
            self.n_seen = block.shape[0]
            candidates, candidates_proj = block, self._project(block)
        else:
            total = coreset_size(self.n_seen, self.ratio)
            if sum(len(c) for c in self.kept) * total > GLOBAL_PASS_MAX_WORK:  # see the module docstring
                self.oversample_used = max(1.0, min(self.oversample, GLOBAL_PASS_MAX_WORK / total**2))
                shares = [coreset_size(n, self.ratio) for n in self._chunk_rows_cumulative()]
                quotas = [b - a for a, b in zip([0, *shares[:-1]], shares)]
                quotas = [q for q in quotas if q > 0]
                keep = [min(len(c), math.ceil(self.oversample_used * q)) for c, q in zip(self.kept, quotas)]
                for i, n in enumerate(keep):
                    if n == len(self.kept[i]):
                        continue
                    if self.greedy_ordered[i]:  # a prefix of greedy order = greedy with the smaller quota
                        idx = torch.arange(n)
                    else:  # the chunk was kept whole: choose its n rows now
                        first = int(torch.randint(len(self.kept[i]), (1,), generator=self.generator))
                        idx, _ = greedy_kcenter(self.kept_proj[i], n, first)
                    self.kept[i], self.kept_proj[i] = self.kept[i][idx], self.kept_proj[i][idx]
            candidates, candidates_proj = torch.cat(self.kept), torch.cat(self.kept_proj)
            self.kept, self.kept_proj = [], []
        total = coreset_size(self.n_seen, self.ratio)
        if total >= candidates.shape[0]:
            self.radius = 0.0
            return candidates
        first = int(torch.randint(candidates.shape[0], (1,), generator=self.generator))
        idx, self.radius = greedy_kcenter(candidates_proj, total, first)
        if not self.radii:
            self.radii.append(self.radius)
        return candidates[idx]


def batch_images(batch: Any) -> torch.Tensor:
    """The ``image`` tensor of a batch dict (or the batch itself when it is a tensor)."""
    return batch["image"] if isinstance(batch, dict) else batch


@ANOMALY_METHODS.register("patchcore")
class PatchCoreMethod(AnomalyMethod):
    """Fits a :class:`PatchCore` model: one pass over the normal images, no gradients."""

    memory_bank: ClassVar[bool] = True
    default_train: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 32, "drop_last": False}
    model: PatchCore

    @torch.no_grad()
    def fit(self, loader: Iterable[Any]) -> dict[str, float]:
        """Build the memory bank from every batch of ``loader`` (normal images ``[B, C, H, W]`` in [0, 1]).

        Returns ``memory_bank_size`` (M), ``n_images``, ``n_patches``, ``n_chunks``, ``coreset_exact``
        (True: one greedy pass over all patches, the paper's coreset),
        ``coverage_radius`` (the bank's covering radius of the candidates, plus the largest chunk
        radius when there was more than one chunk: an upper bound on the distance of any training
        patch to the bank, projected feature units) and ``fit_seconds``.
        """
        start = time.perf_counter()
        model, cfg = self.model, self.model.config
        model.eval()
        device = model.memory_bank.device
        projection = random_projection(model.embedding_dim, cfg.projection_dim, cfg.seed)
        coreset = StreamingCoreset(cfg.coreset_ratio, cfg.coreset_chunk, projection, cfg.seed, cfg.coreset_oversample,
                                   exact_max_bytes=cfg.coreset_exact_max_mb * 2**20)
        n_images = 0
        for batch in loader:
            images = batch_images(batch).to(device)
            model.check_input(images)
            coreset.add(flatten_patches(model.embed(images)))
            n_images += images.shape[0]
        if n_images == 0:
            raise DataError("PatchCore fit got no images: the training loader is empty; check the normal image folder")
        model.set_memory_bank(coreset.finish())
        chunk_radius = max(coreset.radii) if coreset.n_chunks > 1 and coreset.radii else 0.0
        return {
            "memory_bank_size": int(model.memory_bank.shape[0]),
            "n_images": n_images,
            "n_patches": coreset.n_seen,
            "n_chunks": coreset.n_chunks,
            "coreset_oversample_used": coreset.oversample_used,
            "coreset_exact": coreset.exact,
            "coverage_radius": coreset.radius + chunk_radius,
            "fit_seconds": time.perf_counter() - start,
        }
