"""The model-free severity baseline: its features, its regressor, and its training faults on generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fabml.anomaly.cutpaste_faults import CutPasteFaultConfig
from fabml.anomaly.severity_baseline import (
    FEATURE_NAMES,
    SeverityBaseline,
    fit_on_training_faults,
    severity_features,
    training_faults,
)
from fabml.errors import ConfigError, DataError


def textured(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """``n`` noisy 1-channel images ``[n, 1, size, size]`` around a random grey level, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    level = 0.2 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    return (level + 0.03 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def with_band(images: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
    """A landscape band (4 x 16 px) raised by ``added [n]`` in each image."""
    out = images.clone()
    out[:, :, 10:14, 8:24] += added.view(-1, 1, 1, 1)
    return out.clamp(0, 1)


def test_features_shape_and_monotone_tail() -> None:
    images = textured(6, 0)
    feats = severity_features(with_band(images, torch.linspace(0.0, 0.5, 6)))
    assert feats.shape == (6, len(FEATURE_NAMES)) and feats.dtype == np.float64
    assert np.isfinite(feats).all()
    top = feats[:, FEATURE_NAMES.index("top5%")]
    assert spearmanr(np.linspace(0, 0.5, 6), top).statistic > 0.9  # the bright tail grows with the added intensity
    assert severity_features(torch.full((1, 3, 16, 16), 0.3))[0, FEATURE_NAMES.index("q1")] == 0.0  # flat image
    with pytest.raises(DataError):
        severity_features(torch.zeros(16, 16))


def test_regressor_ranks_severity_monotone_in_added_intensity() -> None:
    g = torch.Generator().manual_seed(1)
    severity_train = 10 * torch.rand(200, generator=g)
    severity_test = 10 * torch.rand(60, generator=g)
    for regressor in ("gbr", "ridge"):
        model = SeverityBaseline(regressor, severity_max=10.0, seed=0)
        model.fit(severity_features(with_band(textured(200, 2), 0.05 * severity_train)), severity_train.numpy())
        pred = model.predict_images(with_band(textured(60, 3), 0.05 * severity_test))
        assert pred.min() >= 0.0 and pred.max() <= 10.0
        assert spearmanr(severity_test.numpy(), pred).statistic > 0.9, regressor
        assert np.abs(pred - severity_test.numpy()).mean() < 1.5, regressor


def test_training_faults_and_fit_on_them() -> None:
    images = textured(20, 4)
    faults = CutPasteFaultConfig(probability=0.5, patch_width_range=(40.0, 120.0), reference_size=256)
    batches = list(training_faults(images, faults, 50, seed=1, batch_size=16))
    assert [len(b.severity) for b in batches] == [16, 16, 16, 2]
    again = list(training_faults(images, faults, 50, seed=1, batch_size=16))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.severity, b.severity) for a, b in zip(batches, again))
    severity = torch.cat([b.severity for b in batches])
    assert 0 < int((severity > 0).sum()) < 50  # the config's probability: some faulty, some left normal
    model = fit_on_training_faults(images, faults, 300, regressor="ridge", seed=1)
    assert model.train_faulty == int(sum((b.severity > 0).sum() for b in training_faults(images, faults, 300, 1)))
    test = [b for b in training_faults(textured(20, 5), CutPasteFaultConfig(probability=1.0,
                                       patch_width_range=(40.0, 120.0)), 80, seed=2)]
    true = torch.cat([b.severity for b in test]).numpy()
    pred = np.concatenate([model.predict_images(b.images) for b in test])
    assert spearmanr(true, pred).statistic > 0.7


def test_errors() -> None:
    with pytest.raises(ConfigError, match="regressor"):
        SeverityBaseline("svm")
    with pytest.raises(DataError, match="not fitted"):
        SeverityBaseline().predict(np.zeros((2, len(FEATURE_NAMES))))
    with pytest.raises(DataError, match="training normal"):
        list(training_faults(torch.zeros(0, 1, 8, 8), CutPasteFaultConfig(), 4))
