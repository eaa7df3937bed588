"""The one console set-up of the package: results to stdout, progress and messages to stderr.

Every command prints through :data:`out` (results) or :data:`err` (progress, warnings, errors).
Both are built so that what a command prints never depends on the terminal or on user data:

- no ``file`` is fixed: each print goes to the current ``sys.stdout``/``sys.stderr`` (pytest's capture too);
- ``soft_wrap=True``: a line is never wrapped at the terminal width (``COLUMNS`` has no effect
  on a result line, so a test or a log parser always finds it whole);
- ``markup=False``, ``highlight=False``, ``emoji=False``: square brackets in a path
  (``runs/[my_run]``) and colons in a file name print as they are;
- tables are plain aligned markdown (:func:`table_lines`), so no column is ever cut to ``85.5…``
  and a table pasted into a report or read by a script stays a table;
- progress bars (:func:`track`, :func:`progress`) draw on :data:`err` only when stderr is a terminal;
  redirected to a file they print nothing (no blank lines, no escape codes).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.text import Text

__all__ = ["out", "err", "fmt", "table_lines", "print_table", "print_error", "progress", "track"]

T = TypeVar("T")


def _console(stderr: bool) -> Console:
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False, emoji=False)


out: Console = _console(stderr=False)
"""Results of a command (stdout)."""

err: Console = _console(stderr=True)
"""Progress bars, per-epoch training lines, warnings and errors (stderr)."""


def fmt(value: Any, digits: int = 3) -> str:
    """One cell of a result table: floats to ``digits`` decimals, ``None`` as ``n/a``, the rest as ``str``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        return fmt(value.item(), digits)
    return str(value)


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> list[str]:
    """A markdown table with padded columns, as lines; cells go through :func:`fmt` (never truncated).

    Rows shorter than ``headers`` are padded with empty cells; longer rows keep their extra cells
    (a failure message, say) under an empty header. A ``|`` in a cell is escaped (``\\|``) and a line
    break becomes a space, so every row stays one table line.
    """
    width = max([len(headers)] + [len(r) for r in rows])
    head = [_cell(h) for h in headers] + [""] * (width - len(headers))
    body = [[_cell(fmt(c, digits)) for c in r] + [""] * (width - len(r)) for r in rows]
    sizes = [max(3, len(head[i]), *(len(r[i]) for r in body)) for i in range(width)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(s) for c, s in zip(cells, sizes)) + " |"

    return [line(head), "|" + "|".join("-" * (s + 2) for s in sizes) + "|"] + [line(r) for r in body]


def _cell(text: str) -> str:
    return " ".join(str(text).splitlines()).replace("|", "\\|")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                console: Console | None = None, digits: int = 3) -> None:
    """Print :func:`table_lines` (with an optional title line) to ``console`` (default :data:`out`)."""
    target = console or out
    if title:
        target.print(title)
    for text in table_lines(headers, rows, digits):
        target.print(text)


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, the prefix in bold red on a terminal; the message is never parsed as markup."""
    text = Text("error: ", style="bold red")
    text.append(message)
    err.print(text)



def progress(*columns: ProgressColumn) -> Progress | None:
    """A transient rich :class:`~rich.progress.Progress` on :data:`err`, or ``None`` when stderr is not a terminal.

    Without ``columns``: description, bar, ``done/total``, elapsed, remaining. A caller that gets
    ``None`` draws nothing, so output redirected to a file holds no bar remnants (a transient rich bar
    on a non-terminal still writes an empty line when it stops).
    """
    if not err.is_terminal:
        return None
    columns = columns or (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=err, transient=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a transient progress bar on a terminal (see :func:`progress`); silently otherwise."""
    bar = progress()
    if bar is None:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar:
        yield from bar.track(items, total=total, description=description)
