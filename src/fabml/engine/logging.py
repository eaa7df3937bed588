"""Per-epoch metrics to ``metrics.csv`` (and optionally TensorBoard); the trainer's progress bar.

The trainer prints through :data:`console`, which is :data:`fabml.console.err` (stderr: no wrapping,
no markup parsing), so a command's results on stdout stay clean.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fabml.console import err as console
from fabml.console import progress
from fabml.errors import ConfigError

__all__ = ["MetricsLogger", "EpochProgress", "progress_bar", "console"]


class MetricsLogger:
    """Appends one row per epoch to ``run_dir/metrics.csv``; optional TensorBoard under ``run_dir/tensorboard``.

    The CSV header is the union of all keys seen, in first-seen order; when a new key
    appears the file is rewritten with the wider header (old rows get empty cells).
    With ``enabled=False`` (non-zero DDP ranks) nothing is written.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = False,
        enabled: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.enabled = enabled
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard=true but the tensorboard package is missing: "
                    "pip install fabml[tensorboard] (or set train.tensorboard=false)"
                ) from None
            # purge_step drops events a crashed run wrote after its last checkpoint.
            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def read_rows(self) -> list[dict[str, str]]:
        """Rows already in ``metrics.csv`` (values as strings)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def log(self, row: Mapping[str, Any], step: int | None = None) -> None:
        """Append ``row`` to the CSV and, for numeric values, to TensorBoard at ``step`` (default ``row['epoch']``)."""
        if not self.enabled:
            return
        row = {k: _cell(v) for k, v in row.items()}
        header = self._header()
        if header is None:
            self._write([row], list(row))
        elif all(k in header for k in row):
            with open(self.path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=header).writerow(row)
        else:
            rows = self.read_rows() + [row]
            self._write(rows, header + [k for k in row if k not in header])
        if self._writer is not None:
            tb_step = step if step is not None else int(row.get("epoch", 0))
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._writer.add_scalar(key, value, tb_step)
            self._writer.flush()

    def log_step(self, values: Mapping[str, float], step: int) -> None:
        """Per-step scalars, TensorBoard only (the CSV stays one row per epoch)."""
        if self.enabled and self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"step/{key}", float(value), step)

    def rewrite(self, rows: list[Mapping[str, Any]]) -> None:
        """Replace the CSV by ``rows`` (used on resume, so it matches the checkpoint's history)."""
        if not self.enabled:
            return
        header: list[str] = []
        for row in rows:
            header += [k for k in row if k not in header]
        if rows:
            self._write([{k: _cell(v) for k, v in r.items()} for r in rows], header)
        elif self.path.exists():
            self.path.unlink()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _header(self) -> list[str] | None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with open(self.path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None)

    def _write(self, rows: list[Mapping[str, Any]], header: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)


def _cell(value: Any) -> Any:
    """Plain python scalars for CSV/TensorBoard (tensors and numpy scalars via ``.item()``)."""
    return value.item() if hasattr(value, "item") else value


class EpochProgress:
    """A rich progress bar over one epoch's batches showing loss, lr and samples/s.

    Use as a context manager; with ``enabled=False`` (or when stderr is not a terminal,
    e.g. a log file) every call is a no-op and nothing is printed, not even an empty line.
    The bar is transient: the trainer prints a one-line summary per epoch instead.
    """

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._progress: Progress | None = None
        self._task = None
        if enabled:
            self._progress = progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}", markup=False),
                TextColumn("lr {task.fields[lr]}", markup=False),
                TextColumn("{task.fields[speed]} samples/s", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
        self.enabled = self._progress is not None
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total, loss="-", lr="-", speed="-")

    def __enter__(self) -> "EpochProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(
        self,
        advance: int = 1,
        loss: float | None = None,
        lr: float | None = None,
        samples_per_s: float | None = None,
    ) -> None:
        if self._progress is None:
            return
        fields: dict[str, str] = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4g}"
        if lr is not None:
            fields["lr"] = f"{lr:.2e}"
        if samples_per_s is not None:
            fields["speed"] = f"{samples_per_s:,.0f}"
        self._progress.update(self._task, advance=advance, **fields)


def progress_bar(total: int, description: str, enabled: bool = True) -> EpochProgress:
    """A progress bar over ``total`` batches (see :class:`EpochProgress`)."""
    return EpochProgress(total, description, enabled)
