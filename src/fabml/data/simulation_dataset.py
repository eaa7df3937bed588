"""Datasets of the surrogate job: field cases + their inputs, lazy or preloaded, and saved latents.

- :func:`split_cases`: seeded train / val / test indices into the field source (the shared
  :func:`fabml.data.splits.split_items` with one item per case); :func:`write_case_split` /
  :func:`read_case_split` keep them in ``RUN/splits/{train,val,test}.csv`` (``index,case_id``).
- :class:`SimulationDataset`: item ``{"field": float32 [V, T, M] scaled, "inputs": float32 [P]
  (standardised) or [C, S, S] in [0, 1], "index": int64}``. ``preload=False`` reads each case from
  the source when asked (bounded memory; see :mod:`fabml.data.simulation_io`); ``preload=True``
  runs the same per-case code once up front and keeps the results (optionally on a device), so
  both give identical items.
- :func:`decide_preload`: ``data.load_all`` = ``auto`` preloads when the sub-sampled fields fit in
  ``data.memory_budget_gb`` (decimal GB), ``true`` / ``false`` force it.
- :class:`LatentDataset`: inputs + the VAE's saved latents (``z`` [N, Z], ``xs`` [N, S, L]), for
  training the conditioner alone.
- :func:`inputs_array`: the model-ready inputs of several cases at once (prediction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from fabml.data.simulation_inputs import CaseInputs, load_image
from fabml.data.simulation_io import FieldSource, format_ids
from fabml.data.simulation_scaler import FieldScaler, ParamScaler
from fabml.data.splits import PARTS, check_fractions, split_items
from fabml.errors import ConfigError, DataError

SPLIT_DIR = "splits"
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


# ------------------------------------------------------------------------------------ splits


def split_cases(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"}`` -> sorted int64 indices into the field source (0..n-1).

    A seeded permutation cut at ``round(val n)`` and ``round((val + train) n)`` (see
    :mod:`fabml.data.splits`); each part with a positive fraction gets at least one case when n allows.
    """
    if int(n) < 1:
        raise DataError("no cases to split: the fields file holds 0 cases")
    train = 1.0 - float(val_fraction) - float(test_fraction)
    try:
        fractions = check_fractions((train, float(val_fraction), float(test_fraction)))
    except ConfigError:
        raise ConfigError(
            f"settings data.val_fraction = {val_fraction} and data.test_fraction = {test_fraction} must each lie in "
            "[0, 1] and leave a positive share for training"
        ) from None
    split = split_items([str(i) for i in range(int(n))], fractions=fractions, seed=int(seed), what="case")
    parts = split.table["part"].to_numpy()
    return {part: np.flatnonzero(parts == part).astype(np.int64) for part in PARTS}


def write_case_split(split: dict[str, np.ndarray], run_dir: str | Path, case_ids: np.ndarray | None = None) -> Path:
    """Write ``run_dir/splits/{train,val,test}.csv`` (columns ``index,case_id``; ``case_ids`` [N]
    maps an index to its id, default the index itself). Returns the splits folder."""
    folder = Path(run_dir) / SPLIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        idx = np.asarray(split.get(part, np.zeros(0, dtype=np.int64)), dtype=np.int64)
        ids = idx if case_ids is None else np.asarray(case_ids, dtype=np.int64)[idx]
        tmp = folder / f".{part}.csv.tmp"
        pd.DataFrame({"index": idx, "case_id": ids}).to_csv(tmp, index=False)
        tmp.replace(folder / f"{part}.csv")
    return folder


def read_case_split(run_dir: str | Path, case_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The split written by :func:`write_case_split`. DataError when a file is missing or
    unreadable, an index is in two parts, or (given the source's ``case_ids`` [N]) an index is out
    of range or its case id changed (the fields file is not the one the split was made for)."""
    folder = Path(run_dir) / SPLIT_DIR
    split: dict[str, np.ndarray] = {}
    seen: dict[int, str] = {}
    for part in PARTS:
        path = folder / f"{part}.csv"
        try:
            frame = pd.read_csv(path)
            idx = frame["index"].to_numpy().astype(np.int64)
            ids = frame["case_id"].to_numpy().astype(np.int64)
        except FileNotFoundError:
            raise DataError(f"split file {path} does not exist; train again with --fresh to make a new split") from None
        except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(
                f"split file {path} is not a readable index,case_id CSV ({type(err).__name__}: {err})"
            ) from None
        for i in idx:
            if int(i) in seen:
                raise DataError(
                    f"split file {path}: case index {int(i)} is also in {seen[int(i)]} (a leak); split again"
                )
            seen[int(i)] = part
        if case_ids is not None:
            n = len(case_ids)
            bad = idx[(idx < 0) | (idx >= n)]
            if len(bad):
                raise DataError(
                    f"split file {path}: case index(es) {format_ids(bad)} outside the {n} cases of the fields"
                )
            changed = idx[np.asarray(case_ids, dtype=np.int64)[idx] != ids]
            if len(changed):
                raise DataError(
                    f"split file {path}: the case ids of index(es) {format_ids(changed)} differ from the fields "
                    "file's; "
                    "the data changed since the split was made: train again with --fresh"
                )
        split[part] = idx
    return split


# ------------------------------------------------------------------------------------ preload


def decide_preload(cfg: Any, source: FieldSource) -> bool:
    """Whether to preload the fields: ``cfg.load_all`` true/false, or ``auto`` = the sub-sampled
    float32 fields (``source.nbytes``) fit in ``cfg.memory_budget_gb`` x 1e9 bytes."""
    value = str(cfg.load_all).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    if value != "auto":
        raise ConfigError(f"setting 'data.load_all' = {cfg.load_all!r} must be auto, true or false")
    budget = float(cfg.memory_budget_gb)
    if budget < 0:
        raise ConfigError(f"setting 'data.memory_budget_gb' = {budget} must be >= 0")
    return source.nbytes <= budget * 1e9


# ------------------------------------------------------------------------------------ inputs


class InputEncoder:
    """Model-ready inputs of one case, by its row in ``inputs``: standardised parameters float32
    [P] (with ``param_scaler``; raw when None) or the image as float32 [C, S, S] in [0, 1]."""

    def __init__(self, inputs: CaseInputs, param_scaler: ParamScaler | None, image_size: int, image_channels: int):
        self.inputs = inputs
        self.param_scaler = param_scaler
        self.image_size = int(image_size)
        self.image_channels = int(image_channels)
        if inputs.kind == "params" and param_scaler is not None and inputs.params is not None:
            if param_scaler.features != inputs.params.shape[1]:
                raise DataError(
                    f"inputs {inputs.source} have {inputs.params.shape[1]} parameters but the model was trained on "
                    f"{param_scaler.features}"
                )
            self._params = np.ascontiguousarray(param_scaler.transform(inputs.params), dtype=np.float32)
        else:
            self._params = None if inputs.params is None else np.ascontiguousarray(inputs.params, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(P,)`` or ``(C, S, S)``."""
        if self.inputs.kind == "params":
            assert self._params is not None
            return (int(self._params.shape[1]),)
        return (self.image_channels, self.image_size, self.image_size)

    def get(self, row: int) -> np.ndarray:
        if self.inputs.kind == "params":
            assert self._params is not None
            return self._params[int(row)].copy()
        assert self.inputs.image_paths is not None
        return load_image(self.inputs.image_paths[int(row)], self.image_size, self.image_channels)


def inputs_array(
    inputs: CaseInputs,
    param_scaler: ParamScaler | None,
    image_size: int,
    image_channels: int,
    rows: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """float32 ``[n, P]`` or ``[n, C, S, S]``: the model-ready inputs of ``rows`` (default all, in order)."""
    encoder = InputEncoder(inputs, param_scaler, image_size, image_channels)
    rows = np.arange(len(inputs)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *encoder.shape), dtype=np.float32)
    for k, r in enumerate(rows):
        out[k] = encoder.get(int(r))
    return out


# ------------------------------------------------------------------------------------ datasets


class SimulationDataset(Dataset):
    """Field cases ``indices`` of ``source`` with their inputs (see the module doc).

    ``rows`` [N]: for each field case its row in ``inputs`` (:func:`match_cases`); ``indices``:
    the cases of this split (positions in the source). ``field_scaler`` scales the fields
    (None: raw values). ``preload``: keep every item's field in memory (on ``device``), built case
    by case (peak memory: the result plus one case); the inputs are encoded once up front too.
    With ``preload=False`` nothing big is held: each item reads its case from the file, so the
    dataset pickles cheaply into DataLoader workers.
    """

    def __init__(
        self,
        source: FieldSource,
        inputs: CaseInputs,
        rows: np.ndarray,
        indices: Sequence[int] | np.ndarray,
        field_scaler: FieldScaler | None,
        param_scaler: ParamScaler | None,
        image_size: int,
        image_channels: int,
        preload: bool,
        device: str | torch.device = "cpu",
    ) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64).ravel()
        if len(self.rows) != len(source):
            raise DataError(f"{len(self.rows)} input rows for {len(source)} field cases; match them with match_cases")
        if field_scaler is not None and field_scaler.variables != source.shape[3]:
            raise DataError(
                f"fields file {source.path} has V={source.shape[3]} variables but the scaler was fitted on "
                f"{field_scaler.variables}"
            )
        self.field_scaler = field_scaler
        self.encoder = InputEncoder(inputs, param_scaler, image_size, image_channels)
        self.preload = bool(preload)
        self._fields: torch.Tensor | None = None
        self._inputs: torch.Tensor | None = None
        if self.preload:
            _, t, m, v = source.shape
            fields = torch.empty((len(self.indices), v, t, m), dtype=torch.float32, device=device)
            ins = torch.empty((len(self.indices), *self.encoder.shape), dtype=torch.float32, device=device)
            for k, i in enumerate(self.indices):
                fields[k] = self._field(int(i))
                ins[k] = self._input(int(i))
            self._fields, self._inputs = fields, ins

    @property
    def field_shape(self) -> tuple[int, int, int]:
        """``(V, T, M)`` of one item's field."""
        _, t, m, v = self.source.shape
        return v, t, m

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.encoder.shape

    def _field(self, i: int) -> torch.Tensor:
        case = self.source.get(i)  # [T, M, V] float32, a fresh array: scaled in place
        if self.field_scaler is not None:
            case = self.field_scaler.transform(case, inplace=True)
        return torch.from_numpy(np.ascontiguousarray(case.transpose(2, 0, 1), dtype=np.float32))

    def _input(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.encoder.get(int(self.rows[i])))

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i = int(self.indices[k])
        if self._fields is not None and self._inputs is not None:
            field, inputs = self._fields[k], self._inputs[k]
        else:
            field, inputs = self._field(i), self._input(i)
        return {"field": field, "inputs": inputs, "index": torch.tensor(i, dtype=torch.int64)}


class LatentDataset(Dataset):
    """Inputs and saved VAE latents of the cases ``indices`` (standalone conditioner training).

    ``z`` [N, Z] and ``xs`` [N, S, L] are in field order (``latent_vectors.npy`` / ``xs.npy`` of
    the run); ``rows`` [N] maps a field case to its inputs row. Item: ``{"inputs": float32 [P] or
    [C, S, S], "z": float32 [Z], "xs": float32 [S, L], "index": int64}``. Inputs are encoded once.
    """

    def __init__(
        self,
        inputs: CaseInputs,
        rows: np.ndarray,
        indices: Sequence[int] | np.ndarray,
        z: np.ndarray,
        xs: np.ndarray,
        param_scaler: ParamScaler | None,
        image_size: int,
        image_channels: int,
    ) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64).ravel()
        z, xs = np.asarray(z, dtype=np.float32), np.asarray(xs, dtype=np.float32)
        if z.ndim != 2 or xs.ndim != 3 or len(z) != len(xs) or len(z) != len(self.rows):
            raise DataError(
                f"saved latents z {tuple(z.shape)} and xs {tuple(xs.shape)} must be [N, Z] and [N, S, L] for the "
                f"{len(self.rows)} cases; train the VAE again"
            )
        self.z = torch.from_numpy(np.ascontiguousarray(z[self.indices]))
        self.xs = torch.from_numpy(np.ascontiguousarray(xs[self.indices]))
        encoded = inputs_array(inputs, param_scaler, image_size, image_channels, self.rows[self.indices])
        self.input_shape = tuple(encoded.shape[1:])
        self._inputs = torch.from_numpy(encoded)

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {
            "inputs": self._inputs[k],
            "z": self.z[k],
            "xs": self.xs[k],
            "index": torch.tensor(int(self.indices[k]), dtype=torch.int64),
        }
