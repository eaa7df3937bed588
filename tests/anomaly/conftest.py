"""A tiny generated inspection set in the per-type layout: Good/ normals, Spot/ defects with masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.data.synthetic_inspection import make_inspection_set


@pytest.fixture(scope="session")
def inspection_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inspection_set(tmp_path_factory.mktemp("inspection"))


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this folder runs with one torch thread (tests/conftest.py)."""
