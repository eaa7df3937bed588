"""A tiny generated inspection set in the per-type layout: Good/ normals, Spot/ defects with masks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from fabml.data.synthetic_inspection import make_inspection_set


@pytest.fixture(scope="session")
def inspection_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inspection_set(tmp_path_factory.mktemp("inspection"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second thread only contends on the shared CPU cores (and resume checks stay bit-exact)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
