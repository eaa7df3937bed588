"""Wafer-map readers: WM-811K / LSWMD pickles, .npy/.npz/image files, SEMI G85 XML, folders.

Every reader returns :class:`WaferMap` objects whose ``dies`` is a 2-D ``np.uint8`` array
[rows, columns] coded 0 = no die (off wafer), 1 = good die, 2 = failed die, and whose ``meta``
holds at least ``id`` (unique within one load) and ``source`` (the file it came from), plus
``lot``, ``date`` (ISO string) and ``label`` (``None`` when unknown).

A label is one string. A map with several patterns carries the canonical joined label (sorted
pattern names joined by ``label_separator``, default ``"+"``: ``Center+Scratch``); every reader
also accepts a list of names or a multi-hot 0/1 vector and converts it (:mod:`fabml.data.wafer_labels`).

:func:`load_wafer_maps` is the one entry point the jobs call; it dispatches on the source.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fabml.data.wafer_labels import LABEL_SEPARATOR, MULTI_HOT_PATTERNS, canonical_label, check_separator
from fabml.errors import ConfigError, DataError

PICKLE_SUFFIXES = (".pkl", ".pickle")
COMPRESSION_SUFFIXES = (".xz", ".gz", ".bz2", ".zip", ".zst")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
XML_SUFFIXES = (".xml",)
SUPPORTED_TEXT = ".npy .npz .png .bmp .tif .xml .pkl"

_CODING_012 = frozenset({0, 1, 2})
_CODING_8BIT = frozenset({0, 128, 255})
_LUT_8BIT = np.zeros(256, dtype=np.uint8)
_LUT_8BIT[128], _LUT_8BIT[255] = 1, 2


@dataclass
class WaferMap:
    """One wafer map: ``dies`` [H, W] uint8 coded 0/1/2 and its metadata dict."""

    dies: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def label(self) -> str | None:
        return self.meta.get("label")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _format_values(values: Sequence[Any], most: int = 8) -> str:
    shown = [int(v) if float(v).is_integer() else float(v) for v in list(values)[:most]]
    tail = ", ..." if len(values) > most else ""
    return "{" + ", ".join(str(v) for v in shown) + tail + "}"


def normalize_coding(arr: Any, source: str) -> np.ndarray:
    """Return ``arr`` as a new [H, W] uint8 array coded 0 = no die, 1 = good, 2 = failed.

    Accepts the 0/1/2 coding (LSWMD original) and the 0/128/255 coding (the processed
    WM-811K copy, 8-bit images), in any integer dtype or in floats holding whole numbers.
    Booleans are refused: ``True`` could mean "die present" or "die failed".
    Raises :class:`DataError` naming ``source`` for anything else.
    """
    a = np.asarray(arr)
    if a.dtype == object:  # nested python lists of numbers, as some pickles hold
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if a.dtype == bool:
        raise DataError(
            f"{source}: wafer map is boolean, which is ambiguous; "
            "store it as integers coded 0 = no die, 1 = good, 2 = failed (or 0/128/255)"
        )
    if a.dtype.kind not in "uif":
        raise DataError(f"{source}: wafer map has dtype {a.dtype}; expected integers coded 0/1/2 or 0/128/255")
    if a.ndim != 2:
        raise DataError(f"{source}: wafer map has shape {a.shape}; expected a 2-D array [rows, columns]")
    if a.size == 0:
        raise DataError(f"{source}: wafer map is empty (shape {a.shape})")
    if a.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(a.ravel(), minlength=256))
    else:
        values = np.unique(a)
    value_set = {int(v) if float(v).is_integer() else float(v) for v in values.tolist()}
    if value_set <= _CODING_012:
        out = a.astype(np.uint8)
    elif value_set <= _CODING_8BIT:
        out = _LUT_8BIT[a.astype(np.uint8)]
    else:
        outside = sorted(value_set - _CODING_012 - _CODING_8BIT, key=float)
        if outside:
            raise DataError(
                f"{source}: wafer map has values {_format_values(outside)} outside the 0/1/2 or 0/128/255 coding"
            )
        raise DataError(
            f"{source}: wafer map has values {_format_values(sorted(value_set))} that mix "
            "the 0/1/2 and 0/128/255 codings; use one of them"
        )
    if value_set == {0}:
        raise DataError(f"{source}: wafer map has no dies (every value is 0 = no die)")
    return out


def to_iso_date(value: Any, source: str) -> str | None:
    """Return ``value`` as an ISO date ("2026-01-31") or datetime string; ``None`` when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value):
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{source}: date {value!r} is not a date; use ISO format, e.g. 2026-01-31") from exc
    if ts is pd.NaT:
        return None
    return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()


def _label_value(value: Any, separator: str = LABEL_SEPARATOR) -> str | None:
    """Unwrap a label ([['none']], [], 'Edge-Ring', 'Scratch+Center', [1,0,0,0,0,0,1,0], NaN) to a string or ``None``.

    An empty array means unlabelled (``None``); any spelling of "none" is the no-pattern
    class and becomes the string ``"None"``; several patterns (joined, a list of names, or a multi-hot
    vector over :data:`~fabml.data.wafer_labels.MULTI_HOT_PATTERNS`) become the canonical joined label.
    """
    return canonical_label(value, separator, MULTI_HOT_PATTERNS)


def _scalar(value: Any) -> Any:
    """Unwrap LSWMD's nested one-element arrays and numpy scalars to a plain python value."""
    if isinstance(value, (np.ndarray, list, tuple)):
        flat = np.asarray(value, dtype=object).ravel()
        return _scalar(flat[0]) if flat.size else None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if value is None or pd.isna(value) else value


def file_kind(path: Path) -> str | None:
    """'pickle', 'array', 'image', 'xml' or ``None`` (unsupported) from the file name."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            return "pickle" if name.endswith(PICKLE_SUFFIXES) else None
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    suffix = Path(name).suffix
    if suffix in ARRAY_SUFFIXES:
        return "array"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in XML_SUFFIXES:
        return "xml"
    return None


def file_stem(path: Path) -> str:
    """File name without compression and format suffixes: train_1_split.pkl.xz -> train_1_split."""
    name = path.name
    for suffix in COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(name).stem


def read_wm811k_pickle(
    path: str | Path,
    limit: int | None = None,
    label_column: str | None = "failureType",
    label_separator: str = LABEL_SEPARATOR,
) -> list[WaferMap]:
    """Read a WM-811K pickle (pandas DataFrame, optionally compressed) into wafer maps.

    Handles the processed copy (waferMap 0/128/255, failureType 'None'/'Edge-Ring'/...) and the
    original LSWMD.pkl (waferMap 0/1/2, failureType [['none']] or [] = unlabelled, lotName,
    waferIndex, trianTestLabel). Ids are ``"{file_stem}:{row position}"``; ``limit`` keeps the
    first rows. Labels may also be joined names or multi-hot vectors (see the module doc).
    Note: unpickling runs code from the file; read only pickles you trust.
    """
    check_separator(label_separator)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        frame = pd.read_pickle(path)
    except Exception as exc:  # unpickling can raise any exception type
        raise DataError(f"{path}: cannot read as a pandas pickle ({_one_line(exc)})") from exc
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{path}: holds a {type(frame).__name__}, expected a pandas DataFrame with a 'waferMap' column")
    if "waferMap" not in frame.columns:
        raise DataError(f"{path}: no 'waferMap' column (columns: {', '.join(map(str, frame.columns))})")
    if label_column is not None and label_column not in frame.columns and label_column != "failureType":
        raise DataError(f"{path}: no label column '{label_column}' (columns: {', '.join(map(str, frame.columns))})")
    if limit:
        frame = frame.iloc[:limit]
    n = len(frame)
    labels = (
        [_label_value(v, label_separator) for v in frame[label_column]]
        if label_column is not None and label_column in frame.columns
        else [None] * n
    )
    lot_column = next((c for c in ("lotName", "lot") if c in frame.columns), None)
    lots = [_scalar(v) for v in frame[lot_column]] if lot_column else [None] * n
    dates = [to_iso_date(v, f"{path} column 'date'") for v in frame["date"]] if "date" in frame.columns else [None] * n
    wafer_idx = [_scalar(v) for v in frame["waferIndex"]] if "waferIndex" in frame.columns else None
    splits = [_scalar(v) for v in frame["trianTestLabel"]] if "trianTestLabel" in frame.columns else None
    stem = file_stem(path)
    maps = []
    for k, (index, dies) in enumerate(zip(frame.index, frame["waferMap"])):
        meta: dict[str, Any] = {
            "id": f"{stem}:{k}",
            "lot": None if lots[k] is None else str(lots[k]),
            "date": dates[k],
            "label": labels[k],
            "source": str(path),
            "index": _scalar(index),
        }
        if wafer_idx is not None:
            meta["wafer_index"] = wafer_idx[k]
        if splits is not None:
            meta["split"] = splits[k]
        maps.append(WaferMap(normalize_coding(dies, f"{path} row {k}"), meta))
    return maps


def _read_array_file(path: Path, label_separator: str = LABEL_SEPARATOR) -> WaferMap:
    """A .npy array, or the 'waferMap' / 'dies' / first array of a .npz (plus scalar id/lot/date/label keys).

    The .npz ``label`` may be a scalar name (joined names allowed), a 1-D array of names or a multi-hot vector.
    """
    meta: dict[str, Any] = {"id": path.stem, "lot": None, "date": None, "label": None, "source": str(path)}
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = next((k for k in ("waferMap", "dies") if k in keys), keys[0] if keys else None)
                if key is None:
                    raise DataError(f"{path}: the .npz archive holds no arrays")
                arr = archive[key]
                for name in ("id", "lot", "date"):
                    if name in keys and archive[name].ndim == 0:
                        meta[name] = str(archive[name].item())
                if "label" in keys and key != "label" and archive["label"].ndim <= 1:
                    meta["label"] = _label_value(archive["label"], label_separator)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read as a numpy array ({_one_line(exc)})") from exc
    meta["date"] = to_iso_date(meta["date"], str(path))
    return WaferMap(normalize_coding(arr, str(path)), meta)


def _image_to_dies(gray: np.ndarray, source: str) -> np.ndarray:
    """Gray levels -> 0/1/2: a known coding, else exactly 3 levels ranked dark/mid/bright."""
    levels = np.unique(gray)
    level_set = set(levels.tolist())
    if level_set <= _CODING_012 or level_set <= _CODING_8BIT:
        return normalize_coding(gray, source)
    if len(levels) == 3:
        return np.searchsorted(levels, gray).astype(np.uint8)
    raise DataError(
        f"{source}: image has {len(levels)} gray levels {_format_values(levels.tolist())}; expected "
        "0 = no die, mid-gray = good, white = failed (or exactly 3 levels, dark/mid/bright)"
    )


def _read_image_file(path: Path) -> WaferMap:
    from PIL import Image, UnidentifiedImageError  # local: Pillow only needed for image maps

    try:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read as an image ({_one_line(exc)})") from exc
    meta = {"id": path.stem, "lot": None, "date": None, "label": None, "source": str(path)}
    return WaferMap(_image_to_dies(gray, str(path)), meta)


def _read_file_maps(path: Path, limit: int | None = None, label_separator: str = LABEL_SEPARATOR) -> list[WaferMap]:
    """All maps in one file (several for pickles and multi-map G85 files)."""
    kind = file_kind(path)
    if kind == "pickle":
        return read_wm811k_pickle(path, limit=limit, label_separator=label_separator)
    if kind == "array":
        return [_read_array_file(path, label_separator)]
    if kind == "image":
        return [_read_image_file(path)]
    if kind == "xml":
        from fabml.data.g85 import read_g85_maps  # local: g85 imports WaferMap from this module

        return read_g85_maps(path)
    raise DataError(f"{path}: unsupported file type (supported: {SUPPORTED_TEXT}, or a folder of them)")


def read_map_file(path: str | Path, label_separator: str = LABEL_SEPARATOR) -> WaferMap:
    """Read one wafer map from a .npy, .npz, .png/.bmp/.tif or G85 .xml file (id = file stem or WaferId)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    maps = _read_file_maps(path, label_separator=check_separator(label_separator))
    if len(maps) != 1:
        raise DataError(f"{path}: holds {len(maps)} wafer maps, expected one; load it with load_wafer_maps")
    return maps[0]


def ensure_unique_ids(maps: list[WaferMap]) -> list[WaferMap]:
    """Suffix repeated ids in place ("w01", "w01#2", ...) so every id names one map."""
    seen: dict[str, int] = {}
    for wafer in maps:
        base = str(wafer.meta["id"])
        count = seen.get(base, 0) + 1
        seen[base] = count
        wafer.meta["id"] = base if count == 1 else f"{base}#{count}"
    return maps


def _map_keys(wafer: WaferMap, bases: Sequence[Path]) -> set[str]:
    """File names by which a metadata CSV's 'file' column may name this map."""
    source = Path(wafer.meta.get("source", ""))
    keys = {source.as_posix(), source.name}
    for base in bases:
        try:
            keys.add(source.relative_to(base).as_posix())
        except ValueError:
            pass
    return keys


LABEL_COLUMN_PREFIX = "label:"
"""Multi-hot label columns of a metadata CSV: ``label:Center``, ``label:Scratch``, ... holding 0/1."""

_CSV_NA = ["", "NaN", "nan", "NA", "N/A", "n/a", "#N/A", "NULL", "null"]
_TRUE_CELLS = {"1", "1.0", "true", "yes", "y"}
_FALSE_CELLS = {"0", "0.0", "false", "no", "n"}


def _hot_columns_label(row: pd.Series, hot: dict[str, str], separator: str, where: str) -> str | None:
    """The joined label of a row's ``label:<pattern>`` 0/1 cells; ``None`` when they are all empty."""
    cells = {name: row[column] for column, name in hot.items()}
    filled = {name: str(v).strip().lower() for name, v in cells.items() if not pd.isna(v) and str(v).strip()}
    if not filled:
        return None
    bad = {name: v for name, v in filled.items() if v not in _TRUE_CELLS | _FALSE_CELLS}
    if bad:
        name, value = next(iter(bad.items()))
        raise DataError(f"{where}: column '{LABEL_COLUMN_PREFIX}{name}' holds {value!r}; use 1 (pattern present) or 0")
    return canonical_label([name for name, v in filled.items() if v in _TRUE_CELLS] or ["None"], separator)


def apply_metadata_csv(
    maps: list[WaferMap], csv_path: str | Path, bases: Sequence[Path] = (), label_separator: str = LABEL_SEPARATOR
) -> list[WaferMap]:
    """Merge a CSV's columns (lot, date, label, anything else) into ``meta``, in place.

    Rows are joined on column ``file`` (a path relative to one of ``bases``, a file name or a
    full path) or else ``id``. Empty cells leave the map's value as it is. Raises
    :class:`DataError` when the key column is missing, repeats a key, or matches no map.

    Labels: the ``label`` cell may be one name, joined names (``Scratch+Center``) or a 0/1 vector
    over :data:`~fabml.data.wafer_labels.MULTI_HOT_PATTERNS` (``1 0 0 0 0 0 1 0``); or the CSV
    has multi-hot columns ``label:<pattern>`` (0/1 each; all 0 = ``None``) instead. Either way the
    map gets the canonical joined label (``Center+Scratch``).
    """
    check_separator(label_separator)
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: metadata CSV not found")
    try:
        # "None" is WM-811K's no-pattern class, not a missing value: pandas' default NA list would drop it.
        table = pd.read_csv(csv_path, dtype=str, skipinitialspace=True, keep_default_na=False, na_values=_CSV_NA)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{csv_path}: cannot read as CSV ({_one_line(exc)})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    key = next((c for c in ("file", "id") if c in table.columns), None)
    if key is None:
        raise DataError(f"{csv_path}: needs a 'file' or 'id' column (columns: {', '.join(table.columns)})")
    table = table[table[key].notna()]
    values = table[key].str.strip().str.removeprefix("./")
    if values.duplicated().any():
        raise DataError(f"{csv_path}: {key} {values[values.duplicated()].iloc[0]!r} appears more than once")
    rows = {v: row for v, (_, row) in zip(values, table.iterrows())}
    hot = {c: c[len(LABEL_COLUMN_PREFIX) :].strip() for c in table.columns if c.startswith(LABEL_COLUMN_PREFIX)}
    matched = 0
    for wafer in maps:
        keys = {str(wafer.meta["id"])} if key == "id" else _map_keys(wafer, bases)
        row = next((rows[k] for k in keys if k in rows), None)
        if row is None:
            continue
        matched += 1
        where = f"{csv_path} row {key}={row[key].strip()!r}"
        for column, value in row.items():
            if column == key or column in hot or pd.isna(value) or not str(value).strip():
                continue
            value = str(value).strip()
            if column == "date":
                wafer.meta[column] = to_iso_date(value, f"{csv_path} column 'date'")
            elif column == "label":
                try:
                    wafer.meta[column] = canonical_label(value, label_separator)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from exc
            else:
                wafer.meta[column] = value
        from_hot = _hot_columns_label(row, hot, label_separator, where) if hot else None
        if from_hot is not None:
            given = row.get("label")
            if given is not None and not pd.isna(given) and str(given).strip() and wafer.meta["label"] != from_hot:
                raise DataError(
                    f"{where}: label {wafer.meta['label']!r} disagrees with its '{LABEL_COLUMN_PREFIX}*' columns "
                    f"({from_hot!r}); keep one of them"
                )
            wafer.meta["label"] = from_hot
    if maps and matched == 0:
        raise DataError(
            f"{csv_path}: none of its {len(rows)} rows matches a loaded map by '{key}' "
            f"(first value {next(iter(rows), '')!r}); use file paths relative to the folder, or the map ids"
        )
    return maps


FOLDER_METADATA = "metadata.csv"  # picked up automatically by read_wafer_folder


def read_wafer_folder(
    folder: str | Path,
    metadata_csv: str | Path | None = None,
    recursive: bool = True,
    limit: int | None = None,
    label_separator: str = LABEL_SEPARATOR,
) -> list[WaferMap]:
    """Read every supported file under ``folder`` (sorted by relative path) into wafer maps.

    A single-map file's id is its path relative to ``folder`` without the suffix (``lotA/w01``);
    G85 files use their WaferId, pickles ``"{stem}:{row}"``. ``limit`` stops after that many maps.
    Without ``metadata_csv``, a ``metadata.csv`` in the folder itself is used when present.
    Multi-pattern labels are joined with ``label_separator`` (see :func:`apply_metadata_csv`).
    """
    check_separator(label_separator)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    if metadata_csv is None and (folder / FOLDER_METADATA).is_file():
        metadata_csv = folder / FOLDER_METADATA
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    files = sorted(
        (p for p in candidates if p.is_file() and not p.name.startswith(".") and file_kind(p) is not None),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(f"{folder}: no wafer map files ({SUPPORTED_TEXT} ...) found")
    maps: list[WaferMap] = []
    for path in files:
        remaining = None if not limit else limit - len(maps)
        if remaining == 0:
            break
        file_maps = _read_file_maps(path, limit=remaining, label_separator=label_separator)
        if file_kind(path) in ("array", "image"):
            file_maps[0].meta["id"] = path.relative_to(folder).with_suffix("").as_posix()
        maps.extend(file_maps[:remaining] if remaining else file_maps)
    ensure_unique_ids(maps)
    if metadata_csv is not None:
        apply_metadata_csv(maps, metadata_csv, bases=[folder], label_separator=label_separator)
    return maps


def _split_sources(source: str | Path | Sequence[str | Path]) -> list[str | Path]:
    if isinstance(source, (list, tuple)):
        return list(source)
    if isinstance(source, str) and "," in source and not Path(source).exists():
        return [s.strip() for s in source.split(",") if s.strip()]
    return [source]


SYNTHETIC_PREFIXES = ("synthetic:", "synthetic-mixed:")
"""``synthetic:N[:SEED]``: the single-pattern families; ``synthetic-mixed:N[:SEED]``: those plus the
two- and three-pattern mixtures of :data:`fabml.data.synthetic_wafer.MIXED_FAMILIES`, labels joined."""


def _synthetic(source: str, limit: int | None, label_separator: str = LABEL_SEPARATOR) -> list[WaferMap]:
    from fabml.data.synthetic_wafer import FAMILIES, generate_wafer_maps, mixed_families  # local: imports WaferMap

    kind, *parts = source.split(":")
    try:
        n, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"source {source!r}: expected '{kind}:N' or '{kind}:N:SEED' with integers") from exc
    if len(parts) > 2 or n < 1:
        raise ConfigError(f"source {source!r}: expected '{kind}:N' or '{kind}:N:SEED' with N >= 1")
    families = FAMILIES
    if kind == "synthetic-mixed":
        families = FAMILIES + mixed_families(separator=label_separator)
    # Generate all n and cut: the first maps of "synthetic:N" are the same with or without a limit.
    return generate_wafer_maps(n, seed=seed, families=families, label_separator=label_separator)[:limit]


def load_wafer_maps(
    source: str | Path | Sequence[str | Path],
    limit: int | None = None,
    metadata_csv: str | Path | None = None,
    label_separator: str = LABEL_SEPARATOR,
) -> list[WaferMap]:
    """Load wafer maps from a pickle, a folder, a single map file, ``"synthetic:N[:seed]"`` or
    ``"synthetic-mixed:N[:seed]"`` (single and two/three-pattern maps).

    ``source`` may also be a list (or a comma-separated string) of such sources; their maps
    are concatenated in order. ``limit`` (``None`` or 0 = all) caps the total. Ids are made
    unique across the whole load. ``metadata_csv`` merges lot/date/label columns by file or id.
    Labels with several patterns become one string, sorted names joined by ``label_separator``.
    """
    check_separator(label_separator)
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 (0 = all maps), got {limit}")
    maps: list[WaferMap] = []
    folders: list[Path] = []
    for item in _split_sources(source):
        remaining = None if not limit else limit - len(maps)
        if remaining == 0:
            break
        if isinstance(item, str) and item.startswith(SYNTHETIC_PREFIXES):
            maps.extend(_synthetic(item, remaining, label_separator))
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            folders.append(path)
            loaded = read_wafer_folder(path, recursive=True, limit=remaining, label_separator=label_separator)
        else:
            loaded = _read_file_maps(path, limit=remaining, label_separator=label_separator)
        maps.extend(loaded[:remaining] if remaining else loaded)
    ensure_unique_ids(maps)
    if metadata_csv is not None:
        apply_metadata_csv(maps, metadata_csv, bases=folders, label_separator=label_separator)
    return maps
