"""Shared by the retrieval tests: one thread per test, and tiny generated shape images with object IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.data.synthetic_shapes import make_shape_set

# A run in seconds on a CPU: timm's test_efficientnet with random weights at 32 px, 2 epochs (1 frozen).
TINY_SETTINGS = ["data.image_size=32", "data.min_image_size=16", "model.backbone=test_efficientnet",
                 "model.pretrained=false", "model.embedding_dim=16", "model.warmup_epochs=1", "train.epochs=2",
                 "train.num_workers=0", "sampler.samples_per_class=2", "eval.top_k=5"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this folder runs with one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five classes (circle, square, triangle, cross, ring) x 6 objects x 2 photos, 32 x 32 px."""
    return make_shape_set(tmp_path_factory.mktemp("shapes"), n_classes=5, ids_per_class=6, images_per_id=2, size=32)


@pytest.fixture(scope="session")
def tiny_settings() -> list[str]:
    return list(TINY_SETTINGS)
