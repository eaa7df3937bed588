"""BYOL method: loss, EMA target, collapse statistics and warnings, embedding, precision/layout."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fabml.engine.schedules import cosine_momentum
from fabml.errors import ConfigError, DataError
from fabml.wafer.augment import AugmentConfig
from fabml.wafer.method import BYOLConfig, BYOLMethod, CollapseWarning, byol_loss, collapse_stats, update_momentum
from fabml.wafer.model import EncoderConfig

S = 32
SMALL_HEADS = BYOLConfig(proj_hidden=64, proj_dim=32, pred_hidden=64)


def wafer_maps(n: int, seed: int = 0) -> torch.Tensor:
    """``[n,2,S,S]``: a disc wafer with a random blob of failed dies and, on odd maps, a scratch."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    wafer = (((ys - S / 2) ** 2 + (xs - S / 2) ** 2) <= (0.45 * S) ** 2).float()
    maps = []
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * S
        radius = (0.05 + 0.1 * torch.rand(1, generator=g)) * S
        fail = ((ys - cy) ** 2 + (xs - cx) ** 2) <= radius**2
        if i % 2:
            fail |= (ys - xs).abs() < 0.6
        maps.append(torch.stack([(fail & (wafer > 0)).float(), wafer]))
    return torch.stack(maps)


def make_method(aug: str = "full", outline: bool = False, **enc) -> BYOLMethod:
    torch.manual_seed(0)
    cfg = EncoderConfig(preset="tiny", in_chans=2 if outline else 1, **enc)
    return BYOLMethod(cfg, SMALL_HEADS, AugmentConfig.preset(aug), outline_channel=outline)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps gain nothing from threads and slow down badly on a shared CPU; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loss_finite_and_decreases() -> None:
    method = make_method(stem="imagenet")  # 8x8 features after the stem: fast on a busy CPU
    x, idx = wafer_maps(16), torch.arange(16)
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3, weight_decay=0.01)
    losses = []
    for step in range(1, 31):
        out = method.training_step((x, idx))
        assert set(out) == {"loss", "emb_std", "emb_cos", "tau"}
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and 0 <= out["loss"].item() <= 4
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.on_step_end(step, 30)
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    assert method.tau == pytest.approx(0.999)


def test_target_has_no_grad_and_is_not_trained() -> None:
    method = make_method()
    target = [*method.target_encoder.parameters(), *method.target_projector.parameters()]
    assert target and all(not p.requires_grad for p in target)
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not trainable & {id(p) for p in target}
    online = [*method.online_encoder.parameters(), *method.projector.parameters(), *method.predictor.parameters()]
    assert trainable == {id(p) for p in online}
    method.training_step((wafer_maps(4), torch.arange(4)))["loss"].backward()
    assert all(p.grad is None for p in target)
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_on_step_end_is_the_ema_formula() -> None:
    method = make_method()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    x = wafer_maps(8)
    method.training_step((x, torch.arange(8)))["loss"].backward()
    opt.step()
    pairs = [(method.online_encoder, method.target_encoder), (method.projector, method.target_projector)]
    before = [[p.clone() for p in t.parameters()] for _, t in pairs]
    online = [[p.clone() for p in o.parameters()] for o, _ in pairs]
    assert any(not torch.equal(a, b) for a, b in zip(online[0], before[0]))  # the step moved the online side
    method.on_step_end(7, 20)
    tau = cosine_momentum(7, 20, 0.996, 0.999)
    assert method.tau == tau and 0.996 < tau < 0.999
    for (o_mod, t_mod), old, new_online in zip(pairs, before, online):
        for p, p_old, p_on in zip(t_mod.parameters(), old, new_online):
            assert torch.allclose(p, tau * p_old + (1 - tau) * p_on, atol=1e-7)
        for b_t, b_o in zip(t_mod.buffers(), o_mod.buffers()):
            assert torch.equal(b_t, b_o)  # BN running statistics copied
    changed = [not torch.equal(p, q) for p, q in zip(method.target_encoder.parameters(), before[0])]
    assert any(changed)


def test_update_momentum_hand_values() -> None:
    online, target = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.fill_(3.0)
        target.weight.fill_(1.0)
        online.running_mean.fill_(5.0)
    update_momentum(online, target, 0.75)
    assert torch.equal(target.weight, torch.full((2,), 1.5))  # 0.75 * 1 + 0.25 * 3
    assert torch.equal(target.running_mean, torch.full((2,), 5.0))


def test_byol_loss_hand_values() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert torch.allclose(byol_loss(p, z), torch.tensor([0.0, 2.0, 4.0]))


def test_collapse_stats_hand_values() -> None:
    std, cos = collapse_stats(torch.tensor([[2.0, 1.0, 0.5]]).repeat(5, 1))
    assert std.item() == pytest.approx(0.0, abs=1e-7) and cos.item() == pytest.approx(1.0)
    std, cos = collapse_stats(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # orthogonal: per-dim values (1, 0)
    assert std.item() == pytest.approx(0.5) and cos.item() == pytest.approx(0.0)
    std, cos = collapse_stats(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert cos.item() == pytest.approx((0 + 2 / math.sqrt(2)) / 3)  # pairs: 0, 1/sqrt2, 1/sqrt2
    with pytest.raises(DataError, match="B >= 2"):
        collapse_stats(torch.ones(1, 4))


def test_on_epoch_end_warns_on_collapse_and_resets() -> None:
    method = make_method()
    x = wafer_maps(8)
    with torch.no_grad():
        stats = [method.training_step((x, torch.arange(8))) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy (freshly initialised) encoder does not warn
        logged = method.on_epoch_end(0)
    assert logged["emb_std"] == pytest.approx(sum(s["emb_std"].item() for s in stats) / 2)
    assert logged["emb_cos"] == pytest.approx(sum(s["emb_cos"].item() for s in stats) / 2)
    assert method.on_epoch_end(1) == {}  # accumulators were reset
    method._std_sum, method._cos_sum, method._n_stats = torch.tensor(0.0), torch.tensor(1.0), 1
    with pytest.warns(CollapseWarning, match="possible representation collapse at epoch 2"):
        assert method.on_epoch_end(2) == {"emb_std": 0.0, "emb_cos": 1.0}


def test_embed_shape_eval_mode_and_channels() -> None:
    method = make_method()
    x = wafer_maps(3)
    method.train()
    emb = method.embed(x)
    assert emb.shape == (3, 128) and emb.dtype == torch.float32 and not emb.requires_grad
    assert method.online_encoder.training  # mode restored
    assert torch.equal(emb, method.embed(x))  # eval mode: BN running stats, deterministic
    assert method.encoder is method.online_encoder
    with torch.no_grad():
        method.online_encoder.eval()
        assert torch.allclose(emb, method.online_encoder(x[:, :1]))  # only the fail channel is seen
    outline = make_method(outline=True)
    assert outline.embed(x).shape == (3, 128)
    with pytest.raises(DataError, match=r"\[B,2,S,S\]"):
        method.embed(x[:, :1])


def test_config_mismatch_errors() -> None:
    with pytest.raises(ConfigError, match="model.in_chans=1 does not match data.outline_channel=True"):
        BYOLMethod(EncoderConfig(preset="tiny"), SMALL_HEADS, AugmentConfig(), outline_channel=True)
    with pytest.raises(ConfigError, match="byol.tau_start"):
        BYOLMethod(EncoderConfig(preset="tiny"), BYOLConfig(tau_start=0.9995), AugmentConfig())


def test_autocast_channels_last_radial_attention() -> None:
    method = make_method(outline=True, radial_channel=True, attention=True).to(memory_format=torch.channels_last)
    x = wafer_maps(4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method((x, torch.arange(4)))
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    out["loss"].backward()
    grads = [p.grad for p in method.online_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    method.on_step_end(1, 10)
    # the target's cached radial map (set by the views) survives an embed at another size
    assert method.embed(torch.cat([x, x], dim=-1)[..., :48, :48].contiguous()).shape == (4, 128)
    method.on_step_end(2, 10)


def make_aux_method(weight: float = 1.0, dim: int = 5) -> BYOLMethod:
    torch.manual_seed(0)
    cfg = BYOLConfig(proj_hidden=64, proj_dim=32, pred_hidden=64, aux_features="wu2015", aux_weight=weight)
    return BYOLMethod(EncoderConfig(preset="tiny", in_chans=1, stem="imagenet"), cfg, AugmentConfig.preset("full"),
                      aux_dim=dim)


def test_aux_target_adds_the_weighted_read_out_error_to_the_byol_loss() -> None:
    """loss = byol + aux_weight * mean over both views of MSE(linear head(encoder(view)), target of the map)."""
    x, idx = wafer_maps(8), torch.arange(8)
    targets = torch.randn(8, 5)
    method = make_aux_method(weight=0.5)
    method.set_aux_targets(targets)
    torch.manual_seed(1)
    out = method.training_step((x, idx))
    assert {"loss", "byol_loss", "aux_loss"} <= set(out)
    assert torch.allclose(out["loss"], out["byol_loss"] + 0.5 * out["aux_loss"])
    # the same augmented views again, read out by hand: the head sees each view's encoder output
    torch.manual_seed(1)
    v1, v2 = method._views(x)
    head = method.aux_head
    want = 0.5 * (((head(method.online_encoder(v1)) - targets) ** 2).mean()
                  + ((head(method.online_encoder(v2)) - targets) ** 2).mean())
    assert torch.allclose(out["aux_loss"], want, atol=1e-5)


def test_aux_target_is_learned_by_the_head_and_encoder() -> None:
    """The read-out error falls when the targets are a function of the maps (their failed-die fraction)."""
    x, idx = wafer_maps(16), torch.arange(16)
    frac = x[:, 0].mean(dim=(1, 2))
    targets = torch.stack([(frac - frac.mean()) / frac.std()] * 5, dim=1)
    method = make_aux_method(weight=1.0)
    method.set_aux_targets(targets)
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=3e-3)
    first = []
    for step in range(40):
        out = method.training_step((x, idx))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first.append(out["aux_loss"].item())
    assert sum(first[-5:]) / 5 < 0.6 * sum(first[:5]) / 5


def test_aux_target_settings_and_inputs_are_checked() -> None:
    with pytest.raises(ConfigError, match="aux_features"):
        BYOLMethod(EncoderConfig(preset="tiny", in_chans=1), BYOLConfig(aux_features="pca"), AugmentConfig(), aux_dim=4)
    with pytest.raises(ConfigError, match="aux_dim >= 1"):
        BYOLMethod(EncoderConfig(preset="tiny", in_chans=1), BYOLConfig(aux_features="wu2015"), AugmentConfig())
    with pytest.raises(ConfigError, match="aux_weight"):
        BYOLMethod(EncoderConfig(preset="tiny", in_chans=1), BYOLConfig(aux_features="wu2015", aux_weight=-1),
                   AugmentConfig(), aux_dim=4)
    method = make_aux_method()
    with pytest.raises(DataError, match="set_aux_targets"):
        method.training_step((wafer_maps(4), torch.arange(4)))
    with pytest.raises(DataError, match=r"\[N, 5\]"):
        method.set_aux_targets(torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="off"):
        make_method().set_aux_targets(torch.zeros(4, 5))
    # not part of the saved state: a checkpoint of an aux run loads into a fresh aux method
    assert not any("aux_targets" in k for k in method.state_dict())
