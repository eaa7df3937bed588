"""Simulation results (fields) on disk: ``[N cases, T timesteps, M nodes, V variables]`` arrays.

:func:`open_fields` opens the file named by ``data.fields`` and returns a :class:`FieldSource`
that hands out one case at a time as float32 ``[T, M, V]`` (``[N, T, M]`` files have V = 1),
after the temporal / spatial sub-sampling of the settings (``time_stride`` / ``time_indices``,
``node_stride`` / ``node_indices``; an explicit index list takes precedence over a stride).

Formats, by suffix:

- ``.npy``: streamed case by case with positioned reads (``os.preadv`` where the OS has it, else
  seek + ``readinto``) into a fresh array; the header is parsed with :mod:`numpy.lib.format`.
  Why not a memory map: every page of a memory-mapped file that has been read stays in the
  process's resident set (RSS) until the kernel needs the memory back, so one epoch over an
  8 GB file shows up as ~8 GB of RSS, and a container's memory limit may kill the job. A plain
  read goes through the page cache, which does not count toward RSS; resident memory stays at
  about one case (plus the batch being assembled) whatever the file size. With a time sub-sample
  only the kept time steps are read. The file is opened lazily, once per process, so a source
  can be pickled into DataLoader workers. (A Fortran-order ``.npy``, whose cases are not
  contiguous, goes through a read-only memory map instead: save it in C order for bounded memory.)
- ``.npz``: loaded into memory (a zip archive cannot be streamed case by case).
- ``.h5`` / ``.hdf5``: read per case with h5py (the file opened lazily per process).
- ``.pickle`` / ``.pkl``: the legacy ``[N, T, M]`` pickles, loaded into memory, and only with
  ``data.allow_pickle`` (``--allow-pickle``): unpickling runs code from the file.

The array inside ``.npz`` / HDF5 is ``data.fields_key`` (empty: ``fields``, or the only array).
Case ``i`` has id ``i`` unless the file holds a ``case_ids`` array (npz key / HDF5 dataset) of
length N with unique integers.

:class:`NpyCaseWriter` writes a ``.npy`` case by case (bounded memory) for generators and the
scale check.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fabml.errors import ConfigError, DataError

NPY_SUFFIXES = (".npy",)
NPZ_SUFFIXES = (".npz",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
PICKLE_SUFFIXES = (".pickle", ".pkl", ".pck")
SUPPORTED_TEXT = ".npy, .npz, .h5/.hdf5, .pickle/.pkl (with --allow-pickle)"
DEFAULT_KEY = "fields"
IDS_KEY = "case_ids"
LAYOUTS = ("1d", "grid")


def format_ids(values: Sequence[Any] | np.ndarray, most: int = 5) -> str:
    """``"3, 7, 9"`` or ``"3, 7, 9, 12, 15, ... (40 in all)"``: the first few of a list, for messages."""
    values = [int(v) for v in np.asarray(values).ravel()]
    shown = ", ".join(str(v) for v in values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _selection(size: int, stride: int, indices: Sequence[int], what: str, setting: str) -> np.ndarray | None:
    """Index array kept along an axis of ``size`` (None = all of it, in order).

    ``indices`` (non-empty) wins over ``stride``; an index outside [0, size) or a stride < 1 is a
    ConfigError naming the setting (``setting`` is ``time`` or ``node``).
    """
    if len(indices):
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= size)]
        if len(bad):
            raise ConfigError(
                f"setting 'data.{setting}_indices' holds {format_ids(bad)} outside the {size} {what} of the fields "
                f"(valid: 0..{size - 1})"
            )
        return None if np.array_equal(idx, np.arange(size)) else idx
    if int(stride) < 1:
        raise ConfigError(f"setting 'data.{setting}_stride' = {stride} must be a positive integer")
    return None if int(stride) == 1 else np.arange(0, size, int(stride), dtype=np.int64)


def _runs(idx: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of consecutive increasing indices as ``(out_start, first, length)`` triples."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or idx[k] != idx[k - 1] + 1:
            runs.append((start, int(idx[start]), k - start))
            start = k
    return runs


class FieldSource:
    """The simulation fields of one file, read one case at a time.

    Attributes: ``path``; ``shape`` = ``(N, T, M, V)`` after sub-sampling; ``raw_shape`` =
    ``(N, T0, M0, V)`` in the file; ``case_ids`` int64 ``[N]``; ``nbytes`` = bytes of all cases
    as float32 after sub-sampling; ``kind`` = ``npy | npz | hdf5 | pickle``; ``layout`` and
    ``grid_shape`` (the settings, checked against M). Build with :func:`open_fields`.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        raw_shape: tuple[int, int, int, int],
        case_ids: np.ndarray,
        time_sel: np.ndarray | None,
        node_sel: np.ndarray | None,
        *,
        array: np.ndarray | None = None,
        npy_offset: int = 0,
        npy_dtype: np.dtype | None = None,
        npy_fortran: bool = False,
        key: str = "",
        layout: str = "1d",
        grid_shape: Sequence[int] = (),
    ) -> None:
        self.path = path
        self.kind = kind
        self.raw_shape = raw_shape
        self.case_ids = case_ids
        self.time_sel = time_sel
        self.node_sel = node_sel
        self.key = key
        self.layout = layout
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self._array = array  # npz / pickle: the whole array in memory ([N, T0, M0, V])
        self._npy_offset = npy_offset
        self._npy_dtype = npy_dtype
        self._npy_fortran = npy_fortran
        self._handle: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ shape

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, T, M, V)`` after sub-sampling."""
        n, t0, m0, v = self.raw_shape
        t = t0 if self.time_sel is None else len(self.time_sel)
        m = m0 if self.node_sel is None else len(self.node_sel)
        return n, t, m, v

    @property
    def nbytes(self) -> int:
        """Bytes of all (sub-sampled) cases as float32."""
        n, t, m, v = self.shape
        return int(n) * t * m * v * 4

    @property
    def case_nbytes(self) -> int:
        """Bytes of one (sub-sampled) case as float32."""
        _, t, m, v = self.shape
        return t * m * v * 4

    def __len__(self) -> int:
        return self.raw_shape[0]

    # -------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"], state["_lock"] = None, -1, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self) -> Any:
        """The open file (npy: raw binary file; hdf5: the h5py dataset), once per process."""
        if self._handle is None or self._pid != os.getpid():
            if self.kind == "npy":
                self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open)
            else:
                import h5py

                self._handle = h5py.File(self.path, "r")[self.key]
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Close the file handle of this process (it reopens on the next read)."""
        if self._handle is not None and self._pid == os.getpid():
            (self._handle.file if self.kind == "hdf5" else self._handle).close()
        self._handle, self._pid = None, -1

    # ------------------------------------------------------------------ reads

    def _read_exact(self, fh: Any, buffer: memoryview, offset: int) -> None:
        """Fill ``buffer`` from byte ``offset`` of the open raw file (positioned read, no mmap)."""
        done, size = 0, len(buffer)
        while done < size:
            if hasattr(os, "preadv"):
                got = os.preadv(fh.fileno(), [buffer[done:]], offset + done)
            else:
                with self._lock:
                    fh.seek(offset + done)
                    got = fh.readinto(buffer[done:])
            if not got:
                raise DataError(
                    f"fields file {self.path} ended early (case data at byte {offset + done} missing); "
                    "the file is truncated: write it again"
                )
            done += got

    def _npy_case(self, i: int) -> np.ndarray:
        """Case ``i`` in the file's dtype, ``[T, M0, V]`` (time sub-sample applied)."""
        _, t0, m0, v = self.raw_shape
        dtype = self._npy_dtype
        assert dtype is not None
        if self._npy_fortran:  # column-major file: a case is not contiguous; a read-only map, copied out
            mm = np.memmap(self.path, dtype=dtype, mode="r", offset=self._npy_offset, shape=self.raw_shape, order="F")
            case = np.array(mm[i] if self.time_sel is None else mm[i, self.time_sel], order="C")
            del mm
            return case
        fh = self._open()
        step_bytes = m0 * v * dtype.itemsize
        base = self._npy_offset + i * t0 * step_bytes
        if self.time_sel is None:
            out = np.empty((t0, m0, v), dtype=dtype)
            self._read_exact(fh, memoryview(out).cast("B"), base)
            return out
        out = np.empty((len(self.time_sel), m0, v), dtype=dtype)
        flat = memoryview(out).cast("B")
        for start, first, length in _runs(self.time_sel):
            self._read_exact(fh, flat[start * step_bytes:(start + length) * step_bytes], base + first * step_bytes)
        return out

    def _raw_case(self, i: int) -> np.ndarray:
        """Case ``i`` as stored (any numeric dtype), time sub-sample applied: ``[T, M0, V]``."""
        if self.kind == "npy":
            return self._npy_case(i)
        if self.kind == "hdf5":
            dset = self._open()
            sel = self.time_sel
            if sel is not None and len(sel) > 1 and bool(np.all(np.diff(sel) > 0)):
                case = np.asarray(dset[i, sel])  # h5py reads increasing index lists directly
            else:
                case = np.asarray(dset[i])
                case = case if sel is None else case[sel]
            return case.reshape(case.shape[0], self.raw_shape[2], self.raw_shape[3])
        assert self._array is not None
        case = self._array[i]
        return case if self.time_sel is None else case[self.time_sel]

    def get(self, i: int) -> np.ndarray:
        """Case ``i`` (0 <= i < N, a position in the file, not a case id) as a fresh C-contiguous
        float32 ``[T, M, V]`` array, sub-sampled."""
        n = self.raw_shape[0]
        if not 0 <= int(i) < n:
            raise IndexError(f"case index {i} is outside 0..{n - 1} of fields file {self.path}")
        case = self._raw_case(int(i))
        if self.node_sel is not None:
            case = case[:, self.node_sel]
        out = np.ascontiguousarray(case, dtype=np.float32)
        if out is case and self.kind in ("npz", "pickle"):
            out = out.copy()  # never hand out a view of the in-memory array
        return out

    def load_all(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[n, T, M, V]`` of the cases ``indices`` (default: all), filled case by case
        (peak memory: the result plus one case)."""
        idx = np.arange(self.raw_shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
        _, t, m, v = self.shape
        out = np.empty((len(idx), t, m, v), dtype=np.float32)
        for k, i in enumerate(idx):
            out[k] = self.get(int(i))
        return out

    def __repr__(self) -> str:
        return f"FieldSource({self.path}, kind={self.kind}, shape={self.shape}, raw_shape={self.raw_shape})"


# --------------------------------------------------------------------- opening


def _as_4d_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int, int]:
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2]), 1
    if len(shape) == 4:
        return int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])
    raise DataError(
        f"fields file {path} holds an array of shape {_shape_text(shape)}; expected [N cases, T steps, M nodes, "
        "V variables] or [N, T, M]"
    )


def _check_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "fiub":
        raise DataError(f"fields file {path} holds {dtype} values; expected numbers (float32 preferred)")


def _case_ids(ids: Any, n: int, path: Path) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids).ravel()
    if arr.shape[0] != n:
        raise DataError(f"fields file {path}: '{IDS_KEY}' has {arr.shape[0]} entries but the fields have {n} cases")
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise DataError(f"fields file {path}: '{IDS_KEY}' must hold integers, not {arr.dtype}")
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if np.any(counts > 1):
        dup = format_ids(uniq[counts > 1])
        raise DataError(f"fields file {path}: case id(s) {dup} appear more than once in '{IDS_KEY}'")
    return arr


def _pick_key(keys: Sequence[str], wanted: str, path: Path, what: str) -> str:
    """The array to read: ``wanted``, else ``fields``, else the only non-``case_ids`` array."""
    if wanted:
        if wanted not in keys:
            raise DataError(
                f"fields file {path} has no {what} '{wanted}' (it has: {', '.join(keys) or 'none'}); "
                "fix data.fields_key"
            )
        return wanted
    if DEFAULT_KEY in keys:
        return DEFAULT_KEY
    candidates = [k for k in keys if k != IDS_KEY]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(
        f"fields file {path} holds {len(candidates)} {what}s ({', '.join(candidates) or 'none'}) and none is named "
        f"'{DEFAULT_KEY}'; set data.fields_key to the one holding the fields"
    )


def _open_npy(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except (OSError, ValueError) as err:
        raise DataError(f"fields file {path} is not a readable .npy file ({err})") from None
    _check_dtype(dtype, path)
    raw = _as_4d_shape(shape, path)
    expected = offset + int(np.prod(raw)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise DataError(
            f"fields file {path} is truncated: its header says {_shape_text(shape)} {dtype} ({expected} bytes) but the "
            f"file has {size} bytes"
        )
    return {"raw": raw, "ids": None, "npy_offset": offset, "npy_dtype": dtype, "npy_fortran": bool(fortran)}


def _open_npz(path: Path, key: str) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            name = _pick_key(list(archive.files), key, path, "array")
            array = archive[name]
            ids = archive[IDS_KEY] if IDS_KEY in archive.files else None
    except (OSError, ValueError) as err:
        raise DataError(f"fields file {path} is not a readable .npz archive ({err})") from None
    _check_dtype(array.dtype, path)
    raw = _as_4d_shape(array.shape, path)
    return {"raw": raw, "ids": ids, "array": array.reshape(raw), "key": name}


def _open_hdf5(path: Path, key: str) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            datasets: list[str] = []
            h5.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
            name = _pick_key(datasets, key, path, "dataset")
            dset = h5[name]
            shape, dtype = dset.shape, dset.dtype
            ids = h5[IDS_KEY][()] if IDS_KEY in h5 and isinstance(h5[IDS_KEY], h5py.Dataset) else None
    except OSError as err:
        raise DataError(f"fields file {path} is not a readable HDF5 file ({err})") from None
    _check_dtype(dtype, path)
    raw = _as_4d_shape(shape, path)
    return {"raw": raw, "ids": ids, "key": name}


def _open_pickle(path: Path, allow_pickle: bool) -> dict[str, Any]:
    if not allow_pickle:
        raise DataError(
            f"fields file {path} is a pickle, and loading a pickle runs code from the file; pass --allow-pickle "
            "(setting data.allow_pickle=true) only for a file you trust, or convert it to .npy"
        )
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 (explicitly allowed by the user)
        array = np.asarray(obj)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(
            f"fields file {path} is not a readable pickle of an array ({type(err).__name__}: {err})"
        ) from None
    _check_dtype(array.dtype, path)
    raw = _as_4d_shape(array.shape, path)
    return {"raw": raw, "ids": None, "array": array.reshape(raw)}


def _check_expected(raw: tuple[int, int, int, int], expected: Sequence[int], path: Path) -> None:
    """DataError when the file's ``[N, T, M, V]`` disagrees with ``data.expected_shape`` (0 = any)."""
    if not len(expected):
        return
    want = [int(e) for e in expected]
    if len(want) == 3:
        want = [*want, 1]
    if len(want) != 4 or any(w < 0 for w in want):
        raise ConfigError(
            f"setting 'data.expected_shape' = {list(expected)} must be [N, T, M, V] or [N, T, M] (0 = any size)"
        )
    if any(w and w != r for w, r in zip(want, raw)):
        names = ("N", "T", "M", "V")
        diff = ", ".join(f"{n}={r} (expected {w})" for n, w, r in zip(names, want, raw) if w and w != r)
        raise DataError(
            f"fields file {path} holds {_shape_text(raw)} [N, T, M, V] but data.expected_shape is {_shape_text(want)}: "
            f"{diff}; fix the setting or the file"
        )


def _check_layout(source: FieldSource, layout: str, grid_shape: Sequence[int]) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"setting 'data.layout' = {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    if layout != "grid":
        return
    if len(grid_shape) != 2 or any(int(g) < 1 for g in grid_shape):
        raise ConfigError(
            f"setting 'data.grid_shape' = {list(grid_shape)} must be two positive integers [H, W] when "
            "data.layout is grid"
        )
    m = source.shape[2]
    h, w = int(grid_shape[0]), int(grid_shape[1])
    if h * w != m:
        raise DataError(
            f"fields file {source.path} has M={m} nodes (after sub-sampling) but data.grid_shape {[h, w]} holds "
            f"{h}x{w}={h * w}; set grid_shape to the sub-sampled grid (row-major, H*W = M)"
        )


def open_fields(cfg: Any) -> FieldSource:
    """Open ``cfg.fields`` (a :class:`~fabml.surrogate.config.SurrogateDataConfig`) as a :class:`FieldSource`.

    Checks, each a one-line error: the file exists and has a supported suffix; pickles need
    ``cfg.allow_pickle``; the array is 3-D or 4-D and numeric; ``case_ids`` are unique; the
    shape agrees with ``cfg.expected_shape`` (when set); sub-sampling indices are in range; in
    layout ``grid``, ``grid_shape`` multiplies to the sub-sampled M.
    """
    if not str(cfg.fields):
        raise ConfigError("no fields file: set data.fields (or pass --data FIELDS)")
    path = Path(cfg.fields).expanduser()
    if not path.exists():
        raise DataError(f"fields file {path} does not exist; check data.fields / --data")
    if path.is_dir():
        raise DataError(f"fields path {path} is a folder; data.fields must be one file ({SUPPORTED_TEXT})")
    suffix = path.suffix.lower()
    key = str(getattr(cfg, "fields_key", "") or "")
    if suffix in NPY_SUFFIXES:
        kind, info = "npy", _open_npy(path)
    elif suffix in NPZ_SUFFIXES:
        kind, info = "npz", _open_npz(path, key)
    elif suffix in HDF5_SUFFIXES:
        kind, info = "hdf5", _open_hdf5(path, key)
    elif suffix in PICKLE_SUFFIXES:
        kind, info = "pickle", _open_pickle(path, bool(getattr(cfg, "allow_pickle", False)))
    else:
        raise DataError(f"fields file {path} has an unsupported suffix '{suffix}'; use {SUPPORTED_TEXT}")
    raw = info["raw"]
    if min(raw) < 1:
        raise DataError(f"fields file {path} holds an empty array {_shape_text(raw)} [N, T, M, V]")
    _check_expected(raw, getattr(cfg, "expected_shape", []) or [], path)
    time_sel = _selection(raw[1], cfg.time_stride, cfg.time_indices, "time steps", "time")
    node_sel = _selection(raw[2], cfg.node_stride, cfg.node_indices, "nodes", "node")
    source = FieldSource(
        path, kind, raw, _case_ids(info.get("ids"), raw[0], path), time_sel, node_sel,
        array=info.get("array"), npy_offset=info.get("npy_offset", 0), npy_dtype=info.get("npy_dtype"),
        npy_fortran=info.get("npy_fortran", False), key=info.get("key", ""), layout=cfg.layout,
        grid_shape=cfg.grid_shape,
    )
    _check_layout(source, cfg.layout, cfg.grid_shape)
    return source


# ---------------------------------------------------------------------- writing


class NpyCaseWriter:
    """Write a C-order ``.npy`` of ``shape`` = ``[N, ...]`` case by case, without holding it in memory.

    ``with NpyCaseWriter(path, (N, T, M, V)) as w: w.write(case)`` (``case`` ``[T, M, V]`` or a block
    ``[k, T, M, V]``). The header is written first and the data appended with plain writes, so
    the resident memory is one block whatever N is. Closing with fewer than N cases written is a
    DataError (the file would be truncated).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any = np.float32) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._fh, header)

    def write(self, block: np.ndarray) -> None:
        """Append one case ``[*shape[1:]]`` or ``k`` cases ``[k, *shape[1:]]``."""
        arr = np.asarray(block, dtype=self.dtype)
        if arr.shape == self.shape[1:]:
            arr = arr[None]
        if arr.shape[1:] != self.shape[1:]:
            raise DataError(
                f"{self.path}: a block of shape {_shape_text(arr.shape)} does not fit cases "
                f"{_shape_text(self.shape[1:])}"
            )
        if self.written + arr.shape[0] > self.shape[0]:
            raise DataError(f"{self.path}: more than the {self.shape[0]} cases of the header were written")
        self._fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self.written += arr.shape[0]

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.close()
        if self.written != self.shape[0]:
            raise DataError(f"{self.path}: {self.written} of {self.shape[0]} cases written; the file is incomplete")

    def __enter__(self) -> "NpyCaseWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()
