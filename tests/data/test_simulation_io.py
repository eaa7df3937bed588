"""Simulation field files: formats agree, sub-sampling, pickles refused, bad shapes, bounded memory."""

from __future__ import annotations

import gc
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fabml.data.simulation_io import NpyCaseWriter, open_fields
from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import SurrogateDataConfig


def _fields(n: int = 6, t: int = 5, m: int = 12, v: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, t, m, v)).astype(np.float32)


def _cfg(path: Path, **kw) -> SurrogateDataConfig:
    return SurrogateDataConfig(fields=str(path), **kw)


def test_npy_npz_hdf5_pickle_give_the_same_cases(tmp_path: Path) -> None:
    arr = _fields()
    np.save(tmp_path / "f.npy", arr)
    np.savez(tmp_path / "f.npz", fields=arr)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5.create_dataset("results/u", data=arr, chunks=(1, 5, 12, 2))
    with open(tmp_path / "f.pickle", "wb") as fh:
        pickle.dump(arr, fh)
    sources = [
        open_fields(_cfg(tmp_path / "f.npy")),
        open_fields(_cfg(tmp_path / "f.npz")),
        open_fields(_cfg(tmp_path / "f.h5", fields_key="results/u")),
        open_fields(_cfg(tmp_path / "f.pickle", allow_pickle=True)),
    ]
    for src in sources:
        assert src.shape == arr.shape
        assert src.nbytes == arr.nbytes
        np.testing.assert_array_equal(src.case_ids, np.arange(6))
        np.testing.assert_array_equal(src.load_all(), arr)
        np.testing.assert_array_equal(src.get(3), arr[3])
        assert src.get(3).dtype == np.float32 and src.get(3).flags.c_contiguous


def test_three_d_arrays_have_one_variable_and_other_dtypes_become_float32(tmp_path: Path) -> None:
    arr = np.arange(4 * 3 * 5, dtype=np.float64).reshape(4, 3, 5)
    np.save(tmp_path / "f.npy", arr)
    src = open_fields(_cfg(tmp_path / "f.npy"))
    assert src.shape == (4, 3, 5, 1)
    np.testing.assert_array_equal(src.get(2)[..., 0], arr[2].astype(np.float32))
    assert src.get(2).dtype == np.float32


def test_fortran_order_npy_reads_the_same_cases(tmp_path: Path) -> None:
    arr = _fields(t=7)
    np.save(tmp_path / "f.npy", np.asfortranarray(arr))
    src = open_fields(_cfg(tmp_path / "f.npy", time_stride=3))
    np.testing.assert_array_equal(src.load_all(), arr[:, ::3])


def test_case_ids_come_from_the_file_when_present(tmp_path: Path) -> None:
    arr = _fields(n=3)
    np.savez(tmp_path / "f.npz", fields=arr, case_ids=np.array([10, 20, 30]))
    assert open_fields(_cfg(tmp_path / "f.npz")).case_ids.tolist() == [10, 20, 30]
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["fields"] = arr
        h5["case_ids"] = np.array([5, 6, 7])
    assert open_fields(_cfg(tmp_path / "f.h5")).case_ids.tolist() == [5, 6, 7]
    np.savez(tmp_path / "dup.npz", fields=arr, case_ids=np.array([1, 1, 2]))
    with pytest.raises(DataError, match="case id.*1.*more than once"):
        open_fields(_cfg(tmp_path / "dup.npz"))


@pytest.mark.parametrize("suffix", ["npy", "npz", "h5"])
def test_sub_sampling_by_stride_and_index_list(tmp_path: Path, suffix: str) -> None:
    arr = _fields(t=9, m=11)
    path = tmp_path / f"f.{suffix}"
    if suffix == "npy":
        np.save(path, arr)
    elif suffix == "npz":
        np.savez(path, fields=arr)
    else:
        with h5py.File(path, "w") as h5:
            h5["fields"] = arr
    strided = open_fields(_cfg(path, time_stride=2, node_stride=3))
    assert strided.shape == (6, 5, 4, 2)
    np.testing.assert_array_equal(strided.get(1), arr[1, ::2, ::3])
    assert strided.nbytes == 6 * 5 * 4 * 2 * 4
    # An index list wins over the stride; order and gaps are kept.
    listed = open_fields(_cfg(path, time_stride=2, time_indices=[8, 0, 1, 2, 5], node_indices=[10, 3, 4]))
    assert listed.shape == (6, 5, 3, 2)
    np.testing.assert_array_equal(listed.get(4), arr[4][[8, 0, 1, 2, 5]][:, [10, 3, 4]])
    np.testing.assert_array_equal(listed.load_all([4, 0]), arr[[4, 0]][:, [8, 0, 1, 2, 5]][:, :, [10, 3, 4]])


def test_bad_sub_sampling_settings_name_the_setting(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", _fields(t=5))
    with pytest.raises(ConfigError, match="data.time_indices.*7.*5 time steps"):
        open_fields(_cfg(tmp_path / "f.npy", time_indices=[0, 7]))
    with pytest.raises(ConfigError, match="data.node_stride"):
        open_fields(_cfg(tmp_path / "f.npy", node_stride=0))


def test_pickles_are_refused_without_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "dataset1.pickle"
    with open(path, "wb") as fh:
        pickle.dump(_fields(), fh)
    with pytest.raises(DataError, match="runs code.*--allow-pickle.*data.allow_pickle") as err:
        open_fields(_cfg(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_shape_disagreeing_with_the_config_is_one_line_naming_the_numbers(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, _fields(n=6, t=5, m=12, v=2))
    assert open_fields(_cfg(path, expected_shape=[6, 0, 12, 2])).shape == (6, 5, 12, 2)
    with pytest.raises(DataError) as err:
        open_fields(_cfg(path, expected_shape=[6, 5, 100, 2]))
    msg = str(err.value)
    assert str(path) in msg and "M=12 (expected 100)" in msg and "\n" not in msg


def test_grid_shape_must_multiply_to_the_nodes(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, _fields(m=12))
    assert open_fields(_cfg(path, layout="grid", grid_shape=[3, 4])).shape[2] == 12
    with pytest.raises(DataError, match=r"M=12 nodes.*\[3, 5\].*3x5=15"):
        open_fields(_cfg(path, layout="grid", grid_shape=[3, 5]))
    with pytest.raises(ConfigError, match="grid_shape"):
        open_fields(_cfg(path, layout="grid", grid_shape=[]))
    # grid_shape describes the nodes after sub-sampling
    assert open_fields(_cfg(path, layout="grid", grid_shape=[2, 3], node_stride=2)).shape[2] == 6


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_fields(_cfg(tmp_path / "missing.npy"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a readable .npy"):
        open_fields(_cfg(tmp_path / "bad.npy"))
    np.save(tmp_path / "short.npy", _fields())
    data = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        open_fields(_cfg(tmp_path / "short.npy"))
    np.save(tmp_path / "flat.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(DataError, match=r"shape \[4, 5\]"):
        open_fields(_cfg(tmp_path / "flat.npy"))
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported suffix"):
        open_fields(_cfg(tmp_path / "f.csv"))
    np.savez(tmp_path / "two.npz", a=_fields(), b=_fields())
    with pytest.raises(DataError, match="data.fields_key"):
        open_fields(_cfg(tmp_path / "two.npz"))


def test_source_pickles_without_its_handle_and_reads_after(tmp_path: Path) -> None:
    arr = _fields()
    np.save(tmp_path / "f.npy", arr)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["fields"] = arr
    for name in ("f.npy", "f.h5"):
        src = open_fields(_cfg(tmp_path / name, node_stride=2))
        src.get(0)  # opens the file in this process
        clone = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(clone.get(5), arr[5, :, ::2])
        src.close()


def test_npy_case_writer_streams_a_file_numpy_reads(tmp_path: Path) -> None:
    arr = _fields(n=5)
    with NpyCaseWriter(tmp_path / "w.npy", arr.shape) as writer:
        writer.write(arr[0])
        writer.write(arr[1:5])
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), arr)
    with pytest.raises(DataError, match="4 of 5 cases"):
        with NpyCaseWriter(tmp_path / "short.npy", arr.shape) as writer:
            writer.write(arr[:4])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_reading_every_case_of_a_npy_does_not_grow_resident_memory_by_the_file(tmp_path: Path) -> None:
    """200 MB file, 50 cases of 4 MB: a full pass must stay near one case of resident memory
    (a memory map would keep every page read resident: ~200 MB)."""
    n, t, m = 50, 100, 10_000
    path = tmp_path / "big.npy"
    case = np.ones((t, m, 1), dtype=np.float32)
    with NpyCaseWriter(path, (n, t, m, 1)) as writer:
        for i in range(n):
            case[0, 0, 0] = i
            writer.write(case)
    assert path.stat().st_size > 200_000_000
    src = open_fields(_cfg(path))
    gc.collect()
    base = _rss_bytes()
    peak = base
    for i in range(n):
        got = src.get(i)
        assert got[0, 0, 0] == i
        del got
        peak = max(peak, _rss_bytes())
    assert peak - base < 40_000_000, f"resident memory grew by {(peak - base) / 1e6:.0f} MB over a 200 MB file"
