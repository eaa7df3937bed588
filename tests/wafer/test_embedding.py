"""Embedding helpers: test-time D4 averaging is exactly invariant; the PCA baseline fits the same contract."""

import numpy as np
import torch

from fabml.wafer.augment import d4_transform
from fabml.wafer.embedding import PCABaseline, d4_averaged, embed_d4_orbits, embed_tensors, encoder_embed_fn
from fabml.wafer.model import EncoderConfig, WaferEncoder


def _maps(n: int = 6, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    fail = (torch.rand(n, 1, size, size, generator=g) > 0.85).float()
    return torch.cat([fail, torch.ones_like(fail)], dim=1)


def test_encoder_embeddings_are_unit_norm_and_batched_consistently():
    torch.manual_seed(0)
    fn = encoder_embed_fn(WaferEncoder(EncoderConfig(preset="tiny")), outline_channel=False)
    x = _maps()
    full = embed_tensors(fn, x, batch_size=6)
    chunked = embed_tensors(fn, x, batch_size=4)
    assert full.shape == (6, 128) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(full, chunked, atol=1e-5)


def test_d4_averaging_is_invariant_to_every_d4_element():
    torch.manual_seed(0)
    fn = d4_averaged(encoder_embed_fn(WaferEncoder(EncoderConfig(preset="tiny")), outline_channel=False))
    x = _maps(3)
    reference = fn(x)
    for k in range(8):
        torch.testing.assert_close(fn(d4_transform(x, k)), reference, atol=1e-5, rtol=1e-4)


def test_orbit_embeddings_member_k_is_the_k_th_transform():
    torch.manual_seed(0)
    fn = encoder_embed_fn(WaferEncoder(EncoderConfig(preset="tiny")), outline_channel=False)
    x = _maps(2)
    orbit = embed_d4_orbits(fn, x)
    assert orbit.shape == (2, 8, 128)
    np.testing.assert_allclose(orbit[:, 5], embed_tensors(fn, d4_transform(x, 5)), atol=1e-5)


def test_pca_baseline_embeds_like_an_encoder():
    x = _maps(20)
    base = PCABaseline(dim=5).fit(x)
    emb = embed_tensors(base, x)
    assert emb.shape == (20, 5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_pca_baseline_with_fewer_maps_than_dimensions():
    """`fabml wafer evaluate` on 96 reference maps used to fail: PCA cannot have 128 components from 96 maps."""
    x = _maps(12)
    emb = embed_tensors(PCABaseline(dim=128).fit(x), x)
    assert emb.shape == (12, 12)
