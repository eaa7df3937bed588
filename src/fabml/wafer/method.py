"""BYOL (Grill et al., 2020) for wafer maps: two augmented views, an online network that predicts
the target network's projection of the other view, and a target that is an EMA of the online one.

Loss (per map, ``sg`` = stop-gradient, ``l(p, z) = 2 - 2 cos(p, z)``)::

    loss = ( l(p1, sg(z2')) + l(p2, sg(z1')) ) / 2        in [0, 4]

the mean of the two symmetric terms, so 0 means perfect agreement and 2 means orthogonal. The
standard sum (in [0, 8]) differs by a constant factor, which AdamW's updates do not see.

Outline shortcut: a map's wafer outline and die-grid size identify it on their own, and a
published SimCLR run on WM-811K stalled on exactly that. The default input is therefore the
failed-die channel only (``outline_channel=False``); the random resized crop changes the apparent
die pitch, die noise and the small rotation blur the die grid, and the optional radial channel
gives position (centre vs edge) without the outline.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fabml.data.wafer_dataset import select_channels
from fabml.engine.method import Method
from fabml.engine.schedules import cosine_momentum
from fabml.errors import ConfigError, DataError
from fabml.wafer.augment import AugmentConfig, WaferAugment
from fabml.wafer.model import EncoderConfig, MLPHead, WaferEncoder


@dataclass
class BYOLConfig:
    """BYOL settings (YAML section ``byol``).

    proj_hidden / proj_dim: projector encoder_dim -> proj_hidden -> proj_dim (seed: 1024, 256).
    pred_hidden: predictor proj_dim -> pred_hidden -> proj_dim (seed: 1024).
    tau_start / tau_end: EMA momentum of the target, cosine schedule over all steps (seed: 0.996 -> 0.999);
        "all steps" is the trainer's ``total_steps``, the same length its learning-rate schedule
        uses, so a run resumed with a changed ``train.epochs`` / ``max_steps`` moves both to the new length.
    collapse_std_threshold: warn when the mean per-dimension std of the L2-normalised encoder
        embeddings falls below ``collapse_std_threshold / sqrt(D)`` (embeddings spread over the
        sphere give about ``1 / sqrt(D)``; a collapsed encoder gives 0).
    collapse_cos_threshold: warn when the mean pairwise cosine similarity of the embeddings rises
        above this. Encoder outputs are average-pooled ReLU features (non-negative), so healthy
        values are well above 0; only values near 1 mean that all maps look alike.
    aux_features: "" (off, the seed's BYOL) or ``wu2015``: the hand-crafted features of Wu, Jang and Chen
        (2015) of every training map, standardised over the training maps, become a second, label-free
        target. A linear head on the encoder output of each view regresses them (:data:`AUX_FEATURES`).
    aux_weight: ``loss = byol + aux_weight * aux``; ``aux`` is the mean squared error per feature, averaged
        over the two views (about 1 for a head that predicts the mean, 0 for an exact fit).
    """

    proj_hidden: int = 1024
    proj_dim: int = 256
    pred_hidden: int = 1024
    tau_start: float = 0.996
    tau_end: float = 0.999
    collapse_std_threshold: float = 0.1
    collapse_cos_threshold: float = 0.95
    aux_features: str = ""
    aux_weight: float = 1.0


#: feature sets a BYOL run can regress as its auxiliary target (``byol.aux_features``); only ones whose
#: dimension is known before they are fitted, because the head is built with the method
AUX_FEATURES = ("wu2015",)


class CollapseWarning(RuntimeWarning):
    """The embeddings' spread indicates representation collapse."""


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` per row, ``[B,D], [B,D] -> [B]``, computed in float32."""
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.float(), dim=1)
    return 2 - 2 * (p * z).sum(dim=1)


def collapse_stats(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-dimension std, mean pairwise cosine) of embeddings ``[B,D]``, ``B >= 2``.

    Rows are L2-normalised first; the std is the population std (divide by B) over the batch,
    averaged over dimensions; the cosine is averaged over the ``B (B - 1)`` ordered pairs ``i != j``.
    Identical rows give (0, 1).
    """
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise DataError(f"collapse statistics need embeddings [B,D] with B >= 2, got {tuple(emb.shape)}")
    z = F.normalize(emb.detach().float(), dim=1)
    b = z.shape[0]
    std = z.std(dim=0, correction=0).mean()
    total = z.sum(dim=0)
    cos = ((total * total).sum() - (z * z).sum()) / (b * (b - 1))
    return std, cos


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, tau: float) -> None:
    """EMA step ``target = tau * target + (1 - tau) * online`` for parameters; buffers are copied.

    ``online`` and ``target`` must have the same architecture (``target`` a deep copy of ``online``).
    """
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ConfigError("update_momentum: online and target networks differ in architecture")
    torch._foreach_lerp_(t_params, o_params, 1.0 - tau)
    for t_buf, o_buf in zip(target.buffers(), online.buffers()):
        if t_buf.shape == o_buf.shape:  # a size-dependent cache (the radial map) may differ; it is recomputed
            t_buf.copy_(o_buf)


class BYOLMethod(Method):
    """BYOL training of a :class:`WaferEncoder` on batches ``(x [B,2,S,S] float, index [B] int64)``.

    The target encoder and projector are deep copies of the online ones with ``requires_grad``
    False, updated only by :meth:`on_step_end`. They run in train mode like the online side (as
    in BYOL: the target's BatchNorm normalises with the batch statistics of the view it sees);
    their running statistics are copied from the online network at every EMA step, so they never
    drift. The views are passed through the networks one at a time, so no BatchNorm batch ever
    holds two views of the same map.
    """

    def __init__(
        self,
        encoder_cfg: EncoderConfig,
        byol_cfg: BYOLConfig,
        augment_cfg: AugmentConfig,
        outline_channel: bool = False,
        aux_dim: int = 0,
    ) -> None:
        super().__init__()
        want = 2 if outline_channel else 1
        if encoder_cfg.in_chans != want:
            raise ConfigError(
                f"model.in_chans={encoder_cfg.in_chans} does not match data.outline_channel={outline_channel} "
                f"(needs in_chans={want})"
            )
        if byol_cfg.aux_features and byol_cfg.aux_features not in AUX_FEATURES:
            raise ConfigError(f"byol.aux_features={byol_cfg.aux_features!r} is unknown; use one of "
                              f"{list(AUX_FEATURES)} or '' (off)")
        if byol_cfg.aux_features and aux_dim < 1:
            raise ConfigError(f"byol.aux_features={byol_cfg.aux_features!r} needs the feature count (aux_dim >= 1, "
                              f"got {aux_dim}); build the method with fabml.wafer.runs.build_method")
        if byol_cfg.aux_weight < 0:
            raise ConfigError(f"byol.aux_weight={byol_cfg.aux_weight} must be >= 0")
        if not 0 <= byol_cfg.tau_start <= byol_cfg.tau_end <= 1:
            raise ConfigError(
                f"byol.tau_start={byol_cfg.tau_start} and byol.tau_end={byol_cfg.tau_end} need 0 <= start <= end <= 1"
            )
        self.cfg = byol_cfg
        self.outline_channel = outline_channel
        self.augment = WaferAugment(augment_cfg)
        self.online_encoder = WaferEncoder(encoder_cfg)
        dim = self.online_encoder.out_dim
        self.projector = MLPHead(dim, byol_cfg.proj_hidden, byol_cfg.proj_dim)
        self.predictor = MLPHead(byol_cfg.proj_dim, byol_cfg.pred_hidden, byol_cfg.proj_dim)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        # the auxiliary target: a linear read-out of the encoder output (so the features sit linearly in the
        # embedding that kNN and the index compare), and the targets of the training maps by dataset index
        self.aux_head = nn.Linear(dim, aux_dim) if byol_cfg.aux_features else None
        self.aux_targets: torch.Tensor | None = None
        self.tau = byol_cfg.tau_start
        self._reset_stats()

    def set_aux_targets(self, targets: torch.Tensor) -> None:
        """The auxiliary targets ``[N, aux_dim]`` float of the training maps, row i for dataset index i (not saved
        in checkpoints: the pipeline recomputes them from the data)."""
        if self.aux_head is None:
            raise ConfigError("auxiliary targets were given but byol.aux_features is off")
        want = self.aux_head.out_features
        if targets.ndim != 2 or targets.shape[1] != want or not torch.isfinite(targets).all():
            raise DataError(f"auxiliary targets must be finite [N, {want}], got {tuple(targets.shape)}")
        self.aux_targets = targets.float()

    @property
    def encoder(self) -> WaferEncoder:
        """The online encoder: the network whose embeddings are used after training."""
        return self.online_encoder

    def _reset_stats(self) -> None:
        self._std_sum: torch.Tensor | float = 0.0
        self._cos_sum: torch.Tensor | float = 0.0
        self._n_stats = 0

    def _views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views, channel-selected, in ``x``'s memory format."""
        if x.ndim != 4 or x.shape[1] != 2:
            raise DataError(f"BYOL expects batches of 2-channel maps [B,2,S,S] (fail, wafer), got {tuple(x.shape)}")
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        v1 = select_channels(self.augment(x), self.outline_channel).contiguous(memory_format=fmt)
        v2 = select_channels(self.augment(x), self.outline_channel).contiguous(memory_format=fmt)
        return v1, v2

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One BYOL step; returns ``loss`` (BYOL's, in [0, 4], plus ``aux_weight * aux_loss`` when the auxiliary
        target is on), ``emb_std``, ``emb_cos`` and ``tau`` (and ``byol_loss``, ``aux_loss`` with the target).

        ``batch`` is ``x`` or ``(x, index)``; the auxiliary target needs the dataset ``index`` [B] of each map."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        v1, v2 = self._views(x)
        y1, y2 = self.online_encoder(v1), self.online_encoder(v2)
        p1, p2 = self.predictor(self.projector(y1)), self.predictor(self.projector(y2))
        with torch.no_grad():
            z1 = self.target_projector(self.target_encoder(v1))
            z2 = self.target_projector(self.target_encoder(v2))
        loss = 0.5 * (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
        std, cos = collapse_stats(y1)
        self._std_sum = self._std_sum + std
        self._cos_sum = self._cos_sum + cos
        self._n_stats += 1
        out = {"emb_std": std, "emb_cos": cos, "tau": torch.tensor(self.tau, device=loss.device)}
        if self.aux_head is not None:
            aux = self._aux_loss(batch, y1, y2)
            out.update(byol_loss=loss.detach(), aux_loss=aux.detach())
            loss = loss + self.cfg.aux_weight * aux
        return {"loss": loss, **out}

    def _aux_loss(self, batch: Any, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Mean squared error per feature of the linear head's read-out of both views against the targets."""
        if self.aux_targets is None or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError("byol.aux_features needs the targets of the training maps (set_aux_targets) and "
                            "batches (x, index)")
        target = self.aux_targets[batch[1].long().cpu()].to(y1.device)
        assert self.aux_head is not None
        return 0.5 * (F.mse_loss(self.aux_head(y1).float(), target) + F.mse_loss(self.aux_head(y2).float(), target))

    def on_fit_start(self, step: int, total_steps: int) -> None:
        """``tau`` for the step count a (resumed) run starts from, over the run's current length."""
        self.tau = cosine_momentum(step, total_steps, self.cfg.tau_start, self.cfg.tau_end)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target with ``tau = cosine_momentum(step, total_steps, tau_start, tau_end)``."""
        self.tau = cosine_momentum(step, total_steps, self.cfg.tau_start, self.cfg.tau_end)
        update_momentum(self.online_encoder, self.target_encoder, self.tau)
        update_momentum(self.projector, self.target_projector, self.tau)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Mean collapse statistics of the epoch's steps; warns (:class:`CollapseWarning`) on collapse."""
        if self._n_stats == 0:
            return {}
        std = float(self._std_sum) / self._n_stats
        cos = float(self._cos_sum) / self._n_stats
        self._reset_stats()
        dim = self.online_encoder.out_dim
        std_floor = self.cfg.collapse_std_threshold / math.sqrt(dim)
        if std < std_floor or cos > self.cfg.collapse_cos_threshold:
            warnings.warn(
                f"possible representation collapse at epoch {epoch}: embedding std {std:.4f} "
                f"(healthy ~{1 / math.sqrt(dim):.4f}, warn below {std_floor:.4f}), mean pairwise cosine {cos:.3f} "
                f"(warn above {self.cfg.collapse_cos_threshold}); try a lower learning rate, a larger batch "
                "or stronger augmentations (augment.*)",
                CollapseWarning,
                stacklevel=2,
            )
        return {"emb_std": std, "emb_cos": cos}

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Online-encoder embeddings of maps ``x [B,2,S,S] -> [B,D]`` float32 (eval mode, no grad, not normalised)."""
        if x.ndim != 4 or x.shape[1] != 2:
            raise DataError(f"embed expects 2-channel maps [B,2,S,S] (fail, wafer), got {tuple(x.shape)}")
        was_training = self.online_encoder.training
        self.online_encoder.eval()
        try:
            return self.online_encoder(select_channels(x.float(), self.outline_channel)).float()
        finally:
            self.online_encoder.train(was_training)
