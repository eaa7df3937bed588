"""The surrogate's losses and the KL-annealing schedule."""

from __future__ import annotations

import math

import pytest
import torch

from fabml.engine.schedules import kl_beta
from fabml.errors import ConfigError
from fabml.metrics.regression import relative_l2
from fabml.surrogate.models import kl_divergence, latent_regulariser, reconstruction_loss, relative_l2_loss


def test_kl_of_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(4, 32), torch.zeros(4, 32)).item() == 0.0
    assert kl_divergence(torch.zeros(4, 3, 8), torch.zeros(4, 3, 8)).item() == 0.0


def test_kl_matches_hand_computed_value():
    # one case, two dims: mu = (1, 0), var = (1, e): 0.5 * [(1 + 1 - 1 - 0) + (0 + e - 1 - 1)] = 0.5 * (e - 1)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, 1.0]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * (math.e - 1), rel=1e-6)
    # summed over dims, averaged over the batch
    mu2 = torch.cat([mu, torch.zeros(1, 2)])
    lv2 = torch.cat([logvar, torch.zeros(1, 2)])
    assert kl_divergence(mu2, lv2).item() == pytest.approx(0.25 * (math.e - 1), rel=1e-6)


def test_kl_is_finite_for_extreme_logvar():
    kl = kl_divergence(torch.zeros(2, 4), torch.tensor([[-1e4, 1e4, 0.0, 0.0]] * 2))
    assert math.isfinite(kl.item())
    kl16 = kl_divergence(torch.zeros(2, 4, dtype=torch.float16), torch.full((2, 4), 15.0, dtype=torch.float16))
    assert math.isfinite(kl16.item()) and kl16.dtype == torch.float32


@pytest.mark.parametrize(
    "kind,expected",
    [("mse", (0.25 + 4.0) / 2), ("mae", (0.5 + 2.0) / 2), ("smoothl1", (0.125 + 1.5) / 2), ("huber", (0.125 + 1.5) / 2),
     ("MSE", (0.25 + 4.0) / 2)],
)
def test_reconstruction_loss_kinds(kind, expected):
    pred = torch.tensor([0.5, 2.0])
    target = torch.zeros(2)
    assert reconstruction_loss(pred, target, kind).item() == pytest.approx(expected)


def test_reconstruction_loss_unknown_kind_names_setting():
    with pytest.raises(ConfigError, match="vae.recon_loss='l3'"):
        reconstruction_loss(torch.zeros(2), torch.zeros(2), "l3")
    with pytest.raises(ConfigError, match="e2e.loss='l3'"):
        reconstruction_loss(torch.zeros(2), torch.zeros(2), "l3", setting="e2e.loss")


def test_latent_regulariser_is_mean_square_of_all_latents():
    z = torch.full((2, 4), 2.0)  # 8 entries of 4
    xs = torch.zeros(2, 3, 4)  # 24 entries of 0
    assert latent_regulariser(z, xs).item() == pytest.approx(8 * 4.0 / 32)
    assert latent_regulariser(torch.zeros(2, 4), torch.zeros(2, 3, 4)).item() == 0.0


def test_kl_beta_schedule_points():
    b0 = 1 / 1000
    assert kl_beta(0.0) == pytest.approx(b0)
    assert kl_beta(0.3) == pytest.approx(b0)
    assert kl_beta(0.55) == pytest.approx(b0 + (1 - b0) * 0.5)
    assert kl_beta(0.8) == pytest.approx(1.0)
    assert kl_beta(1.0) == pytest.approx(1.0)
    assert kl_beta(0.29) == pytest.approx(b0) and kl_beta(0.5) < kl_beta(0.6) < 1.0


def test_kl_beta_settings():
    assert kl_beta(0.1, init_beta_divisor=10.0) == pytest.approx(0.1)
    assert kl_beta(0.5, start=0.5, end=0.5) == 1.0
    assert kl_beta(-1.0) == pytest.approx(1e-3) and kl_beta(2.0) == 1.0
    with pytest.raises(ConfigError, match="init_beta_divisor"):
        kl_beta(0.5, init_beta_divisor=0.0)
    with pytest.raises(ConfigError, match="anneal"):
        kl_beta(0.5, start=0.9, end=0.2)


def test_relative_l2_loss_is_the_evaluation_metric_in_original_units():
    # one case, one variable, two nodes; scale 2, centre 1: target (0, 1) -> (1, 3), pred (0.5, 1) -> (2, 3)
    scale, centre = torch.tensor([2.0]), torch.tensor([1.0])
    target = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    pred = torch.tensor([0.5, 1.0]).view(1, 1, 1, 2)
    assert relative_l2_loss(pred, target, scale, centre).item() == pytest.approx(1 / math.sqrt(10))
    # several cases and variables: the mean over cases of fabml.metrics.regression.relative_l2
    g = torch.Generator().manual_seed(0)
    scale, centre = torch.tensor([0.5, 3.0]), torch.tensor([2.0, -1.0])
    target, pred = torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    original = [(f * scale.view(1, 2, 1, 1) + centre.view(1, 2, 1, 1)).numpy() for f in (pred, target)]
    assert relative_l2_loss(pred, target, scale, centre).item() == pytest.approx(relative_l2(*original).mean(), rel=1e-5)


def test_relative_l2_loss_has_finite_gradients_at_zero_error_and_zero_field():
    pred = torch.zeros(2, 1, 1, 3, requires_grad=True)
    loss = relative_l2_loss(pred, torch.zeros(2, 1, 1, 3), torch.ones(1), torch.zeros(1))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-5) and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="one scale and centre per variable"):
        relative_l2_loss(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4), torch.ones(1), torch.zeros(1))
