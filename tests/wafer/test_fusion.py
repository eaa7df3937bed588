"""The fused embedding: its cosine is the weighted mean of the two cosines, the weight is checked, and the weight
chosen on validation maps is the one with the best kNN macro accuracy (hand-made rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fabml.errors import ConfigError
from fabml.wafer.baselines import BaselineConfig
from fabml.wafer.fusion import FusedEmbedder, choose_weight, fuse


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_the_fused_cosine_is_the_weighted_mean_of_the_two_cosines() -> None:
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=(6, 5))), _unit(rng.normal(size=(6, 3)))
    for w in (0.0, 0.3, 1.0):
        f = fuse(a, b, w)
        assert f.shape == (6, 8)
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(f @ f.T, w * (a @ a.T) + (1 - w) * (b @ b.T), atol=1e-6)


def test_the_fused_embedder_joins_two_embed_functions() -> None:
    learned = lambda x: torch.nn.functional.normalize(x.flatten(1)[:, :4], dim=1)  # noqa: E731
    base = lambda x: torch.nn.functional.normalize(x.flatten(1)[:, 4:7] + 1, dim=1)  # noqa: E731
    x = torch.rand(3, 2, 4, 4)
    out = FusedEmbedder(learned, base, 0.25)(x)
    expected = fuse(learned(x).numpy(), base(x).numpy(), 0.25)
    np.testing.assert_allclose(out.numpy(), expected)


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_weight_outside_zero_one_is_a_one_line_error(weight: float) -> None:
    with pytest.raises(ConfigError, match="baseline.fusion_weight must be in"):
        fuse(np.ones((1, 1)), np.ones((1, 1)), weight)
    with pytest.raises(ConfigError, match="baseline.fusion_weight must be in"):
        BaselineConfig(fusion_weight=weight)
    with pytest.raises(ConfigError, match="fuse_with='pcaa'"):
        BaselineConfig(fuse_with="pcaa")


def test_choose_weight_picks_the_weight_whose_neighbours_vote_right() -> None:
    # references: two classes; the learned part separates them, the baseline part says the opposite
    ref_a = _unit(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=float))
    ref_b = _unit(np.array([[0, 1], [0.1, 1], [1, 0], [1, 0.1]], dtype=float))
    labels = ["x", "x", "y", "y"]
    val_a, val_b = _unit(np.array([[1, 0.05], [0.05, 1]])), _unit(np.array([[1, 0.05], [0.05, 1]]))
    best, scores = choose_weight((ref_a, ref_b), labels, (val_a, val_b), ["x", "y"], k=1, weights=(0.0, 0.8, 1.0))
    assert scores == {0.0: 0.0, 0.8: 1.0, 1.0: 1.0}
    assert best == 0.8  # a tie goes to the smaller weight
