"""D4 invariance metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fabml.errors import DataError
from fabml.metrics.invariance import d4_mean_cosine, d4_same_cluster_rate, orbit_noise_rate
from fabml.wafer.augment import d4_transform


def test_mean_cosine_hand_computed():
    invariant = np.tile(np.array([[[1.0, 2.0]]]), (1, 8, 1)) * np.arange(1, 9)[None, :, None]  # one direction
    assert d4_mean_cosine(invariant) == pytest.approx(1.0)
    # members alternate between two orthogonal directions: 4x4 pairs of each kind.
    # off-diagonal: same-direction pairs 2 * (4*4 - 4) = 24 with cos 1, 32 orthogonal pairs -> 24/56
    half = np.array([[1.0, 0.0]] * 4 + [[0.0, 3.0]] * 4)[None]
    assert d4_mean_cosine(half) == pytest.approx(24 / 56)
    assert d4_mean_cosine(np.concatenate([invariant, half])) == pytest.approx((1 + 24 / 56) / 2)


def test_mean_cosine_of_pixels_of_a_symmetric_map_is_one():
    x = torch.zeros(1, 1, 5, 5)
    x[..., 2, 2] = 1.0  # the centre die is fixed by all of D4
    orbit = torch.stack([d4_transform(x, k) for k in range(8)], dim=1).reshape(1, 8, -1)
    assert d4_mean_cosine(orbit.numpy()) == pytest.approx(1.0)
    y = torch.zeros(1, 1, 5, 5)
    y[..., 0, 1] = 1.0  # an off-axis die: every transform moves it somewhere else
    orbit = torch.stack([d4_transform(y, k) for k in range(8)], dim=1).reshape(1, 8, -1)
    assert d4_mean_cosine(orbit.numpy()) == pytest.approx(0.0)


def test_same_cluster_rate_and_noise_rule():
    labels = np.array(
        [
            [3] * 8,  # consistent
            [3] * 7 + [4],  # one member elsewhere
            [-1] * 8,  # all noise: not consistent
            [2] * 7 + [-1],  # a noise member
        ]
    )
    assert d4_same_cluster_rate(labels) == pytest.approx(1 / 4)
    assert orbit_noise_rate(labels) == pytest.approx(2 / 4)


def test_bad_shapes():
    with pytest.raises(DataError, match=r"\[N, 8, D\]"):
        d4_mean_cosine(np.zeros((3, 7, 4)))
    with pytest.raises(DataError, match=r"\[N, 8\]"):
        d4_same_cluster_rate(np.zeros((3, 8, 1)))
