"""The one run-folder layout every job uses.

```
RUN/config.yaml             the resolved config (the job's config dataclass as YAML)
RUN/run.json                {"job": NAME, "versions": {...}, "seed": ..., "argv": [...], "started": ..., "resumes": [...]}
                            (the trainer adds hardware, world size and train_config where a trainer runs)
RUN/checkpoints/latest.pt   training state after the last finished epoch   (jobs that train with the trainer)
RUN/checkpoints/best.pt     the same at the best monitored epoch
RUN/model.pt                THE fitted artefact: {"job": NAME, "format": 1, ...job-specific state}, written atomically
RUN/metrics.csv             one row per epoch (jobs that train)
RUN/figures/                figures of the run itself (training curves, ...)
RUN/<job folders>/          what later steps write: wafer embeddings/ clusters/ eval/ report/ search/,
                            anomaly evaluation/ predictions/ (and split.json, fit.json, model.onnx)
```

The artefact is what every later command (embed, evaluate, predict, export, ``fabml info``) loads:

- **wafer**: ``train`` writes ``model.pt`` when it ends, from the best checkpoint (the latest one when no epoch
  improved the monitored metric): ``{"job": "wafer", "format": 1, "method": BYOL state_dict, "checkpoint": "best",
  "epoch": E, "config": {...}}``. ``checkpoints/`` stay for ``--resume`` and ``--checkpoint latest``.
- **anomaly**: ``fit`` writes ``model.pt`` after calibration: ``{"job": "anomaly", "format": 1, "name", "model_settings",
  "state_dict", "normalizer", "grades", "config", "calibration"}``; gradient models also have ``checkpoints/``.

Only the main process writes ``config.yaml``, ``run.json`` and ``model.pt`` (every writer here checks
:func:`fabml.engine.distributed.is_main_process`), so a run under ``torchrun`` never has two writers of one file.

Old run folders (written before this layout) have no ``job`` in ``run.json`` or no ``run.json`` at all:
:meth:`RunFolder.open` accepts them when the job's own check (``legacy``) recognises them, so they load as before
(wafer from ``checkpoints/best.pt``, anomaly from ``model.pt``); anything else is refused with one line that says what
the folder lacks.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from fabml.errors import DataError

CONFIG = "config.yaml"
RUN_INFO = "run.json"
ARTEFACT = "model.pt"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
ARTEFACT_FORMAT = 1

__all__ = ["RunFolder", "recorded_job", "CONFIG", "RUN_INFO", "ARTEFACT", "METRICS", "CHECKPOINTS", "FIGURES", "ARTEFACT_FORMAT",
           "versions"]


def versions() -> dict[str, str]:
    """Versions of fabml, torch, numpy and python, as run.json records them."""
    import numpy as np
    import torch

    import fabml

    return {"fabml": fabml.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def recorded_job(run_dir: str | Path) -> str | None:
    """The job ``RUN/run.json`` names; None when there is none or the file cannot be read (the trainer keeps it
    when a fresh start rewrites run.json)."""
    try:
        return RunFolder(run_dir, "").recorded_job()
    except DataError:
        return None


def config_sections(run_dir: str | Path) -> set[str] | None:
    """Top-level section names of ``RUN/config.yaml``; None when there is no readable mapping there.

    Used to recognise run folders written before ``run.json`` named their job.
    """
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return set(data) if isinstance(data, dict) else None


def _is_main() -> bool:
    from fabml.engine.distributed import is_main_process

    return is_main_process()


class RunFolder:
    """Paths of one run folder (see the module docstring) and the few files every job shares.

    Build one with :meth:`create` (a step that starts or resumes a run) or :meth:`open` (a step that reads a run).
    ``legacy`` is True for a folder written before ``run.json`` named its job.
    """

    def __init__(self, root: str | Path, job: str, legacy: bool = False) -> None:
        self.root = Path(root)
        self.job = job
        self.legacy = legacy

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r}, job={self.job!r})"

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def info_path(self) -> Path:
        return self.root / RUN_INFO

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def artefact_path(self) -> Path:
        return self.root / ARTEFACT

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    @property
    def figures(self) -> Path:
        return self.root / FIGURES

    def sub(self, name: str) -> Path:
        """A job-specific subfolder (``embeddings``, ``evaluation``, ...), not created."""
        return self.root / name

    # ------------------------------------------------------------ construction
    @classmethod
    def create(cls, root: str | Path, job: str, config: Any = None, seed: int | None = None) -> "RunFolder":
        """Start (or resume) a run of ``job`` in ``root``: folder, ``config.yaml`` and ``run.json`` (main process only).

        A folder whose ``run.json`` names another job is refused: one folder holds one job's run.
        ``run.json`` keeps what an earlier start recorded (a resume) and adds ``job``, ``versions``, ``seed``,
        ``argv`` and ``started`` where they are missing.
        """
        run = cls(root, job)
        recorded = run.recorded_job()
        if recorded is not None and recorded != job:
            raise DataError(f"{run.root} holds a run of the {recorded} job, not {job}: choose another output folder "
                            "or delete that one")
        if _is_main():
            run.root.mkdir(parents=True, exist_ok=True)
            if config is not None:
                from fabml.config import save_config

                save_config(config, run.config_path)
            info = run.read_info()
            info["job"] = job
            info.setdefault("versions", versions())
            if seed is not None:
                info["seed"] = seed
            info.setdefault("started", datetime.now(timezone.utc).isoformat(timespec="seconds"))
            info.setdefault("argv", list(sys.argv))
            run._write_info(info)
        return run

    @classmethod
    def open(cls, root: str | Path, job: str, legacy: Callable[[Path], bool] | None = None,
             command: str = "") -> "RunFolder":
        """The run of ``job`` in ``root``, checked: an error names what is wrong in one line.

        ``legacy(root)`` says whether a folder without a job in ``run.json`` is an old run of this job.
        ``command`` (e.g. ``fabml wafer train --out``) is what the error suggests to create a run.
        """
        run = cls(root, job)
        make = f"; create one with `{command} {run.root}`" if command else ""
        if not run.root.is_dir():
            raise DataError(f"run folder {run.root} not found{make}")
        recorded = run.recorded_job()
        if recorded is not None:
            if recorded != job:
                raise DataError(f"{run.root} holds a run of the {recorded} job, not {job}: use `fabml {recorded} ... "
                                f"--run {run.root}`")
            return run
        if legacy is not None and legacy(run.root):
            run.legacy = True
            return run
        raise DataError(f"{run.root} is not a run of the {job} job (no {RUN_INFO} naming the job and no {job} files "
                        f"in it){make}")

    # ------------------------------------------------------------------ run.json
    def read_info(self) -> dict[str, Any]:
        """``run.json`` as a dict (empty when absent); a file that is not JSON is an error naming it."""
        if not self.info_path.is_file():
            return {}
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DataError(f"{self.info_path} is not valid JSON: delete it, then rerun the step that wrote it") from None
        if not isinstance(info, dict):
            raise DataError(f"{self.info_path} does not hold a JSON object")
        return info

    def recorded_job(self) -> str | None:
        """The job ``run.json`` names, or None (no run.json, or an old one without ``job``)."""
        job = self.read_info().get("job")
        return str(job) if job else None

    def update_info(self, **fields: Any) -> None:
        """Merge ``fields`` (and ``job``) into ``run.json`` (main process only)."""
        if not _is_main():
            return
        info = self.read_info()
        info.update(fields)
        info["job"] = self.job
        self._write_info(info)

    def _write_info(self, info: dict[str, Any]) -> None:
        from fabml.engine.checkpoint import _atomic_write

        text = json.dumps(info, indent=2, default=str).encode("utf-8")
        _atomic_write(self.info_path, lambda handle: handle.write(text))

    # ------------------------------------------------------------------ artefact
    def save_artefact(self, state: dict[str, Any]) -> Path | None:
        """Write ``model.pt`` atomically with ``job`` and ``format`` added; on other ranks: nothing (returns None)."""
        if not _is_main():
            return None
        from fabml.engine.checkpoint import save_checkpoint

        return save_checkpoint({**state, "job": self.job, "format": ARTEFACT_FORMAT}, self.artefact_path)

    def has_artefact(self) -> bool:
        return self.artefact_path.is_file()

    def load_artefact(self, map_location: str = "cpu") -> dict[str, Any]:
        """``model.pt`` as a dict; one written by another job is refused (one without ``job`` is an old one)."""
        from fabml.engine.checkpoint import load_checkpoint

        state = load_checkpoint(self.artefact_path, map_location=map_location)
        other = state.get("job")
        if other is not None and other != self.job:
            raise DataError(f"{self.artefact_path} was written by the {other} job, not {self.job}: use `fabml {other} "
                            f"... --run {self.root}`")
        return state

    def artefacts(self) -> dict[str, int]:
        """What the run holds, with sizes in bytes: the layout's files first (config, run.json, model.pt,
        metrics.csv, checkpoints), then the job's other top-level files, then each folder (its total)."""
        if not self.root.is_dir():
            return {}
        found: dict[str, int] = {}
        for rel in (CONFIG, RUN_INFO, ARTEFACT, METRICS, f"{CHECKPOINTS}/latest.pt", f"{CHECKPOINTS}/best.pt"):
            path = self.root / rel
            if path.is_file():
                found[rel] = path.stat().st_size
        entries = sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
        for path in entries:
            if path.is_file() and path.name not in found:
                found[path.name] = path.stat().st_size
        for path in entries:
            if path.is_dir() and path.name != CHECKPOINTS:
                found[path.name + "/"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return found
