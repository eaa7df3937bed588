"""Fixtures shared by every test folder."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny tensors only contend on the shared CPU cores with a second
    thread, and resume checks stay bit-exact. Folders and modules opt in with ``usefixtures``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
