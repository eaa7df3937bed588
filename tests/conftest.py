"""Fixtures shared by every test folder."""

from __future__ import annotations

from typing import Callable, Iterator

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


@pytest.fixture
def cli_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable[[list[str]], str]:
    """``cli_error(args)`` runs ``fabml ARGS`` through the real entry point, asserts it exits with 2 after exactly
    one ``error:`` line on stderr, and returns that line."""
    from fabml.cli import main

    def run(args: list[str]) -> str:
        monkeypatch.setattr("sys.argv", ["fabml", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        return lines[0]

    return run
