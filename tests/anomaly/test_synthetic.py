"""DRAEM-style synthetic anomalies: Perlin noise, masks, texture blending."""

from __future__ import annotations

import math

import pytest
import torch

from fabml.anomaly.synthetic import (
    SyntheticAnomalyConfig,
    _fade,
    jitter_texture,
    noise_texture,
    perlin_mask,
    perlin_noise_2d,
    synthesize_anomalies,
)
from fabml.errors import ConfigError, DataError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fade_curve_values() -> None:
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected = [6 * x**5 - 15 * x**4 + 10 * x**3 for x in t.tolist()]
    assert torch.allclose(_fade(t), torch.tensor(expected))
    assert _fade(t)[2] == 0.5 and _fade(t)[3] == 1.0


def test_perlin_noise_shape_range_lattice_zeros() -> None:
    noise = perlin_noise_2d((32, 48), (4, 6), _gen())
    assert noise.shape == (32, 48) and noise.dtype == torch.float32
    assert float(noise.abs().max()) <= 1.0 and float(noise.std()) > 0.05
    # Gradient noise is 0 on the lattice points (every 8 pixels here).
    assert noise[::8, ::8].abs().max() < 1e-6
    assert torch.equal(perlin_noise_2d((32, 48), (4, 6), _gen()), noise)
    assert not torch.equal(perlin_noise_2d((32, 48), (4, 6), _gen(1)), noise)


def test_perlin_noise_non_multiple_is_a_crop() -> None:
    """37 x 53 with 4 x 6 cells = the 40 x 54 noise (cells of 10 x 9 px) cropped."""
    odd = perlin_noise_2d((37, 53), (4, 6), _gen(5))
    full = perlin_noise_2d((40, 54), (4, 6), _gen(5))
    assert odd.shape == (37, 53) and torch.equal(odd, full[:37, :53])


def test_perlin_noise_hand_computed_point() -> None:
    """One cell: recompute pixel (2, 1) from the same four random gradients by hand."""
    g = _gen(0)
    angles = 2 * math.pi * torch.rand(2, 2, generator=_gen(0))
    noise = perlin_noise_2d((4, 4), (1, 1), g)
    gy, gx = torch.sin(angles), torch.cos(angles)
    y, x = 0.5, 0.25  # pixel (2, 1) of a 4-px cell
    n = {(oy, ox): gy[oy, ox] * (y - oy) + gx[oy, ox] * (x - ox) for oy in (0, 1) for ox in (0, 1)}
    u, v = float(_fade(torch.tensor(y))), float(_fade(torch.tensor(x)))
    top = n[0, 0] + v * (n[0, 1] - n[0, 0])
    bottom = n[1, 0] + v * (n[1, 1] - n[1, 0])
    assert noise[2, 1] == pytest.approx(math.sqrt(2) * float(top + u * (bottom - top)), abs=1e-6)


def test_perlin_mask_binary_deterministic() -> None:
    for rotate in (False, True):
        mask = perlin_mask((40, 30), _gen(2), rotate=rotate)
        assert mask.shape == (40, 30) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(mask, perlin_mask((40, 30), _gen(2), rotate=rotate))
    areas = [float(perlin_mask((32, 32), _gen(s)).mean()) for s in range(20)]
    assert 0.0 < sum(areas) / 20 < 0.5  # thresholded at 0.5: a minority of the pixels
    with pytest.raises(ConfigError, match="min_scale < max_scale"):
        perlin_mask((8, 8), _gen(), min_scale=3, max_scale=3)


def test_synthesize_shapes_range_masks_labels() -> None:
    images = torch.rand(6, 3, 32, 32, generator=_gen(9))
    aug, masks, labels = synthesize_anomalies(images, SyntheticAnomalyConfig(probability=0.5), _gen(1))
    assert aug.shape == images.shape and masks.shape == (6, 1, 32, 32) and labels.shape == (6,)
    assert labels.dtype == torch.float32 and set(labels.tolist()) <= {0.0, 1.0}
    assert 0 < labels.sum() < 6  # with this seed, some but not all
    assert float(aug.min()) >= 0.0 and float(aug.max()) <= 1.0
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    area = masks.flatten(1).sum(1)
    assert torch.equal(area > 0, labels > 0)  # masks only where the label is 1
    assert (area[labels > 0] >= 0.002 * 32 * 32).all()
    outside = (masks == 0).expand_as(images)
    assert torch.equal(aug[outside], images[outside])  # blend is the identity where mask = 0
    assert (aug[labels == 0] == images[labels == 0]).all()
    assert not torch.equal(aug[labels > 0], images[labels > 0])


def test_synthesize_deterministic_and_noise_textures() -> None:
    images = torch.rand(4, 1, 37, 45, generator=_gen(3))  # 1 channel, shape not a power of two
    for source in ("images", "noise"):
        cfg = SyntheticAnomalyConfig(probability=1.0, texture_source=source)
        first = synthesize_anomalies(images, cfg, _gen(7))
        second = synthesize_anomalies(images, cfg, _gen(7))
        assert all(torch.equal(a, b) for a, b in zip(first, second))
        assert first[0].shape == (4, 1, 37, 45) and first[2].sum() >= 3
        assert float(first[0].min()) >= 0.0 and float(first[0].max()) <= 1.0
    other = synthesize_anomalies(images, SyntheticAnomalyConfig(probability=1.0), _gen(8))
    assert not torch.equal(other[1], first[1])


def test_synthesize_blend_limits() -> None:
    """beta = 0: texture invisible (output = input) though the mask is set; probability 0: nothing."""
    images = torch.rand(3, 3, 24, 24, generator=_gen(4))
    aug, masks, labels = synthesize_anomalies(
        images, SyntheticAnomalyConfig(probability=1.0, beta_range=(0.0, 0.0)), _gen(0)
    )
    assert labels.sum() > 0 and masks.sum() > 0 and torch.allclose(aug, images, atol=1e-6)
    aug, masks, labels = synthesize_anomalies(images, SyntheticAnomalyConfig(probability=0.0), _gen(0))
    assert torch.equal(aug, images) and masks.sum() == 0 and labels.sum() == 0
    # an unreachable minimum area: every draw is rejected and the images stay normal
    aug, _, labels = synthesize_anomalies(
        images, SyntheticAnomalyConfig(probability=1.0, min_area_fraction=0.999, max_tries=2), _gen(0)
    )
    assert labels.sum() == 0 and torch.equal(aug, images)


def test_blend_with_opaque_texture_equals_texture_inside_mask() -> None:
    """beta = 1 with a single image: inside the mask the output is the jittered image itself."""
    image = torch.rand(1, 1, 16, 16, generator=_gen(6))
    cfg = SyntheticAnomalyConfig(probability=1.0, beta_range=(1.0, 1.0), rotate=False)
    aug, masks, labels = synthesize_anomalies(image, cfg, _gen(11))
    assert labels.item() == 1.0
    # replay the generator: probability draw, permutation, mask tries, then the texture jitter
    g = _gen(11)
    torch.rand(1, generator=g), torch.randperm(1, generator=g)
    while True:
        mask = perlin_mask((16, 16), g, 0, 6, 0.5, False)
        if mask.mean() >= cfg.min_area_fraction:
            break
    texture = jitter_texture(image[0], g)
    inside = masks[0, 0] > 0
    assert torch.equal(mask > 0, inside)
    assert torch.allclose(aug[0, 0][inside], texture.clamp(0, 1)[0][inside], atol=1e-6)


def test_noise_texture_range() -> None:
    tex = noise_texture((3, 20, 28), _gen())
    assert tex.shape == (3, 20, 28) and float(tex.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(tex.max()) == pytest.approx(1.0, abs=1e-6)


def test_config_and_input_errors() -> None:
    with pytest.raises(ConfigError, match="probability=1.5"):
        SyntheticAnomalyConfig(probability=1.5)
    with pytest.raises(ConfigError, match="texture_source='dtd'.*images, noise"):
        SyntheticAnomalyConfig(texture_source="dtd")
    with pytest.raises(ConfigError, match="beta_range"):
        SyntheticAnomalyConfig(beta_range=(0.8, 0.2))
    with pytest.raises(DataError, match=r"float images \[B, C, H, W\]"):
        synthesize_anomalies(torch.rand(3, 16, 16), SyntheticAnomalyConfig(), _gen())
