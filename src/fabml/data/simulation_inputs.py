"""The inputs of each simulation case: a CSV of design parameters or a folder of images.

- CSV: one row per case, the design parameters as numeric columns. The case id comes from
  ``data.id_column``; when that is empty, from a column named ``case_id`` if there is one, else
  row ``i`` is case ``i``. A CSV whose first line is all numbers (the seed's headerless files)
  is read without a header; its columns are named ``p0, p1, ...``.
- Image folder: ``param_001.png`` ... (``.png .jpg .jpeg .bmp .tif .tiff``); the case id is the
  last run of digits in the file name. Each file's header is checked when the folder is read;
  :func:`load_image` decodes one to float32 ``[C, S, S]`` in [0, 1].

:func:`match_cases` pairs every field case with its inputs by case id; a case without inputs, an
input without a case, or a count that disagrees is a one-line DataError that names both files,
the counts and the first few ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fabml.data import images as image_io
from fabml.data.parsing import is_number
from fabml.data.simulation_io import FieldSource, format_ids
from fabml.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_ID_COLUMN = "case_id"
_DIGITS = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class CaseInputs:
    """The inputs of n cases: ``kind`` ``params`` (``params`` float32 [n, P], ``columns`` their
    names) or ``image`` (``image_paths``, one per case); ``ids`` int64 [n] case ids (unique);
    ``source`` the CSV file or image folder."""

    kind: str
    ids: np.ndarray
    params: np.ndarray | None
    columns: list[str]
    image_paths: list[Path] | None
    source: Path

    def __len__(self) -> int:
        return int(len(self.ids))


def _check_unique(ids: np.ndarray, source: Path, what: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise DataError(f"inputs {source}: case id(s) {format_ids(uniq[counts > 1])} appear in more than one {what}")



def _read_csv(path: Path, id_column: str) -> CaseInputs:
    try:
        frame = pd.read_csv(path)
        if len(frame.columns) and all(is_number(str(c)) for c in frame.columns):  # no header row
            frame = pd.read_csv(path, header=None)
            frame.columns = [f"p{j}" for j in range(frame.shape[1])]
    except FileNotFoundError:
        raise DataError(f"inputs file {path} does not exist; check data.inputs / --inputs") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"inputs file {path} is empty; expected one row of parameters per case") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DataError(f"inputs file {path} is not a readable CSV ({type(err).__name__}: {err})") from None
    if len(frame) == 0:
        raise DataError(f"inputs file {path} has a header but no rows; expected one row of parameters per case")
    column = id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in frame.columns else "")
    if column and column not in frame.columns:
        raise DataError(
            f"inputs file {path} has no id column '{column}' (columns: {', '.join(map(str, frame.columns))}); "
            "fix data.id_column or leave it empty to match cases by row order"
        )
    if column:
        raw_ids = pd.to_numeric(frame[column], errors="coerce")
        if raw_ids.isna().any() or not np.all(raw_ids == np.round(raw_ids)):
            bad = int(np.flatnonzero(raw_ids.isna() | (raw_ids != np.round(raw_ids)))[0])
            raise DataError(
                f"inputs file {path}: id column '{column}' holds {frame[column].iloc[bad]!r} in row {bad + 2}; "
                "case ids must be integers"
            )
        ids = raw_ids.to_numpy().astype(np.int64)
        frame = frame.drop(columns=[column])
    else:
        ids = np.arange(len(frame), dtype=np.int64)
    if frame.shape[1] == 0:
        raise DataError(f"inputs file {path} has no parameter columns besides the id column '{column}'")
    values = frame.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & frame.notna()
    if bad.to_numpy().any():
        name = str(bad.columns[bad.any(axis=0).to_numpy()][0])
        row = int(np.flatnonzero(bad[name].to_numpy())[0])
        raise DataError(
            f"inputs file {path}: column '{name}' holds {frame[name].iloc[row]!r} in row {row + 2}; parameters must be "
            "numbers (set data.id_column if it is the case id)"
        )
    missing = values.isna()
    if missing.to_numpy().any():
        name = str(missing.columns[missing.any(axis=0).to_numpy()][0])
        row = int(np.flatnonzero(missing[name].to_numpy())[0])
        raise DataError(
            f"inputs file {path}: column '{name}' is empty in row {row + 2}; every case needs every parameter"
        )
    params = values.to_numpy(dtype=np.float32)
    if not np.isfinite(params).all():
        row, col = np.argwhere(~np.isfinite(params))[0]
        raise DataError(f"inputs file {path}: column '{values.columns[col]}' is not finite in row {row + 2}")
    _check_unique(ids, path, "row")
    return CaseInputs("params", ids, params, [str(c) for c in values.columns], None, path)


def _check_image(path: Path) -> None:
    """DataError naming ``path`` when its header does not decode (a corrupt or non-image file)."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"image file {path} is corrupt or not an image ({type(err).__name__}); replace or remove it"
        ) from None


def _read_folder(folder: Path) -> CaseInputs:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"inputs folder {folder} holds no images ({' '.join(IMAGE_SUFFIXES)}); expected one per case, "
            "named like param_001.png"
        )
    ids = []
    for path in files:
        match = _DIGITS.search(path.stem)
        if match is None:
            raise DataError(
                f"image file {path} has no number in its name; name each case's image with its case id, "
                "e.g. param_001.png"
            )
        ids.append(int(match.group(1)))
    id_arr = np.asarray(ids, dtype=np.int64)
    _check_unique(id_arr, folder, "image file name")
    order = np.argsort(id_arr, kind="stable")
    files = [files[k] for k in order]
    for path in files:
        _check_image(path)
    return CaseInputs("image", id_arr[order], None, [], files, folder)


def read_inputs(cfg: Any, path: str | Path | None = None) -> CaseInputs:
    """The case inputs named by ``cfg.inputs`` (or ``path``, e.g. new cases to predict).

    A folder is read as an image folder, a file as a CSV (``cfg.id_column``, see the module doc).
    Missing, empty or unreadable inputs, non-numeric parameters, duplicate ids and corrupt
    images are one-line DataErrors naming the file.
    """
    where = path if path is not None else cfg.inputs
    if not str(where):
        raise ConfigError("no case inputs: set data.inputs (or pass --inputs CSV|FOLDER)")
    source = Path(where).expanduser()
    if not source.exists():
        raise DataError(f"inputs {source} do not exist; check data.inputs / --inputs (a CSV file or an image folder)")
    if source.is_dir():
        return _read_folder(source)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"inputs {source} is one image; point data.inputs at the folder holding one image per case")
    return _read_csv(source, str(getattr(cfg, "id_column", "") or ""))


def load_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """float32 ``[C, S, S]`` in [0, 1] of one input image: decoded with Pillow (16-bit / float
    grey scaled to 8 bits), converted to ``channels`` (1 grey, 3 RGB), bilinearly resized to
    ``size`` x ``size`` (aspect ratio not kept), divided by 255. A corrupt file is a DataError."""
    if int(size) < 1:
        raise ConfigError(f"setting 'data.image_size' = {size} must be a positive integer")
    if int(channels) not in (1, 3):
        raise ConfigError(f"setting 'data.image_channels' = {channels} must be 1 or 3")
    arr = image_io.load_image(str(path), int(channels), (int(size), int(size)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def match_cases(fields: FieldSource, inputs: CaseInputs) -> np.ndarray:
    """int64 ``[N]``: for each field case (in file order), the row of its inputs in ``inputs``.

    Cases are matched by case id (``fields.case_ids`` vs ``inputs.ids``). Field cases without
    inputs, or inputs without a field case, are a DataError naming both sources, both counts
    and the first few unmatched ids.
    """
    n_fields, n_inputs = len(fields.case_ids), len(inputs.ids)
    unit = "rows" if inputs.kind == "params" else "images"
    counts = f"{fields.path} holds {n_fields} cases, {inputs.source} holds {n_inputs} {unit}"
    missing = np.setdiff1d(fields.case_ids, inputs.ids)
    if len(missing):
        raise DataError(
            f"{len(missing)} case(s) have no inputs: {counts}; case ids without inputs: {format_ids(missing)} "
            "(add their inputs or remove the cases)"
        )
    extra = np.setdiff1d(inputs.ids, fields.case_ids)
    if len(extra):
        raise DataError(
            f"{len(extra)} input(s) have no case: {counts}; input ids without a case: {format_ids(extra)} "
            "(remove those inputs or add their results to the fields file)"
        )
    position = {int(c): k for k, c in enumerate(inputs.ids)}
    return np.asarray([position[int(c)] for c in fields.case_ids], dtype=np.int64)
