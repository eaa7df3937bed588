"""PCA whitening of the learned embedding: the transform, its choice on validation maps, its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fabml.errors import ConfigError, DataError
from fabml.metrics.classification import knn_macro_accuracy
from fabml.wafer.whitening import Whitening, WhitenedEmbedder, choose_dim, whitened


def _labelled_by_a_quiet_direction(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 6] rows whose class (a/b) sits in a low-variance direction (+-0.3 along axis 0) under loud noise
    (std 3 along axes 1-5): cosine kNN on the raw rows is near chance, on whitened rows near perfect."""
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n) % 2 == 0, "a", "b")
    x = rng.normal(0, 3.0, (n, 6))
    x[:, 0] = np.where(labels == "a", 0.3, -0.3) + rng.normal(0, 0.02, n)
    return x + 10.0, labels  # an offset: whitening centres the rows first


def test_whitened_rows_are_unit_and_have_identity_covariance_before_normalising() -> None:
    x, _ = _labelled_by_a_quiet_direction(400, 0)
    w = Whitening(4).fit(x)
    out = w.transform(x)
    assert out.shape == (400, 4) and out.dtype == np.float32 and w.out_dim == 4
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    z = w.pca.transform(x)  # the whitened coordinates before the rows are normalised
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(4), atol=1e-6)


def test_the_dimension_is_capped_by_the_embedding_and_the_map_count() -> None:
    x, _ = _labelled_by_a_quiet_direction(5, 0)
    assert Whitening(96).fit(x).out_dim == 4  # 5 maps: at most 4 directions with variance
    x, _ = _labelled_by_a_quiet_direction(50, 0)
    assert Whitening(96).fit(x).out_dim == 6


def test_whitening_lets_a_quiet_direction_vote() -> None:
    ref, ref_labels = _labelled_by_a_quiet_direction(600, 1)
    val, val_labels = _labelled_by_a_quiet_direction(200, 2)
    raw = knn_macro_accuracy(ref, ref_labels, val, val_labels, k=5)
    w = Whitening(6).fit(ref)
    white = knn_macro_accuracy(w.transform(ref), ref_labels, w.transform(val), val_labels, k=5)
    assert raw < 0.7 and white > 0.95
    best, scores = choose_dim(ref, ref_labels, val, val_labels, k=5, dims=(0, 1, 6))
    assert best == 6 and scores[6] == pytest.approx(white) and scores[0] == pytest.approx(raw)


def test_the_whitened_embedder_applies_the_fitted_whitening_to_an_embed_function() -> None:
    x, _ = _labelled_by_a_quiet_direction(100, 0)
    embed = lambda t: t * 2.0  # noqa: E731  (any EmbedFn: tensor [B, D] -> tensor [B, D])
    fn = whitened(embed, x * 2.0, 3)
    assert isinstance(fn, WhitenedEmbedder)
    out = fn(torch.from_numpy(x[:7]).float()).numpy()
    np.testing.assert_allclose(out, fn.whitening.transform(x[:7] * 2.0), atol=1e-5)
    assert whitened(embed, x, 0) is embed  # 0: no whitening


@pytest.mark.parametrize("dim", [-1, 2.5, True])
def test_a_bad_dimension_is_a_one_line_error(dim) -> None:
    with pytest.raises(ConfigError, match="eval.whiten_dim"):
        Whitening(dim)


def test_bad_embeddings_and_an_unfitted_whitening_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="finite embeddings"):
        Whitening(2).fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(DataError, match="N >= 2"):
        Whitening(2).fit(np.ones((1, 3)))
    with pytest.raises(ConfigError, match="not fitted"):
        Whitening(2).transform(np.ones((3, 3)))
