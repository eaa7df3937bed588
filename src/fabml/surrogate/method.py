"""How the surrogate job trains: one method, three stages (``vae``, ``conditioner``, ``e2e``).

Batches (from :class:`fabml.data.simulation_dataset.SimulationDataset` / ``LatentDataset``)::

    field  [B, V, T, M]  the case's field, scaled per variable to [-r, r]
    inputs [B, P] (scaled parameters) or [B, C, S, S] (image in [0, 1])
    z [B, Z], xs [B, S, L]   (standalone conditioner mode only: the VAE's saved posterior means)

Stage losses (per-term values are logged beside ``loss``)::

    vae:          out = vae(field, sample=True)
                  loss = recon(out.recon, field) + alpha * beta(p) * (KL(mu, logvar) + KL(xs_mu, xs_logvar))
                  beta(p) = kl_beta(p, init_beta_divisor, anneal_start, anneal_end), p = epoch / E
                  (the seed's annealing: 1/divisor for the first 30% of the stage's E epochs,
                  linear to 1 at 80%, then 1)
    conditioner:  (z^, xs^) = conditioner(inputs);  (z, xs) = the frozen encoder's means of field
                  (or the batch's saved z / xs)
                  loss = MSE(z^, z) + MSE(xs^, xs)
    e2e:          (z^, xs^) = conditioner(inputs);  field^ = vae.decode(z^, xs^) (frozen unless
                  e2e.decoder_lr_scale > 0, then the decoder trains at that multiple of the rate)
                  loss = e2e_loss(field^, field) + e2e.latent_reg_weight * mean([z^, xs^]^2)
                  (e2e.loss=rel_l2: the relative L2 error per case in original units, through the
                  field scaler's inverse ``field_scale``)
                  (with ``data.symmetry`` set, each training case's image and field grid are first
                  moved by a random element of the symmetry group: :mod:`fabml.surrogate.symmetry`)

What trains: in a single-mode run (``train --mode vae|conditioner|e2e``) only that mode's part is
in the optimizer (``vae`` for vae, ``conditioner`` otherwise) and the other part has
``requires_grad=False``; in mode ``all`` the trainer's stages name the trainable part. Whenever the
stage is not ``vae`` the VAE is kept in eval mode (no dropout, no statistics updates), so the
decoder e2e trains through is exactly the trained one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fabml.engine.method import Method
from fabml.engine.param_groups import decay_groups
from fabml.engine.schedules import kl_beta
from fabml.engine.step_generator import StepGenerator
from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import E2E_LOSSES, SurrogateConfig
from fabml.surrogate.models.losses import kl_divergence, latent_regulariser, reconstruction_loss, relative_l2_loss
from fabml.surrogate.symmetry import augment_cases, motions

STAGES = ("vae", "conditioner", "e2e")
#: the trainable module of each stage (StageConfig.trainable / the single-mode optimizer)
STAGE_MODULE = {"vae": "vae", "conditioner": "conditioner", "e2e": "conditioner"}


class SurrogateMethod(Method):
    """Trains a :class:`~fabml.surrogate.models.hvae.HierarchicalVAE` (``vae``) and a latent
    conditioner (``conditioner``) in the stages of the module docstring.

    ``stage``: the stage of a single-mode run (the trainer's default stage is called ``train``);
    in mode ``all`` the trainer's :meth:`set_stage` switches it. ``train_all``: every parameter is in
    the optimizer (mode ``all``, the stages freeze); else only the stage's module is.
    ``weight_decay``: per-module weight decay for the optimizer groups (None = ``train.weight_decay``).
    ``field_scale``: ``(inverse_scale [V], centre [V])`` of the run's field scaler, which ``e2e.loss=rel_l2``
    needs to measure errors in original units (kept as non-persistent buffers: checkpoints are unchanged).
    """

    def __init__(self, vae: nn.Module, conditioner: nn.Module, cfg: SurrogateConfig, stage: str = "vae",
                 train_all: bool = False, weight_decay: dict[str, float] | None = None,
                 field_scale: tuple[Any, Any] | None = None) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"surrogate stage {stage!r} is unknown; choose one of: {', '.join(STAGES)}")
        self.vae = vae
        self.conditioner = conditioner
        self.cfg = cfg
        self.stage = stage
        self.stage_epochs = 1
        self.epoch = 0
        self.train_all = bool(train_all)
        self.weight_decay = dict(weight_decay or {})
        scale, centre = field_scale if field_scale is not None else ((), ())
        self.register_buffer("field_inverse_scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("field_centre", torch.as_tensor(centre, dtype=torch.float32), persistent=False)
        self.e2e_loss = str(cfg.e2e.loss).lower()
        if self.e2e_loss not in E2E_LOSSES:
            raise ConfigError(f"e2e.loss={cfg.e2e.loss!r} is unknown; use one of {list(E2E_LOSSES)}")
        if self.e2e_loss == "rel_l2" and field_scale is None and (train_all or stage == "e2e"):
            raise ConfigError("e2e.loss=rel_l2 measures errors in original units and needs the run's field scaler "
                              "(SurrogateMethod(field_scale=...)); use mse, mae, huber or smoothl1 without one")
        if cfg.data.symmetry != "none":  # only then: older checkpoints keep loading strictly
            self.rng = StepGenerator()  # which motion each case gets: seeded per step, so resume is exact
        self.decoder_lr_scale = float(cfg.e2e.decoder_lr_scale)
        if not self.decoder_lr_scale >= 0:
            raise ConfigError(f"e2e.decoder_lr_scale={cfg.e2e.decoder_lr_scale} must be >= 0 (0 keeps the decoder frozen)")
        if self.decoder_lr_scale > 0 and self.train_all:
            raise ConfigError("e2e.decoder_lr_scale > 0 needs --mode e2e (mode all's stages share one optimizer whose "
                              "per-module rates are fixed): train the modes one by one, or set it to 0")
        if not self.train_all:
            trained = STAGE_MODULE[stage]
            for name, module in (("vae", self.vae), ("conditioner", self.conditioner)):
                module.requires_grad_(name == trained)
            if self.tunes_decoder():
                self.vae.decoder.requires_grad_(True)

    # ------------------------------------------------------------------ trainer hooks
    def param_groups(self) -> list[dict[str, Any]]:
        """The trained modules (both in mode ``all``), each split into a decayed group and a no-decay group
        of biases and norm weights."""
        names = ("vae", "conditioner") if self.train_all else (STAGE_MODULE[self.stage],)
        groups: list[dict[str, Any]] = []
        for name in names:
            module = getattr(self, name)
            groups += decay_groups(((f"{name}.{n}", p) for n, p in module.named_parameters()), name=name,
                                   weight_decay=self.weight_decay.get(name))
        if self.tunes_decoder():
            groups += decay_groups(((f"vae.decoder.{n}", p) for n, p in self.vae.decoder.named_parameters()),
                                   lr_scale=self.decoder_lr_scale, name="decoder")
        return groups

    def tunes_decoder(self) -> bool:
        """Whether this single-mode e2e run fine-tunes the VAE's decoder (``e2e.decoder_lr_scale > 0``)."""
        return not self.train_all and self.stage == "e2e" and self.decoder_lr_scale > 0

    def set_stage(self, stage: Any) -> None:
        """Switch the loss to ``stage.name`` (``train`` = this run's single stage) and record its length."""
        name = str(stage.name)
        if name in STAGES:
            self.stage = name
        elif name != "train":
            raise ConfigError(f"train.stages: stage {name!r} is not a surrogate stage ({', '.join(STAGES)})")
        self.active_stage = self.stage
        self.stage_epochs = max(1, int(stage.epochs))
        self.train(self.training)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def train(self, mode: bool = True) -> "SurrogateMethod":
        """As ``nn.Module.train``, but the VAE stays in eval mode outside the ``vae`` stage."""
        super().train(mode)
        if self.stage != "vae":
            self.vae.eval()
        return self

    # ------------------------------------------------------------------ schedule
    def beta(self) -> float:
        """KL weight multiplier of the current epoch: the seed's annealing over the vae stage.

        The vae stage is the first stage of every run that has one, so its 0-based epoch ``e`` gives the
        progress ``e / E`` (the fraction of the stage's E epochs done when the epoch starts)."""
        progress = min(1.0, self.epoch / self.stage_epochs)
        v = self.cfg.vae
        return float(kl_beta(progress, v.init_beta_divisor, v.anneal_start, v.anneal_end))

    # ------------------------------------------------------------------ losses
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss of the active stage (module docstring); returns ``loss`` and its terms."""
        return self.stage_losses(batch, train=True)

    def stage_losses(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        """The active stage's loss terms. ``train=False`` (validation): the VAE uses its posterior means
        (no sampling) and the vae loss weighs the KL by ``alpha`` alone (beta = 1), so validation losses
        of different epochs compare."""
        if self.stage == "vae":
            return self._vae_losses(batch, train)
        if self.stage == "conditioner":
            return self._conditioner_losses(batch)
        return self._e2e_losses(batch, train)

    def _vae_losses(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        field = _field(batch)
        out = self.vae(field, sample=train)
        recon = reconstruction_loss(out.recon.float(), field.float(), self.cfg.vae.recon_loss)
        kl = kl_divergence(out.mu, out.logvar) + kl_divergence(out.xs_mu, out.xs_logvar)
        beta = self.beta() if train else 1.0
        loss = recon + float(self.cfg.vae.alpha) * beta * kl
        return {"loss": loss, "recon": recon.detach(), "kl": kl.detach(),
                "beta": torch.tensor(beta, device=loss.device)}

    def _targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The latents the conditioner learns: the batch's saved ``z``/``xs``, or the frozen encoder's means."""
        if "z" in batch and "xs" in batch:
            return batch["z"].float(), batch["xs"].float()
        with torch.no_grad():
            enc = self.vae.encode(_field(batch))
        return enc.mu.detach().float(), enc.xs_mu.detach().float()

    def _conditioner_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z_true, xs_true = self._targets(batch)
        z, xs = self.conditioner(batch["inputs"])
        z_mse = F.mse_loss(z.float(), z_true)
        xs_mse = F.mse_loss(xs.float(), xs_true)
        return {"loss": z_mse + xs_mse, "z_mse": z_mse.detach(), "xs_mse": xs_mse.detach()}

    def _e2e_losses(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        field, inputs = _field(batch), batch["inputs"]
        symmetry = self.cfg.data.symmetry
        if train and symmetry != "none":
            choice = torch.randint(len(motions(symmetry)), (field.shape[0],), generator=self.rng.next())
            inputs, field = augment_cases(inputs, field, choice, symmetry, self.cfg.data.grid_nodes)
        z, xs = self.conditioner(inputs)
        pred = self.vae.decode(z, xs)
        if self.e2e_loss == "rel_l2":
            field_loss = relative_l2_loss(pred.float(), field.float(), self.field_inverse_scale, self.field_centre)
        else:
            field_loss = reconstruction_loss(pred.float(), field.float(), self.e2e_loss, setting="e2e.loss")
        reg = latent_regulariser(z, xs)
        loss = field_loss + float(self.cfg.e2e.latent_reg_weight) * reg
        return {"loss": loss, "field_loss": field_loss.detach(), "latent_reg": reg.detach()}


def _field(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if "field" not in batch:
        raise DataError("this surrogate stage needs the cases' fields, but the batch has none "
                        "(the standalone conditioner mode's latent batches only train the conditioner stage)")
    return batch["field"]


def build_method(vae: nn.Module, conditioner: nn.Module, cfg: SurrogateConfig, mode: str,
                 field_scale: tuple[Any, Any] | None = None) -> SurrogateMethod:
    """The method for ``train --mode``: ``all`` puts both modules in the optimizer (the stages freeze) with
    each module's weight decay from its section (``train_vae`` / ``train_conditioner``); a single mode
    trains only its module with that mode's ``train_<mode>`` settings. ``field_scale``: see
    :class:`SurrogateMethod` (needed by ``e2e.loss=rel_l2``)."""
    if mode == "all":
        decay = {"vae": cfg.train_vae.weight_decay, "conditioner": cfg.train_conditioner.weight_decay}
        return SurrogateMethod(vae, conditioner, cfg, stage="vae", train_all=True, weight_decay=decay,
                               field_scale=field_scale)
    if mode not in STAGES:
        raise ConfigError(f"--mode {mode!r} is unknown; choose one of: vae, conditioner, e2e, all")
    return SurrogateMethod(vae, conditioner, cfg, stage=mode, field_scale=field_scale)
