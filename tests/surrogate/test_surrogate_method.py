"""SurrogateMethod on random tensors: each stage's loss terms, what trains, the KL weight by epoch, eval mode."""

from __future__ import annotations

import pytest
import torch

from fabml.engine.schedules import kl_beta
from fabml.engine.train_config import StageConfig
from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import SurrogateConfig
from fabml.surrogate.method import SurrogateMethod, build_method
from fabml.surrogate.runs import SurrogateShapes, build_models

pytestmark = pytest.mark.usefixtures("one_thread")

B, T, M, P = 4, 8, 32, 5


def _parts(cfg: SurrogateConfig | None = None) -> tuple[torch.nn.Module, torch.nn.Module, SurrogateConfig]:
    cfg = cfg or SurrogateConfig()
    cfg.vae.filters = [16, 8]
    cfg.conditioner.hidden, cfg.conditioner.blocks = 16, 1
    torch.manual_seed(0)
    vae, cond = build_models(cfg, SurrogateShapes(12, T, M, 1, "params", [P]))
    return vae, cond, cfg


def _batch(stages: int = 2, latents: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"field": 0.5 * torch.randn(B, 1, T, M, generator=g), "inputs": torch.randn(B, P, generator=g),
             "index": torch.arange(B)}
    if latents:
        batch = {"inputs": batch["inputs"], "z": torch.randn(B, 32, generator=g),
                 "xs": torch.randn(B, stages, 8, generator=g), "index": batch["index"]}
    return batch


def _grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_vae_stage_logs_its_terms_and_trains_only_the_vae() -> None:
    vae, cond, cfg = _parts()
    method = build_method(vae, cond, cfg, "vae")
    out = method.training_step(_batch())
    assert set(out) == {"loss", "recon", "kl", "beta"}
    expected = out["recon"] + cfg.vae.alpha * out["beta"] * out["kl"]
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-6)
    out["loss"].backward()
    assert any(_grads(vae)) and not any(_grads(cond))
    names = [n for g in method.param_groups() for n in [g["name"]]]
    assert set(names) <= {"vae", "vae_no_decay"}
    assert all(not p.requires_grad for p in cond.parameters())


@pytest.mark.parametrize("epoch, epochs", [(0, 10), (3, 10), (5, 10), (8, 10), (9, 10)])
def test_kl_weight_follows_the_seed_annealing_over_the_vae_stage(epoch: int, epochs: int) -> None:
    vae, cond, cfg = _parts()
    method = build_method(vae, cond, cfg, "all")
    method.set_stage(StageConfig(name="vae", epochs=epochs))
    method.on_epoch_start(epoch)
    assert method.beta() == pytest.approx(kl_beta(epoch / epochs, cfg.vae.init_beta_divisor))
    assert float(method.training_step(_batch())["beta"]) == pytest.approx(method.beta())


def test_conditioner_stage_learns_the_frozen_encoder_means_or_the_saved_latents() -> None:
    vae, cond, cfg = _parts()
    method = build_method(vae, cond, cfg, "conditioner")
    batch = _batch()
    method.train()
    method.training_step(batch)["loss"].backward()
    assert any(_grads(cond)) and not any(_grads(vae))
    method.eval()  # no dropout: the reference below sees the same network
    out = method.training_step(batch)
    with torch.no_grad():
        enc = vae.encode(batch["field"])
        z, xs = cond(batch["inputs"])
    want = torch.nn.functional.mse_loss(z, enc.mu) + torch.nn.functional.mse_loss(xs, enc.xs_mu)
    assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-5)

    saved = _batch(stages=vae.stages, latents=True)  # the standalone mode's LatentDataset batch: no field
    out = method.training_step(saved)
    with torch.no_grad():
        z, xs = cond(saved["inputs"])
    want = torch.nn.functional.mse_loss(z, saved["z"]) + torch.nn.functional.mse_loss(xs, saved["xs"])
    assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-5)


def test_e2e_stage_trains_the_conditioner_through_the_frozen_decoder() -> None:
    vae, cond, cfg = _parts()
    method = build_method(vae, cond, cfg, "e2e")
    method.train()
    assert method.conditioner.training and not method.vae.training  # the VAE stays in eval mode
    out = method.training_step(_batch())
    assert set(out) == {"loss", "field_loss", "latent_reg"}
    want = out["field_loss"] + cfg.e2e.latent_reg_weight * out["latent_reg"]
    assert float(out["loss"].detach()) == pytest.approx(float(want), rel=1e-6)
    out["loss"].backward()
    assert any(_grads(cond)) and not any(_grads(vae))
    with pytest.raises(DataError, match="fields"):
        method.training_step(_batch(stages=vae.stages, latents=True))


def test_e2e_rel_l2_loss_is_the_relative_error_in_original_units() -> None:
    vae, cond, cfg = _parts()
    cfg.e2e.loss = "rel_l2"
    with pytest.raises(ConfigError, match="needs the run's field scaler"):
        build_method(vae, cond, cfg, "e2e")
    build_method(vae, cond, cfg, "vae")  # the VAE stage never uses the e2e loss
    method = build_method(vae, cond, cfg, "e2e", field_scale=([2.0], [5.0]))
    assert "field_centre" not in method.state_dict()  # checkpoints keep their keys
    batch = _batch()
    method.eval()
    out = method.stage_losses(batch, train=False)
    with torch.no_grad():
        pred = vae.decode(*cond(batch["inputs"]))
    want = ((pred - batch["field"]) * 2).flatten(1).norm(dim=1) / (batch["field"] * 2 + 5).flatten(1).norm(dim=1)
    assert float(out["field_loss"]) == pytest.approx(float(want.mean()), rel=1e-5)
    cfg.e2e.loss = "l3"
    with pytest.raises(ConfigError, match="rel_l2"):
        build_method(vae, cond, cfg, "e2e")


def test_e2e_with_a_decoder_lr_scale_trains_the_decoder_at_that_multiple_and_never_the_encoder() -> None:
    vae, cond, cfg = _parts()
    cfg.e2e.decoder_lr_scale = 0.1
    method = build_method(vae, cond, cfg, "e2e")
    groups = {g["name"]: g for g in method.param_groups()}
    assert {"conditioner", "decoder"} <= set(groups) and groups["decoder"]["lr_scale"] == 0.1
    assert groups["conditioner"]["lr_scale"] == 1.0
    decoder_ids = {id(p) for p in vae.decoder.parameters()}
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert decoder_ids <= grouped and not any(id(p) in grouped for p in vae.encoder.parameters())
    method.train()
    method.training_step(_batch())["loss"].backward()
    assert any(_grads(vae.decoder)) and not any(_grads(vae.encoder)) and any(_grads(cond))
    with pytest.raises(ConfigError, match="needs --mode e2e"):
        build_method(*_parts()[:2], cfg, "all")
    cfg.e2e.decoder_lr_scale = -1.0
    with pytest.raises(ConfigError, match="must be >= 0"):
        build_method(*_parts()[:2], cfg, "e2e")
    cfg.e2e.decoder_lr_scale = 0.1
    assert not build_method(*_parts()[:2], cfg, "conditioner").tunes_decoder()  # other modes: unchanged


def test_mode_all_puts_both_modules_in_the_optimizer_with_their_weight_decay() -> None:
    vae, cond, cfg = _parts()
    cfg.train_vae.weight_decay, cfg.train_conditioner.weight_decay = 0.5, 0.25
    method = build_method(vae, cond, cfg, "all")
    groups = {g["name"]: g for g in method.param_groups()}
    assert groups["vae"]["weight_decay"] == 0.5 and groups["conditioner"]["weight_decay"] == 0.25
    assert groups["vae_no_decay"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(method.parameters()))
    for name, vae_training in (("vae", True), ("conditioner", False), ("e2e", False)):
        method.set_stage(StageConfig(name=name, epochs=2))
        method.train()
        assert method.stage == name and method.vae.training is vae_training


def test_unknown_stage_and_mode_are_config_errors() -> None:
    vae, cond, cfg = _parts()
    with pytest.raises(ConfigError, match="--mode 'fit'"):
        build_method(vae, cond, cfg, "fit")
    method = SurrogateMethod(vae, cond, cfg, stage="vae", train_all=True)
    with pytest.raises(ConfigError, match="'warmup'"):
        method.set_stage(StageConfig(name="warmup", epochs=1))
