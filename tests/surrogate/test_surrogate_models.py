"""Shapes and behaviour of the surrogate's networks (fabml.surrogate.models)."""

from __future__ import annotations

import pytest
import torch

from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import ConditionerConfig, VAEConfig
from fabml.surrogate.models import (
    CNNConditioner,
    HierarchicalVAE,
    MLPConditioner,
    ViTConditioner,
    build_conditioner,
)
from fabml.surrogate.models.hvae import axis_halvings

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(filters=[32, 16, 8])


def tiny_vae(v: int, t: int, m: int, layout: str = "1d", grid=None, **kw) -> HierarchicalVAE:
    return HierarchicalVAE(v, t, m, VAEConfig(**{**TINY, **kw}), layout, grid)


@pytest.mark.parametrize(
    "v,t,m,layout,grid",
    [
        (1, 16, 64, "1d", None),
        (2, 7, 33, "1d", None),  # odd T and M: padded and cropped back
        (1, 1, 50, "1d", None),  # T = 1: no stride on the time axis
        (1, 1, 256, "grid", (16, 16)),  # Darcy-like
        (3, 5, 35, "grid", (5, 7)),  # odd grid, V*T channels
    ],
)
def test_vae_shapes_any_layout(v, t, m, layout, grid):
    torch.manual_seed(0)
    vae = tiny_vae(v, t, m, layout, grid)
    x = torch.randn(2, v, t, m)
    out = vae(x)
    assert out.recon.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 32)
    assert out.xs_mu.shape == out.xs_logvar.shape == out.xs.shape == (2, vae.stages, 8)
    assert vae.stages == 3 and vae.latent_dim_end == 32 and vae.latent_dim == 8
    assert vae.decode(out.z, out.xs).shape == x.shape
    enc = vae.encode(x)
    assert enc.mu.shape == (2, 32) and enc.xs_mu.shape == (2, 3, 8)
    assert torch.isfinite(out.recon).all()


def test_vae_no_stride_on_singleton_axis_and_small_bottleneck():
    vae = tiny_vae(1, 1, 50)
    assert all(s[0] == 1 for s in vae.strides)
    assert vae.padded == (1, 56)  # 3 stages: 3 halvings, 50 padded to a multiple of 8
    # a long axis gets larger strides so the bottleneck stays below 8 positions
    assert sum(axis_halvings(95008, 4)) == 14 and axis_halvings(95008, 4)[0] >= axis_halvings(95008, 4)[-1]
    assert axis_halvings(1, 4) == [0, 0, 0, 0] and axis_halvings(16, 4) == [1, 1, 1, 1]


def test_vae_presets_and_filters_override():
    small = HierarchicalVAE(1, 4, 16, VAEConfig(preset="small"))
    assert small.filters == [1024, 512, 256, 128] and small.stages == 4
    large = HierarchicalVAE(1, 4, 16, VAEConfig(preset="large"))
    assert large.stages == 5 and large.blocks_per_stage == 2
    assert tiny_vae(1, 4, 16).filters == [32, 16, 8]
    with pytest.raises(ConfigError, match="vae.preset"):
        HierarchicalVAE(1, 4, 16, VAEConfig(preset="huge"))


def test_vae_sample_false_is_deterministic_and_uses_means():
    torch.manual_seed(0)
    vae = tiny_vae(1, 8, 32).eval()
    x = torch.randn(3, 1, 8, 32)
    a, b = vae(x, sample=False), vae(x, sample=False)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.z, a.mu) and torch.equal(a.xs, a.xs_mu)
    c = vae(x, sample=True)
    assert not torch.equal(c.z, c.mu)


def test_vae_hierarchical_latents_change_the_output():
    torch.manual_seed(0)
    vae = tiny_vae(1, 8, 32)
    for p in vae.decoder.parameters():  # FiLM starts at identity; give it weights to test the wiring
        torch.nn.init.normal_(p, std=0.1)
    z, xs = torch.randn(2, 32), torch.randn(2, 3, 8)
    base = vae.decode(z, xs)
    for s in range(3):
        xs2 = xs.clone()
        xs2[:, s] += 1.0
        assert not torch.allclose(vae.decode(z, xs2), base), f"stage {s} latent ignored"


def test_vae_rejects_wrong_shapes():
    vae = tiny_vae(1, 8, 32)
    with pytest.raises(DataError, match="T=8"):
        vae(torch.randn(2, 1, 9, 32))
    with pytest.raises(ConfigError, match="grid_shape"):
        tiny_vae(1, 1, 30, "grid", (4, 4))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = tiny_vae(2, 6, 40)
    ckpt = tiny_vae(2, 6, 40, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(3, 2, 6, 40)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model(x, sample=False)
        (out.recon.pow(2).mean() + out.mu.pow(2).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "kind,input_kind,shape,cls",
    [
        ("mlp", "params", (5,), MLPConditioner),
        ("auto", "params", (3,), MLPConditioner),
        ("cnn", "image", (1, 16, 16), CNNConditioner),
        ("auto", "image", (3, 20, 20), CNNConditioner),
        ("vit", "image", (1, 16, 16), ViTConditioner),
    ],
)
def test_conditioner_output_shapes(kind, input_kind, shape, cls):
    torch.manual_seed(0)
    cfg = ConditionerConfig(kind=kind, hidden=16, blocks=2, patch_size=4, heads=2)
    model = build_conditioner(cfg, input_kind, shape, 32, 4, 8)
    assert isinstance(model, cls)
    z, xs = model(torch.randn(3, *shape))
    assert z.shape == (3, 32) and xs.shape == (3, 4, 8)
    assert torch.isfinite(z).all() and torch.isfinite(xs).all()


def test_conditioner_kind_must_fit_inputs():
    with pytest.raises(ConfigError, match="conditioner.kind='cnn'"):
        build_conditioner(ConditionerConfig(kind="cnn"), "params", (4,), 32, 4, 8)
    with pytest.raises(ConfigError, match="mlp"):
        build_conditioner(ConditionerConfig(kind="mlp"), "image", (1, 16, 16), 32, 4, 8)
    with pytest.raises(ConfigError, match="unknown"):
        build_conditioner(ConditionerConfig(kind="rnn"), "image", (1, 16, 16), 32, 4, 8)


def test_vit_image_size_must_be_multiple_of_patch():
    with pytest.raises(ConfigError, match="patch_size=16"):
        ViTConditioner(1, 20, cfg=ConditionerConfig(patch_size=16))
    with pytest.raises(ConfigError, match="patch_size=16"):
        ViTConditioner(1, 8, cfg=ConditionerConfig(patch_size=16))
    vit = ViTConditioner(1, 32, cfg=ConditionerConfig(patch_size=16, hidden=16, blocks=1, heads=2))
    assert vit.num_patches == 4
    with pytest.raises(DataError, match="expects images"):
        vit(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "vit"])
def test_dropout_in_train_mode_samples_and_eval_is_deterministic(kind):
    """Monte-Carlo dropout: the conditioners' dropouts are plain nn.Dropout that sample in train()."""
    torch.manual_seed(0)
    shape = (6,) if kind == "mlp" else (1, 16, 16)
    cfg = ConditionerConfig(kind=kind, hidden=16, blocks=2, patch_size=4, heads=2, dropout=0.3, drop_path=0.0)
    model = build_conditioner(cfg, "params" if kind == "mlp" else "image", shape, 32, 4, 8).eval()
    x = torch.randn(2, *shape)
    assert torch.equal(model(x)[0], model(x)[0])
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and max(d.p for d in drops) == pytest.approx(0.3)
    for d in drops:
        d.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_mlp_progressive_dropout():
    model = MLPConditioner(4, cfg=ConditionerConfig(blocks=3, dropout=0.3, hidden=8))
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == pytest.approx([0.1, 0.2, 0.3])


def test_cnn_has_spectral_norm_groupnorm_and_se():
    model = CNNConditioner(1, 16, cfg=ConditionerConfig(hidden=8, blocks=2))
    names = [n for n, _ in model.named_parameters()]
    assert any("parametrizations.weight.original" in n for n in names)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert any(type(m).__name__ == "SqueezeExcite" for m in model.modules())


def test_cnn_full_res_blocks_keep_the_input_resolution_before_the_strided_blocks():
    seen = []
    model = CNNConditioner(1, 16, 32, 4, 8, cfg=ConditionerConfig(hidden=8, blocks=2, full_res_blocks=2))
    for block in model.stem[3:]:
        block.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    z, xs = model(torch.randn(3, 1, 16, 16))
    assert seen == [(3, 8, 16, 16)] * 2 and z.shape == (3, 32) and xs.shape == (3, 4, 8)
    plain = CNNConditioner(1, 16, 32, 4, 8, cfg=ConditionerConfig(hidden=8, blocks=2))
    assert len(plain.stem) == 3  # the seed's CNN: conv, norm, activation
    with pytest.raises(ConfigError, match="full_res_blocks=-1"):
        CNNConditioner(1, 16, cfg=ConditionerConfig(hidden=8, blocks=2, full_res_blocks=-1))


def test_describe_activation_estimate_matches_saved_tensors():
    """The documented memory formula (used to plan the seed's 200 x 95,008 case) against what autograd keeps."""
    torch.manual_seed(0)
    vae = tiny_vae(1, 16, 512)
    params = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vae(torch.randn(1, 1, 16, 512))
    estimate = vae.describe()["activation_bytes_per_case"]
    assert 0.8 < estimate / sum(kept.values()) < 1.25
    assert vae.describe()["activation_bytes_per_case_checkpointed"] < estimate
