"""Deep ensembles of surrogate runs: K independently trained surrogates whose predicted fields are averaged.

Why: on small data the conditioner's error has a large variance part (which minimum a run lands in depends on its
seed); the mean of K members trained from different seeds cancels part of it, and their disagreement is a spread
that needs no dropout (Lakshminarayanan, Pritzel and Blundell, "Simple and scalable predictive uncertainty
estimation using deep ensembles", NeurIPS 2017). Members are ordinary surrogate runs, so they train in parallel on
separate cores, GPUs or machines; this module only combines them. It is ours because no library of the field
averages whole surrogate runs (their own scalers, symmetry averaging and fine-tuned decoders).

``fabml surrogate ensemble RUN1 RUN2 ... --out ENS`` writes ``ENS/ensemble.json`` naming the members (paths
relative to ``ENS``, so the tree can move as a whole) and ``ENS/run.json`` (job ``surrogate``, kind ``ensemble``,
so ``fabml info`` knows the folder); ``predict``, ``evaluate`` and ``report`` take ``ENS`` as
their run. Requirements, each checked with a one-line error: at least two distinct members, each with a trained
conditioner; the same input kind, input shape and parameter columns and the same field shape ``[T, M, V]``; the
same case split (identical ``splits/*.csv``), so that ``evaluate --split test`` is held out for every member.

Prediction for inputs ``a``, members ``m = 1..K``, each member's mean ``mu_m(a)`` and (Monte-Carlo dropout,
``samples > 1``) variance ``var_m(a)`` in original units::

    mean = (1/K) sum_m mu_m
    var  = (1/K) sum_m var_m + (1/K) sum_m (mu_m - mean)^2        (law of total variance)

so an ensemble returns a spread even with ``samples = 1`` (the members' disagreement). The VAE floor of an
ensemble is the mean of the members' reconstructions (each member's decoder may have been fine-tuned end to end).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fabml.engine.checkpoint import _atomic_write
from fabml.engine.runs import RUN_INFO, RunFolder
from fabml.errors import ConfigError, DataError
from fabml.surrogate.runs import LoadedSurrogate, load_trained

ENSEMBLE_FILE = "ensemble.json"
SHAPE_KEYS = ("input_kind", "input_shape", "input_columns", "time_steps", "nodes", "variables")


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (holds ``ensemble.json``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


@dataclass
class SurrogateEnsemble:
    """Trained member surrogates (eval mode) that predict as one; settings, sizes and split are the first member's
    (:func:`make_ensemble` checked that the members agree)."""

    root: Path
    members: list[LoadedSurrogate]
    member_dirs: list[Path]
    notes: list[str] = field(default_factory=list)
    spread_scale: float = 1.0  # ENS/calibration.json (fabml.surrogate.calibration); the members' own are not used

    @property
    def cfg(self) -> Any:
        return self.members[0].cfg

    @property
    def shapes(self) -> Any:
        return self.members[0].shapes

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def trained(self) -> list[str]:
        """The modes every member trained."""
        return [m for m in self.members[0].trained if all(m in other.trained for other in self.members[1:])]

    @property
    def split_dir(self) -> Path:
        """The run whose ``splits/`` (shared by all members) and latents the evaluation reads."""
        return self.member_dirs[0]

    def predict_arrays(self, inputs_batch: np.ndarray | torch.Tensor, samples: int = 1, batch_size: int = 64,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [n, T, M, V], std [n, T, M, V])`` in original units: the members' mean and the total spread
        (module docstring) times ``spread_scale``; each member predicts as
        :func:`fabml.surrogate.pipeline.predict_arrays` does."""
        from fabml.surrogate.pipeline import predict_arrays

        means, variances = [], []
        for member in self.members:
            mean, std = predict_arrays(member, inputs_batch, samples, batch_size, seed)
            means.append(mean.astype(np.float64))
            variances.append(np.zeros_like(means[-1]) if std is None else std.astype(np.float64) ** 2)
        mu = np.mean(means, axis=0)
        var = np.mean(variances, axis=0) + np.mean([(m - mu) ** 2 for m in means], axis=0)
        return mu.astype(np.float32), (np.sqrt(var) * self.spread_scale).astype(np.float32)

    def reconstruct(self, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The members' mean reconstruction of true fields ``[n, T, M, V]`` (original units) and the first
        member's latent means ``[n, Z]`` (:func:`fabml.surrogate.evaluation.reconstruct`)."""
        from fabml.surrogate.evaluation import reconstruct

        outs = [reconstruct(member, fields) for member in self.members]
        return np.mean([r for r, _ in outs], axis=0).astype(np.float32), outs[0][1]


def _shape_summary(loaded: LoadedSurrogate) -> dict[str, Any]:
    d = loaded.shapes.to_dict()
    return {k: (list(d[k]) if isinstance(d.get(k), (list, tuple)) else d.get(k)) for k in SHAPE_KEYS}


def _split_of(run_dir: Path) -> dict[str, list[int]]:
    from fabml.data.simulation_dataset import read_case_split

    return {part: [int(i) for i in idx] for part, idx in read_case_split(run_dir).items()}


def make_ensemble(members: Sequence[str | Path], out: str | Path) -> SurrogateEnsemble:
    """Check the member runs and write ``out/ensemble.json``; returns the loaded ensemble (with notes)."""
    dirs = [Path(m) for m in members]
    if len(dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 member runs, got {len(dirs)}")
    resolved = [d.resolve() for d in dirs]
    repeated = sorted({str(d) for d in resolved if resolved.count(d) > 1})
    if repeated:
        raise ConfigError(f"member run {repeated[0]} is named more than once: an ensemble needs distinct runs")
    out = Path(out)
    if out.resolve() in resolved:
        raise ConfigError(f"--out {out} is one of the member runs: choose a new folder for the ensemble")
    if (out / RUN_INFO).is_file() and not is_ensemble(out):
        raise DataError(f"{out} holds a training run: choose a new folder for the ensemble")
    loaded = [load_trained(d) for d in dirs]
    for d, member in zip(dirs, loaded):
        if not {"conditioner", "e2e"} & set(member.trained):
            raise DataError(f"member run {d} has no trained conditioner (trained: "
                            f"{', '.join(member.trained) or 'nothing'}): train --mode conditioner, e2e or all first")
    first, split0 = _shape_summary(loaded[0]), _split_of(dirs[0])
    for d, member in zip(dirs[1:], loaded[1:]):
        shape = _shape_summary(member)
        diff = [k for k in SHAPE_KEYS if shape[k] != first[k]]
        if diff:
            k = diff[0]
            raise DataError(f"member run {d} has {k} {shape[k]} but {dirs[0]} has {first[k]}: members must predict "
                            "the same fields from the same inputs")
        if _split_of(d) != split0:
            raise DataError(f"member run {d} split its cases differently from {dirs[0]} (splits/*.csv): train the "
                            "members on one split (the same data.split_seed and fractions) so test cases stay held out")
    seeds = [int(member.cfg.seed) for member in loaded]
    notes = []
    if len(set(seeds)) < len(seeds):
        notes.append(f"members share a seed ({seeds}): members trained the same way from the same seed are the "
                     "same model; train each with its own --set seed=K")
    out.mkdir(parents=True, exist_ok=True)
    record = {"job": "surrogate", "kind": "ensemble",
              "members": [os.path.relpath(d.resolve(), out.resolve()) for d in dirs], "seeds": seeds,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(record, indent=2).encode("utf-8")
    _atomic_write(out / ENSEMBLE_FILE, lambda handle: handle.write(text))
    # run.json after ensemble.json: a folder with run.json alone is never taken for an ensemble
    RunFolder.create(out, "surrogate").update_info(kind="ensemble", members=record["members"], seeds=seeds)
    return SurrogateEnsemble(out, loaded, dirs, notes)


def read_members(root: str | Path) -> list[Path]:
    """The member run folders named by ``root/ensemble.json`` (resolved against ``root``)."""
    root = Path(root)
    path = root / ENSEMBLE_FILE
    try:
        record = json.loads(path.read_text())
        names = [str(m) for m in record["members"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a readable ensemble file ({type(err).__name__}: {err}); make it again with "
                        "`fabml surrogate ensemble RUN RUN ... --out`") from None
    dirs = [Path(os.path.normpath(root / name)) for name in names]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"member run {d} of the ensemble {root} not found: move the members with the ensemble "
                            "folder or make the ensemble again")
    return dirs


def load_ensemble(root: str | Path, device: torch.device | str = "cpu") -> SurrogateEnsemble:
    """The ensemble in ``root``: every member loaded (:func:`fabml.surrogate.runs.load_trained`) on ``device``."""
    dirs = read_members(root)
    return SurrogateEnsemble(Path(root), [load_trained(d, device) for d in dirs], dirs)
