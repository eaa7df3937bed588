"""Wafer augmentations: the D4 group (closure, inverse, composition), each op on and off, RNG use."""

from __future__ import annotations

import itertools

import pytest
import torch

from fabml.errors import ConfigError, DataError
from fabml.wafer.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    WaferAugment,
    d4_apply,
    d4_compose,
    d4_inverse,
    d4_orbit,
    d4_transform,
    random_d4,
)

S = 32


def wafer_maps(n: int, size: int = S, seed: int = 0) -> torch.Tensor:
    """``[n,2,S,S]``: a disc wafer with an off-centre blob and a diagonal scratch of failed dies."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    c = size / 2
    wafer = (((ys - c) ** 2 + (xs - c) ** 2) <= (0.45 * size) ** 2).float()
    maps = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 0.4 + 0.2) * size
        blob = ((ys - cy) ** 2 + (xs - cx) ** 2) <= (0.1 * size) ** 2
        scratch = (ys - xs).abs() < 0.6
        fail = ((blob | scratch) & (wafer > 0)).float()
        maps.append(torch.stack([fail, wafer]))
    return torch.stack(maps)


def asymmetric(b: int = 2) -> torch.Tensor:
    return torch.arange(b * 2 * 5 * 5, dtype=torch.float32).reshape(b, 2, 5, 5)


# ---------------------------------------------------------------- D4


def test_d4_elements_distinct_and_definition() -> None:
    x = asymmetric()
    members = [d4_transform(x, k) for k in range(8)]
    for a, b in itertools.combinations(range(8), 2):
        assert not torch.equal(members[a], members[b]), (a, b)
    assert torch.equal(members[0], x)
    assert torch.equal(members[1], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(members[6], torch.rot90(torch.flip(x, dims=(-1,)), 2, dims=(-2, -1)))


def test_d4_closure_composition_and_inverse() -> None:
    x = asymmetric()
    orbit = d4_orbit(x)
    assert orbit.shape == (8, 2, 2, 5, 5)
    for a, b in itertools.product(range(8), repeat=2):
        twice = d4_transform(d4_transform(x, b), a)
        assert torch.equal(twice, orbit[d4_compose(a, b)]), (a, b)  # closure + composition table
    for k in range(8):
        assert torch.equal(d4_transform(d4_transform(x, k), d4_inverse(k)), x)
        assert d4_compose(k, d4_inverse(k)) == 0 == d4_compose(d4_inverse(k), k)
    # hand-checked entries: R R = R^2, F F = e, R F = element 5, F R = R^3 F = element 7
    assert (d4_compose(1, 1), d4_compose(4, 4), d4_compose(1, 4), d4_compose(4, 1)) == (2, 0, 5, 7)
    assert [d4_inverse(k) for k in range(8)] == [0, 3, 2, 1, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="k=8"):
        d4_transform(x, 8)


def test_d4_apply_and_random_d4_per_sample() -> None:
    x = asymmetric(1).expand(64, 2, 5, 5).contiguous()
    ks = torch.arange(64) % 8
    out = d4_apply(x, ks)
    for i in range(64):
        assert torch.equal(out[i], d4_transform(x[i], int(ks[i])))
    torch.manual_seed(0)
    out = random_d4(x)
    orbit = d4_orbit(x[:1])[:, 0]
    hits = [next(k for k in range(8) if torch.equal(out[i], orbit[k])) for i in range(64)]
    assert len(set(hits)) == 8  # independent draws per sample cover the group
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_d4(x, g1), random_d4(x, g2))


# ---------------------------------------------------------------- config


def test_presets() -> None:
    enabled = {name: AugmentConfig.preset(name).enabled() for name in AUGMENT_PRESETS}
    assert enabled == {
        "none": [],
        "d4": ["d4"],
        "d4_crop": ["d4", "crop"],
        "d4_crop_noise": ["die_noise", "d4", "crop"],
        "full": ["die_noise", "d4", "crop", "rotate", "erase"],
    }
    assert AugmentConfig.preset("full") == AugmentConfig()
    with pytest.raises(ConfigError, match="augment preset 'd5' is unknown"):
        AugmentConfig.preset("d5")
    with pytest.raises(ConfigError, match="augment.crop_scale"):
        WaferAugment(AugmentConfig(crop_scale=(0.8, 1.2)))
    with pytest.raises(ConfigError, match="augment.erase_p"):
        WaferAugment(AugmentConfig(erase_p=1.5))


def test_bad_input_shape() -> None:
    with pytest.raises(DataError, match=r"\[B,2,S,S\]"):
        WaferAugment()(torch.rand(2, 1, S, S))


# ---------------------------------------------------------------- the ops


def test_all_off_is_identity() -> None:
    x = wafer_maps(4)
    assert torch.equal(WaferAugment(AugmentConfig.preset("none"))(x), x)
    off = AugmentConfig(die_noise_rate=0.0, erase_p=0.0, rotate_degrees=0.0, crop=False, d4=False)
    assert torch.equal(WaferAugment(off)(x), x)


def test_full_output_shape_range_and_independence() -> None:
    x = wafer_maps(1).expand(8, 2, S, S).contiguous()
    torch.manual_seed(0)
    out = WaferAugment(AugmentConfig(erase_p=0.5))(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert set(out[:, 1].unique().tolist()) <= {0.0, 1.0}  # wafer channel stays a mask
    flat = out.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i, j in itertools.combinations(range(8), 2))


def test_rng_global_and_generator_reproducible() -> None:
    x, aug = wafer_maps(4), WaferAugment()
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    assert torch.equal(aug(x), a)
    assert torch.equal(aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1)))


def test_d4_only_gives_orbit_members() -> None:
    x = wafer_maps(16)
    out = WaferAugment(AugmentConfig.preset("d4"))(x)
    orbits = d4_orbit(x)
    for i in range(16):
        assert any(torch.equal(out[i], orbits[k, i]) for k in range(8))


def test_die_noise_only_on_wafer() -> None:
    x = wafer_maps(8, size=64)
    cfg = AugmentConfig(d4=False, crop=False, rotate=False, erase=False, die_noise_rate=0.1)
    torch.manual_seed(0)
    out = WaferAugment(cfg)(x)
    assert torch.equal(out[:, 1], x[:, 1])
    changed = out[:, 0] != x[:, 0]
    assert not changed[x[:, 1] == 0].any()  # off-wafer pixels never change
    rate = changed[x[:, 1] == 1].float().mean().item()
    assert 0.08 < rate < 0.12
    both_ways = (out[:, 0][changed] == 1).any() and (out[:, 0][changed] == 0).any()
    assert both_ways  # good -> failed and failed -> good


def test_crop_identity_at_full_scale_and_stays_inside() -> None:
    x = wafer_maps(4)
    only_crop = dict(d4=False, rotate=False, die_noise=False, erase=False)
    cfg = AugmentConfig(**only_crop, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert torch.allclose(WaferAugment(cfg)(x), x, atol=1e-5)
    ones = torch.ones(16, 2, S, S)
    cfg = AugmentConfig(**only_crop, crop_scale=(0.3, 0.5))
    assert torch.allclose(WaferAugment(cfg)(ones), ones, atol=1e-5)  # the crop never reads off the map
    cropped = WaferAugment(cfg)(x)
    # zooming in by >= 1/sqrt(0.5) enlarges the wafer disc
    assert (cropped[:, 1].sum(dim=(1, 2)) > x[:, 1].sum(dim=(1, 2))).all()


def test_small_rotation_keeps_the_map() -> None:
    x = wafer_maps(4, size=64)
    cfg = AugmentConfig(d4=False, crop=False, die_noise=False, erase=False, rotate_degrees=5.0)
    torch.manual_seed(0)
    out = WaferAugment(cfg)(x)
    assert not torch.equal(out, x)
    inter = (out[:, 1] * x[:, 1]).sum()
    union = ((out[:, 1] + x[:, 1]) > 0).float().sum()
    assert float(inter / union) > 0.97  # the disc barely moves
    fail_in, fail_out = x[:, 0].sum(dim=(1, 2)), out[:, 0].sum(dim=(1, 2))
    assert torch.allclose(fail_out, fail_in, rtol=0.05)  # bilinear keeps the failed-die mass
    cfg.rotate_degrees = 0.0
    assert torch.equal(WaferAugment(cfg)(x), x)


def test_erase_rectangles() -> None:
    ones = torch.ones(32, 2, S, S)
    cfg = AugmentConfig(d4=False, crop=False, rotate=False, die_noise=False, erase_p=1.0, erase_scale=(0.05, 0.1))
    torch.manual_seed(0)
    out = WaferAugment(cfg)(ones)
    assert torch.equal(out[:, 0], out[:, 1])  # both channels erased together
    for m in out[:, 0]:
        zeros = (m == 0).nonzero()
        (y0, x0), (y1, x1) = zeros.min(dim=0).values, zeros.max(dim=0).values
        assert len(zeros) == (y1 - y0 + 1) * (x1 - x0 + 1)  # one solid rectangle
        assert 0.02 < len(zeros) / S**2 < 0.15
    cfg.erase_p = 0.0
    assert torch.equal(WaferAugment(cfg)(ones), ones)


def test_autocast_and_channels_last_input() -> None:
    x = wafer_maps(4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = WaferAugment()(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
