"""fabml.console: result lines never wrapped or markup-parsed, tables never truncated, bars silent in files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fabml import console as fc
from fabml.console import err, fmt, out, print_error, print_table, progress, table_lines, track

LONG_PATH = "/tmp/" + "a" * 120 + "/[my_run]/model.pt"


def test_a_long_bracketed_path_prints_whole_on_a_40_column_console(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = fc._console(stderr=False)  # how out/err are built, here under COLUMNS=40
    assert narrow.width == 40
    narrow.print(f"fitted padim -> {LONG_PATH}")
    narrow.print("[bold]not markup[/] [red]")
    assert capsys.readouterr().out == f"fitted padim -> {LONG_PATH}\n[bold]not markup[/] [red]\n"


def test_out_goes_to_stdout_and_err_to_stderr(capsys) -> None:
    out.print(f"result {LONG_PATH}")
    err.print("epoch 1/1 | loss [0.5]")
    captured = capsys.readouterr()
    assert captured.out == f"result {LONG_PATH}\n" and captured.err == "epoch 1/1 | loss [0.5]\n"


def test_print_error_is_one_plain_line_on_stderr(capsys) -> None:
    print_error(f"no fitted model at {LONG_PATH}: run `fabml anomaly fit --model NAME --out [x]` first")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: no fitted model at {LONG_PATH}: run `fabml anomaly fit --model NAME --out [x]` first\n"


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (0.85549, "0.855"), (85.5123456, "85.512"), (1234567.891, "1234567.891"), (float("nan"), "nan"),
    (True, "True"), (3, "3"), ("padim", "padim"), (np.float32(0.25), "0.250"), (np.int64(7), "7"),
    (torch.tensor(0.5), "0.500"),
])
def test_fmt(value, text) -> None:
    assert fmt(value) == text


def test_fmt_digits() -> None:
    assert fmt(math.pi, digits=4) == "3.1416" and fmt(2.0, digits=0) == "2"


def test_table_lines_align_and_never_truncate() -> None:
    lines = table_lines(["model", "image_auroc", "fit_seconds"],
                        [["patchcore", 0.98765, 123456.789], ["padim", None, 1.5], ["bad|name", "failed: a\nb"]])
    assert lines == [
        "| model     | image_auroc | fit_seconds |",
        "|-----------|-------------|-------------|",
        "| patchcore | 0.988       | 123456.789  |",
        "| padim     | n/a         | 1.500       |",
        "| bad\\|name | failed: a b |             |",
    ]
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header


def test_table_lines_keep_extra_cells_under_an_empty_header() -> None:
    assert table_lines(["a"], [[1, "extra"]])[2] == "| 1   | extra |"


def test_print_table_title_then_rows(capsys) -> None:
    print_table(["cluster", "maps"], [[0, 12], ["noise", 3]], title="2 families")
    assert capsys.readouterr().out.splitlines() == [
        "2 families", "| cluster | maps |", "|---------|------|", "| 0       | 12   |", "| noise   | 3    |"]


def test_track_in_a_file_yields_everything_and_prints_nothing(capsys) -> None:
    assert not err.is_terminal  # pytest captures stderr: not a terminal
    assert progress() is None
    assert list(track(range(5), "scoring")) == [0, 1, 2, 3, 4]
    assert list(track(iter("abc"), "embedding")) == ["a", "b", "c"]  # no len(): fine too
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # a transient rich bar used to leave "\n" behind


def test_track_on_a_terminal_draws_on_stderr_only(monkeypatch, capsys) -> None:
    monkeypatch.setattr(err, "_force_terminal", True)
    bar = progress()
    assert bar is not None and bar.console is err
    assert list(track(range(3), "scoring")) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # results on stdout stay clean
