"""The surrogate job's steps as plain functions: train (modes vae | conditioner | e2e | all), load, predict.

The CLI, the demo, the evaluation and the benchmark call these; each reads and writes the run folder of
:mod:`fabml.surrogate.runs` and returns what it computed. Progress lines go to stderr; results are returned.

Flow of ``train``::

    fields file + inputs  ->  match cases by id  ->  seeded split (RUN/splits, made once)
      -> field scaler fitted on the train cases (vae / all; the other modes reuse the trained VAE's)
      -> the trainer in RUN/train/<mode> (resume, best checkpoint by validation loss, early stopping)
      -> RUN/model.pt from the best checkpoint (+ latent_vectors.npy / xs.npy after the VAE trains)

Modes (:mod:`fabml.surrogate.method` has the losses):

- ``vae``: the hierarchical VAE on the fields (``train_vae``); writes the latents of every case.
- ``conditioner``: the conditioner on the saved latents (``LatentDataset``: inputs -> z, xs), VAE frozen
  (``train_conditioner``); needs a run whose VAE trained.
- ``e2e``: inputs -> conditioner -> frozen decoder -> field (``train_e2e``); starts from the run's trained
  conditioner when there is one.
- ``all``: one trainer run with the stages vae -> conditioner -> e2e (``train.stages``; each stage's epochs
  and lr from ``train_vae`` / ``train_conditioner`` / ``train_e2e``; trainable ``vae``, then
  ``conditioner``, then ``conditioner``); the conditioner stage takes its targets from the frozen encoder's
  means of each batch. Everything else (batch size, precision, device, clipping, ...) comes from
  ``train_vae``; early stopping is off (it would end the run inside the vae stage) and the time budget is the
  sum of the three sections' ``max_minutes`` (when each has one).

Validation (every ``eval.validate_every`` epochs and in each stage's last epoch) computes the stage's loss
on the val split without sampling (``val_loss``, the monitor); ``eval.overfit_ratio`` warns once when
``val_loss / loss`` exceeds it. A ``train_<mode>`` section's own ``validate_every`` / ``overfit_ratio``
win when set to anything but the trainer's defaults (1 / 0). The trainer's seed is ``seed``.
Mixed precision is ``train_<mode>.precision``, gradient checkpointing ``vae.gradient_checkpointing``,
``torch.compile`` ``train_<mode>.compile``; under ``torchrun`` the modes run with DDP.

Prediction: :func:`predict_arrays` turns raw inputs (parameters in their units, images in [0, 1]) into
fields in original units; with ``samples > 1`` the conditioner's dropout stays on (Monte-Carlo dropout)
and the mean and standard deviation over the samples are returned.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fabml.config import from_dict, load_config, to_dict
from fabml.console import err
from fabml.engine.distributed import is_main_process, main_process_only
from fabml.engine.hardware import peak_rss_mb
from fabml.engine.runs import CONFIG, RunFolder
from fabml.engine.train_config import StageConfig, TrainConfig
from fabml.errors import ConfigError, DataError
from fabml.surrogate.calibration import read_spread_scale
from fabml.surrogate.config import MODES, SurrogateConfig
from fabml.surrogate.ensemble import SurrogateEnsemble, is_ensemble, load_ensemble
from fabml.surrogate.runs import (
    JOB,
    LATENTS,
    PREDICTIONS,
    SCALER,
    SPLITS,
    TRAIN,
    XS,
    LoadedSurrogate,
    SurrogateShapes,
    build_models,
    load_trained,
    open_run,
    save_model,
    shapes_of,
)
from fabml.surrogate.symmetry import GridMotion, check_symmetry, map_field, map_image, motions

#: the config sections a mode's result depends on (compared by train.auto_resume, beside the train section)
MODE_SECTIONS = {
    "vae": ("data", "vae"),
    "conditioner": ("data", "vae", "conditioner"),
    "e2e": ("data", "vae", "conditioner", "e2e"),
    "all": ("data", "vae", "conditioner", "e2e", "train_conditioner", "train_e2e"),
}


# ----------------------------------------------------------------------------------------- config
def make_config(run_dir: str | Path, config: str | Path | None = None, overrides: Sequence[str] | None = None,
                data: str | Path | None = None, inputs: str | Path | None = None, allow_pickle: bool = False,
                mode: str | None = None) -> SurrogateConfig:
    """The settings of a ``train``: defaults <- ``RUN/config.yaml`` (when the run has one and no ``config``
    file is given) <- ``config`` <- ``overrides`` <- ``data`` / ``inputs`` / ``allow_pickle`` / ``mode``.
    So ``train --mode conditioner --out RUN`` after ``train --mode vae --data F --inputs I --out RUN`` keeps
    the first call's data and settings."""
    base = Path(run_dir) / CONFIG
    source = config if config is not None else (base if base.is_file() else None)
    cfg = load_config(SurrogateConfig, source, list(overrides or []))
    if data is not None:
        cfg.data.fields = str(Path(data).resolve())
    if inputs is not None:
        cfg.data.inputs = str(Path(inputs).resolve())
    if allow_pickle:
        cfg.data.allow_pickle = True
    if mode is not None:
        cfg.mode = mode
    return cfg


def mode_train_config(cfg: SurrogateConfig, mode: str) -> tuple[TrainConfig, list[str]]:
    """The trainer settings of ``mode`` (see the module docstring) and notes on what was adjusted."""
    notes: list[str] = []
    if mode == "all":
        tcfg = copy.deepcopy(cfg.train_vae)
        sections = (("vae", cfg.train_vae, "vae"), ("conditioner", cfg.train_conditioner, "conditioner"),
                    ("e2e", cfg.train_e2e, "conditioner"))
        tcfg.stages = [StageConfig(name=name, epochs=int(section.epochs), lr=float(section.lr), trainable=[module])
                       for name, section, module in sections]
        budgets = [float(section.max_minutes) for _, section, _ in sections]
        tcfg.max_minutes = sum(budgets) if all(b > 0 for b in budgets) else 0.0
        if any(b > 0 for b in budgets) and not tcfg.max_minutes:
            notes.append("train_*.max_minutes is not used in mode all unless every mode has a budget (their sum "
                         "is the run's)")
        if tcfg.early_stop_patience:
            notes.append(f"train_vae.early_stop_patience={tcfg.early_stop_patience} is not used in mode all "
                         "(it would end the run inside the vae stage); train the modes one by one to stop each early")
            tcfg.early_stop_patience = 0
    elif mode in MODES:
        tcfg = copy.deepcopy(getattr(cfg, f"train_{mode}"))
    else:
        raise ConfigError(f"--mode {mode!r} is unknown; choose one of: {', '.join(MODES)}")
    defaults = TrainConfig()
    if tcfg.validate_every == defaults.validate_every:
        tcfg.validate_every = int(cfg.eval.validate_every)
    if tcfg.overfit_ratio == defaults.overfit_ratio:
        tcfg.overfit_ratio = float(cfg.eval.overfit_ratio)
    tcfg.seed = int(cfg.seed)
    return tcfg, notes


def mode_job_config(cfg: SurrogateConfig, mode: str) -> dict[str, Any]:
    """The parts of the config ``mode``'s training depends on (what ``train.auto_resume`` compares)."""
    full = to_dict(cfg)
    return {**{key: full[key] for key in MODE_SECTIONS[mode]}, "seed": cfg.seed}


# ------------------------------------------------------------------------------------------- data
@dataclass
class CaseData:
    """The matched data of a run: the field source, the inputs, ``rows`` [N] (each field case's inputs row),
    the split (indices into the source) and the sizes."""

    source: Any
    inputs: Any
    rows: np.ndarray
    split: dict[str, np.ndarray]
    shapes: SurrogateShapes


def open_case_data(cfg: SurrogateConfig, run: RunFolder, new_split: bool = False) -> CaseData:
    """Open the fields and inputs of ``cfg.data``, match them by case id, and make (once, on the main process;
    again when ``new_split``) or read the run's split."""
    from fabml.data.simulation_dataset import read_case_split, split_cases, write_case_split
    from fabml.data.simulation_inputs import match_cases, read_inputs
    from fabml.data.simulation_io import open_fields

    if not cfg.data.fields:
        raise ConfigError("no fields file: pass --data FIELDS (or set data.fields)")
    source = open_fields(cfg.data)
    inputs = read_inputs(cfg.data)
    rows = match_cases(source, inputs)
    n = int(source.shape[0])
    folder = run.sub(SPLITS)

    def make_split() -> None:
        if new_split or not (folder / "train.csv").is_file():
            parts = split_cases(n, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
            write_case_split(parts, run.root, source.case_ids)

    main_process_only(make_split, "the case split")
    split = read_case_split(run.root, source.case_ids)
    return CaseData(source, inputs, rows, split, shapes_of(cfg, source, inputs))


def fit_scalers(cfg: SurrogateConfig, data: CaseData) -> tuple[Any, Any | None]:
    """The field scaler (per variable, min-max to [-scale_range, scale_range]) and, for parameter inputs,
    the parameter scaler (standardisation), both fitted on the train cases only."""
    from fabml.data.simulation_scaler import FieldScaler, ParamScaler

    train = data.split["train"]
    field_scaler = FieldScaler.fit(data.source, train, cfg.data.scale_range)
    param_scaler = None
    if data.inputs.kind == "params":
        param_scaler = ParamScaler.fit(data.inputs.params, data.rows[train])
    return field_scaler, param_scaler


def write_scalers(run: RunFolder, field_scaler: Any, param_scaler: Any | None) -> Path:
    """``RUN/scaler.json``: ``{"fields": ..., "params": ... | null}`` (main process only)."""
    path = run.root / SCALER
    if is_main_process():
        payload = {"fields": field_scaler.state_dict(),
                   "params": param_scaler.state_dict() if param_scaler is not None else None}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        tmp.replace(path)
    return path


def field_dataset(cfg: SurrogateConfig, data: CaseData, indices: np.ndarray, field_scaler: Any,
                  param_scaler: Any | None, preload: bool) -> Dataset:
    """Cases ``indices`` as ``{"field", "inputs", "index"}`` items (scaled; lazy or preloaded)."""
    from fabml.data.simulation_dataset import SimulationDataset

    return SimulationDataset(data.source, data.inputs, data.rows, indices, field_scaler, param_scaler,
                             cfg.data.image_size, cfg.data.image_channels, preload)


def latent_dataset(cfg: SurrogateConfig, data: CaseData, run: RunFolder, indices: np.ndarray,
                   param_scaler: Any | None) -> Dataset:
    """Cases ``indices`` as ``{"inputs", "z", "xs", "index"}`` items from the run's saved latents."""
    from fabml.data.simulation_dataset import LatentDataset

    z_path, xs_path = run.root / LATENTS, run.root / XS
    if not z_path.is_file() or not xs_path.is_file():
        raise DataError(f"{z_path} or {xs_path} not found: train the VAE first (`fabml surrogate train --mode vae "
                        f"--out {run.root}`)")
    return LatentDataset(data.inputs, data.rows, indices, np.load(z_path), np.load(xs_path), param_scaler,
                         cfg.data.image_size, cfg.data.image_channels)


# ------------------------------------------------------------------------------------------ train
@dataclass
class TrainReport:
    """What ``train`` did: the trainer's result, the files written, the data sizes and notes."""

    mode: str
    result: Any
    model_path: Path | None
    latents_path: Path | None
    xs_path: Path | None
    split_sizes: dict[str, int]
    shapes: SurrogateShapes
    preload: bool
    trained: list[str]
    peak_rss_mb: float
    notes: list[str] = field(default_factory=list)


def make_validator(method_batches: DataLoader) -> Callable[[Any], dict[str, float]]:
    """The trainer's ``validate`` callback: the active stage's losses on the val split without sampling
    (:meth:`SurrogateMethod.stage_losses` with ``train=False``), averaged over cases, as ``val_<term>``."""
    from fabml.engine.trainer import move_to_device

    def validate(method: Any) -> dict[str, float]:
        device = next(method.parameters()).device
        sums: dict[str, float] = {}
        count = 0
        for batch in method_batches:
            batch = move_to_device(batch, device)
            size = int(batch["index"].shape[0])
            for key, value in method.stage_losses(batch, train=False).items():
                if key != "beta":
                    sums[key] = sums.get(key, 0.0) + float(value) * size
            count += size
        return {f"val_{key}": value / max(count, 1) for key, value in sums.items()}

    return validate


def _previous_model(run: RunFolder, mode: str) -> dict[str, Any]:
    """``model.pt`` of the run, for the modes that build on a trained VAE."""
    if not run.has_artefact():
        raise DataError(f"--mode {mode} needs a trained VAE but {run.artefact_path} does not exist: train "
                        f"`--mode vae` (or `--mode all`) into {run.root} first")
    state = run.load_artefact()
    if "vae" not in state.get("trained", []):
        raise DataError(f"the VAE in {run.artefact_path} is untrained: train `--mode vae` into {run.root} first")
    return state


def _check_shapes(stored: SurrogateShapes, current: SurrogateShapes, path: Path) -> None:
    got = (current.time_steps, current.nodes, current.variables, current.input_kind, list(current.input_shape))
    want = (stored.time_steps, stored.nodes, stored.variables, stored.input_kind, list(stored.input_shape))
    if got != want:
        raise DataError(f"the model in {path} was trained on fields [T, M, V] = {list(want[:3])} with {want[3]} inputs "
                        f"{want[4]}, but the data is {list(got[:3])} with {got[3]} inputs {got[4]}: train --mode vae "
                        "(or all) again with --fresh")


def train(cfg: SurrogateConfig, run_dir: str | Path, mode: str | None = None, fresh: bool = False,
          resume: bool = False) -> TrainReport:
    """Train ``mode`` (default ``cfg.mode``) into ``run_dir`` (see the module docstring).

    Running again on the same folder continues that mode's run from ``RUN/train/<mode>/checkpoints/latest.pt``
    when its settings are unchanged (``train_<mode>.auto_resume``); ``resume`` continues with changed settings,
    ``fresh`` starts the mode over. ``model.pt`` is rewritten from the mode's best checkpoint when it ends.
    """
    from fabml.data.simulation_dataset import decide_preload
    from fabml.engine.trainer import Trainer, seed_everything
    from fabml.surrogate.method import build_method

    mode = str(mode or cfg.mode)
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is unknown; choose one of: {', '.join(MODES)}")
    cfg.mode = mode
    run_dir = Path(run_dir)
    RunFolder.create(run_dir, JOB)  # refuses a folder of another job before anything is written
    run = RunFolder(run_dir, JOB)
    notes: list[str] = []
    previous: dict[str, Any] | None = None
    if mode in ("conditioner", "e2e"):
        previous = _previous_model(run, mode)
        stored = from_dict(SurrogateConfig, previous["config"])
        if to_dict(stored.vae) != to_dict(cfg.vae):
            notes.append("the vae settings come from the trained VAE in model.pt (the given ones differ)")
        cfg.vae = stored.vae
        cfg.data.layout, cfg.data.grid_shape = stored.data.layout, list(stored.data.grid_shape)
        if mode == "e2e" and {"conditioner", "e2e"} & set(previous.get("trained", [])):
            if to_dict(stored.conditioner) != to_dict(cfg.conditioner):
                notes.append("the conditioner settings come from the trained conditioner in model.pt")
            cfg.conditioner = stored.conditioner
    RunFolder.create(run_dir, JOB, config=cfg, seed=cfg.seed)
    # a fresh VAE gets a fresh split of the current data
    data = open_case_data(cfg, run, new_split=fresh and mode in ("vae", "all"))
    shapes = data.shapes
    check_symmetry(cfg.data.symmetry, cfg.data.layout, cfg.data.grid_shape, shapes.input_kind, cfg.data.grid_nodes)
    if len(data.split["train"]) == 0:
        raise DataError("the train split is empty: lower data.val_fraction / data.test_fraction")

    # scalers: fitted with the VAE, reused by the modes that build on it
    from fabml.data.simulation_scaler import FieldScaler, ParamScaler

    if previous is None:
        field_scaler, param_scaler = fit_scalers(cfg, data)
        write_scalers(run, field_scaler, param_scaler)
    else:
        _check_shapes(SurrogateShapes.from_dict(previous["shapes"]), shapes, run.artefact_path)
        field_scaler = FieldScaler.from_state(previous["field_scaler"])
        param_scaler = ParamScaler.from_state(previous["param_scaler"]) if previous.get("param_scaler") else None

    seed_everything(cfg.seed)
    vae, conditioner = build_models(cfg, shapes)
    if previous is not None:
        vae.load_state_dict(previous["vae"])
        if mode == "e2e" and {"conditioner", "e2e"} & set(previous.get("trained", [])):
            conditioner.load_state_dict(previous["conditioner"])
        elif mode == "e2e":
            notes.append("e2e starts from an untrained conditioner (train --mode conditioner first for a better start)")
    method = build_method(vae, conditioner, cfg, mode, field_scale=(field_scaler.inverse_scale, field_scaler.centre))
    tcfg, tnotes = mode_train_config(cfg, mode)
    notes += tnotes

    preload = decide_preload(cfg.data, data.source)
    if mode == "conditioner":
        train_set = latent_dataset(cfg, data, run, data.split["train"], param_scaler)
        val_set = latent_dataset(cfg, data, run, data.split["val"], param_scaler) if len(data.split["val"]) else None
    else:
        train_set = field_dataset(cfg, data, data.split["train"], field_scaler, param_scaler, preload)
        val_set = (field_dataset(cfg, data, data.split["val"], field_scaler, param_scaler, preload)
                   if len(data.split["val"]) else None)
    validate = None
    if val_set is not None:
        val_batch = max(1, int(tcfg.batch_size))
        validate = make_validator(DataLoader(val_set, batch_size=val_batch, shuffle=False, num_workers=0))
    elif tcfg.monitor.startswith("val_"):
        notes.append(f"the val split is empty: train.monitor {tcfg.monitor} -> loss (the best checkpoint is by "
                     "training loss); set data.val_fraction > 0 to select by validation")
        tcfg.monitor = "loss"
    if len(train_set) < tcfg.batch_size and tcfg.drop_last:
        notes.append(f"{len(train_set)} training cases < train batch {tcfg.batch_size}: one smaller batch per epoch "
                     "(drop_last off)")
        tcfg.drop_last = False

    trainer = Trainer(method, tcfg, run.sub(TRAIN) / mode, train_set, validate=validate,
                      job_config=mode_job_config(cfg, mode))
    result = trainer.fit(resume=resume, fresh=fresh)

    trained = _trained_modes(mode, result, previous)
    checkpoints = dict(previous.get("checkpoints", {})) if previous else {}

    def write_outputs() -> tuple[Path | None, Path | None, Path | None]:
        checkpoints[mode] = _load_best(method, result.checkpoint_dir)
        model_path = save_model(run, cfg, method.vae, method.conditioner, field_scaler, param_scaler, shapes,
                                trained, checkpoints)
        if mode not in ("vae", "all"):
            return model_path, None, None
        everything = np.arange(shapes.cases, dtype=np.int64)
        dataset = field_dataset(cfg, data, everything, field_scaler, param_scaler, preload=False)
        return (model_path, *write_latents(run, method.vae, dataset, tcfg.batch_size))

    # the main process writes model.pt and the latents from the best checkpoint while the other ranks wait
    model_path, latents_path, xs_path = main_process_only(write_outputs, "writing model.pt") or (None, None, None)
    for note in notes:
        err.print(f"note: {note}")
    return TrainReport(mode, result, model_path, latents_path, xs_path,
                       {k: int(len(v)) for k, v in data.split.items()}, shapes, preload, trained, peak_rss_mb(), notes)


def _trained_modes(mode: str, result: Any, previous: dict[str, Any] | None) -> list[str]:
    """The modes whose weights ``model.pt`` holds after this run (in mode ``all``: the stages that ran)."""
    before = list(previous.get("trained", [])) if previous else []
    if mode == "all":
        ran = {row.get("stage") for row in result.history}
        return [stage for stage in ("vae", "conditioner", "e2e") if stage in ran]
    if mode == "vae":
        return ["vae"]  # a new VAE makes any earlier conditioner stale
    if mode == "conditioner":
        return [m for m in before if m == "vae"] + ["conditioner"]
    return [m for m in before if m in ("vae", "conditioner")] + ["e2e"]


def _load_best(method: nn.Module, checkpoint_dir: Path) -> dict[str, Any]:
    """Load the best checkpoint's weights into ``method`` (the latest when no epoch was best); returns which."""
    from fabml.engine.checkpoint import load_checkpoint

    best, latest = checkpoint_dir / "best.pt", checkpoint_dir / "latest.pt"
    source = best if best.is_file() else latest
    if not source.is_file():
        return {"checkpoint": None, "epoch": 0}
    ckpt = load_checkpoint(source, map_location="cpu")
    method.load_state_dict(ckpt["method"])
    return {"checkpoint": source.stem, "epoch": int(ckpt.get("epoch", 0))}


@torch.no_grad()
def encode_cases(vae: nn.Module, dataset: Dataset, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The VAE's posterior means of every item: ``z`` float32 [n, Z] and ``xs`` float32 [n, S, L], in order."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    zs, xss = [], []
    for batch in DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=0):
        enc = vae.encode(batch["field"].to(device))
        zs.append(enc.mu.float().cpu().numpy())
        xss.append(enc.xs_mu.float().cpu().numpy())
    vae.train(was_training)
    return np.concatenate(zs).astype(np.float32), np.concatenate(xss).astype(np.float32)


def write_latents(run: RunFolder, vae: nn.Module, dataset: Dataset, batch_size: int) -> tuple[Path, Path]:
    """``RUN/latent_vectors.npy`` [N, Z] and ``RUN/xs.npy`` [N, S, L]: every case's latent means, field order."""
    z, xs = encode_cases(vae, dataset, batch_size)
    paths = []
    for name, array in ((LATENTS, z), (XS, xs)):
        path = run.root / name
        tmp = path.with_name(f".{name}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]


# ---------------------------------------------------------------------------------------- predict
def load_surrogate(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedSurrogate | SurrogateEnsemble:
    """The run's trained surrogate (``model.pt``): VAE and conditioner in eval mode on ``device``, scalers,
    config and sizes; for an ensemble folder (``ensemble.json``, :mod:`fabml.surrogate.ensemble`) every member;
    the spread's factor from ``RUN/calibration.json`` when there is one (:mod:`fabml.surrogate.calibration`)."""
    loaded = load_ensemble(run_dir, device) if is_ensemble(run_dir) else load_trained(run_dir, device)
    loaded.spread_scale = read_spread_scale(run_dir)
    return loaded


def _dropout_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def decode_inputs(vae: nn.Module, cond: nn.Module, inputs: torch.Tensor, average: list[GridMotion] | None = None,
                  grid_nodes: str = "symmetric") -> torch.Tensor:
    """Scaled fields ``[b, T, M, V]`` from model inputs ``[b, ...]``: conditioner, then the VAE's decoder.

    ``average`` (the symmetry group, :func:`fabml.surrogate.symmetry.motions`): the mean over its motions
    ``g`` of ``g^-1 u(g a)`` for image inputs ``a`` ``[b, C, S, S]``, decoded as one batch of ``len(average) * b``."""
    if not average or len(average) == 1:
        z, xs = cond(inputs)
        return vae.decode(z, xs).float().permute(0, 2, 3, 1)
    moved = torch.cat([map_image(inputs, g, grid_nodes) for g in average])
    z, xs = cond(moved)
    fields = vae.decode(z, xs).float().permute(0, 2, 3, 1).chunk(len(average))
    back = [map_field(f, g, grid_nodes, node_dim=2, inverse=True) for f, g in zip(fields, average)]
    return torch.stack(back).mean(0)


@torch.no_grad()
def predict_arrays(loaded: LoadedSurrogate | SurrogateEnsemble, inputs_batch: np.ndarray | torch.Tensor,
                   samples: int = 1, batch_size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Fields predicted from raw inputs: ``inputs_batch`` float32 ``[n, P]`` (parameters in their own units;
    the run's parameter scaler is applied here) or ``[n, C, S, S]`` (images in [0, 1]).

    Returns ``(mean [n, T, M, V], std [n, T, M, V] | None)`` in original units. ``samples = 1``: one
    deterministic pass (dropout off), std None. ``samples > 1``: Monte-Carlo dropout: the conditioner's
    dropout layers stay on and each input is decoded ``samples`` times (seeded by ``seed``, so repeated
    calls agree); mean and standard deviation (ddof 0) over the samples of the fields in original units, the
    standard deviation times the run's ``spread_scale`` (1 unless calibrated).
    With ``data.symmetry`` set and ``eval.symmetry_average`` each pass is the mean over the symmetry group
    of the fields predicted from the moved inputs, each moved back (:func:`decode_inputs`). An ensemble
    returns its members' mean and total spread, std never None (:class:`fabml.surrogate.ensemble.SurrogateEnsemble`).
    """
    if isinstance(loaded, SurrogateEnsemble):
        return loaded.predict_arrays(inputs_batch, samples, batch_size, seed)
    samples = int(samples)
    if samples < 1:
        raise ConfigError(f"--samples {samples} must be >= 1")
    x = torch.as_tensor(np.asarray(inputs_batch, dtype=np.float32))
    expected = tuple(loaded.shapes.input_shape)
    if tuple(x.shape[1:]) != expected:
        raise DataError(f"inputs of shape {list(x.shape[1:])} per case, but the surrogate takes {list(expected)} "
                        f"({loaded.shapes.input_kind})")
    if loaded.shapes.input_kind == "params" and loaded.param_scaler is not None:
        x = loaded.param_scaler.transform(x.double()).float()
    vae, cond = loaded.vae, loaded.conditioner
    device = loaded.device
    average = motions(loaded.cfg.data.symmetry) if loaded.cfg.eval.symmetry_average else None
    vae.eval()
    cond.eval()
    dropouts = _dropout_modules(cond) if samples > 1 else []
    for module in dropouts:
        module.train()
    means, stds = [], []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for start in range(0, len(x), max(1, int(batch_size))):
                xb = x[start:start + batch_size].to(device)
                mean = m2 = None
                for k in range(samples):
                    fields = decode_inputs(vae, cond, xb, average, loaded.cfg.data.grid_nodes)  # [b, T, M, V] scaled
                    fields = loaded.field_scaler.inverse(fields.double())
                    if mean is None:
                        mean, m2 = fields.clone(), torch.zeros_like(fields)
                    else:  # Welford's running mean and sum of squared deviations
                        delta = fields - mean
                        mean += delta / (k + 1)
                        m2 += delta * (fields - mean)
                assert mean is not None and m2 is not None
                means.append(mean.float().cpu().numpy())
                if samples > 1:
                    stds.append((m2 / samples).clamp_min(0).sqrt().float().cpu().numpy())
    finally:
        for module in dropouts:
            module.eval()
    t, m, v = loaded.shapes.field_shape
    empty = np.zeros((0, t, m, v), dtype=np.float32)
    mean_out = np.concatenate(means) if means else empty
    std_out = (np.concatenate(stds) * np.float32(loaded.spread_scale) if stds else empty) if samples > 1 else None
    return mean_out, std_out


@dataclass
class PredictReport:
    """What ``predict`` wrote: ``fields.npy`` [n, T, M, V] (original units), ``fields_std.npy`` (samples > 1),
    ``cases.csv`` (row, case_id, input), and the timing."""

    out_dir: Path
    fields_path: Path
    std_path: Path | None
    cases_path: Path
    n_cases: int
    samples: int
    mean_std: float | None
    ms_per_case: float
    notes: list[str] = field(default_factory=list)


def predict(run_dir: str | Path, inputs: str | Path, out: str | Path | None = None, samples: int = 1,
            batch_size: int = 64) -> PredictReport:
    """Predict the fields of new cases from their inputs (a CSV of parameters with the training columns, or a
    folder of images) and write them to ``out`` (default ``RUN/predictions``)."""
    from fabml.data.simulation_dataset import inputs_array
    from fabml.data.simulation_inputs import read_inputs

    run_dir = Path(run_dir)
    loaded = load_surrogate(run_dir)
    if not {"conditioner", "e2e"} & set(loaded.trained):
        raise DataError(f"the surrogate in {run_dir} has no trained conditioner (trained: "
                        f"{', '.join(loaded.trained) or 'nothing'}): train --mode conditioner, e2e or all first")
    cfg, shapes = loaded.cfg, loaded.shapes
    case_inputs = read_inputs(cfg.data, inputs)
    if case_inputs.kind != shapes.input_kind:
        raise DataError(f"inputs {case_inputs.source} are {case_inputs.kind} but the surrogate was trained on "
                        f"{shapes.input_kind} inputs")
    notes: list[str] = []
    if case_inputs.kind == "params" and shapes.input_columns and list(case_inputs.columns) != list(shapes.input_columns):
        if sorted(case_inputs.columns) == sorted(shapes.input_columns):
            order = [list(case_inputs.columns).index(c) for c in shapes.input_columns]
            case_inputs.params = case_inputs.params[:, order]
            case_inputs.columns = list(shapes.input_columns)
            notes.append("the inputs' columns were reordered to the training order")
        else:
            raise DataError(f"inputs {case_inputs.source} have the columns {list(case_inputs.columns)} but the surrogate "
                            f"was trained on {list(shapes.input_columns)}")
    raw = inputs_array(case_inputs, None, cfg.data.image_size, cfg.data.image_channels)
    start = time.perf_counter()
    mean, std = predict_arrays(loaded, raw, samples, batch_size=batch_size, seed=cfg.seed)
    seconds = time.perf_counter() - start
    default_out = (run_dir / PREDICTIONS if isinstance(loaded, SurrogateEnsemble)
                   else open_run(run_dir).sub(PREDICTIONS))
    out_dir = Path(out) if out is not None else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    fields_path = out_dir / "fields.npy"
    np.save(fields_path, mean)
    std_path = None
    if std is not None:
        std_path = out_dir / "fields_std.npy"
        np.save(std_path, std)
        if samples > 1 and isinstance(loaded, LoadedSurrogate) and not _dropout_modules(loaded.conditioner):
            notes.append("the conditioner has no dropout (conditioner.dropout = 0): the spread is 0")
    sources = ([str(p) for p in case_inputs.image_paths] if case_inputs.image_paths is not None
               else [str(case_inputs.source)] * len(case_inputs))
    cases_path = out_dir / "cases.csv"
    pd.DataFrame({"row": np.arange(len(case_inputs)), "case_id": case_inputs.ids, "input": sources}).to_csv(
        cases_path, index=False)
    return PredictReport(out_dir, fields_path, std_path, cases_path, len(case_inputs), int(samples),
                         float(std.mean()) if std is not None and std.size else None,
                         1000.0 * seconds / max(1, len(case_inputs)), notes)
