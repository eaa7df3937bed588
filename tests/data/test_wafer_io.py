"""Wafer-map readers: codings, WM-811K / LSWMD pickles, map folders with metadata, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fabml.data.wafer_io import (
    load_wafer_maps,
    normalize_coding,
    read_map_file,
    read_wafer_folder,
    read_wm811k_pickle,
)
from fabml.errors import ConfigError, DataError

REAL_SPLIT = Path(__file__).resolve().parents[3] / "shared" / "data" / "wm811k" / "train_1_split.pkl.xz"

MAP_012 = np.array([[0, 1, 1, 0], [1, 2, 1, 1], [0, 1, 2, 0]], dtype=np.uint8)


def test_normalize_coding_accepts_both_codings_and_whole_floats():
    assert np.array_equal(normalize_coding(MAP_012, "m"), MAP_012)
    eight_bit = np.array([0, 128, 255], dtype=np.uint8)[MAP_012]
    assert np.array_equal(normalize_coding(eight_bit, "m"), MAP_012)
    assert np.array_equal(normalize_coding(eight_bit.astype(np.int64), "m"), MAP_012)
    out = normalize_coding(MAP_012.astype(np.float32), "m")
    assert out.dtype == np.uint8 and np.array_equal(out, MAP_012)
    assert np.array_equal(normalize_coding(np.array([[0, 1], [2, 1]], dtype=object), "m"), [[0, 1], [2, 1]])
    out[0, 0] = 2  # a copy: the caller's array is untouched
    assert MAP_012[0, 0] == 0


@pytest.mark.parametrize(
    ("arr", "fragment"),
    [
        (np.array([[0, 3], [7, 1]]), "values {3, 7} outside the 0/1/2 or 0/128/255 coding"),
        (np.array([[0, 1], [128, 2]]), "mix the 0/1/2 and 0/128/255 codings"),
        (np.array([[0.0, 0.5]]), "values {0.5} outside"),
        (np.array([0, 1, 2]), "shape (3,); expected a 2-D array"),
        (np.zeros((2, 3, 3), dtype=np.uint8), "shape (2, 3, 3)"),
        (np.zeros((0, 4), dtype=np.uint8), "is empty"),
        (np.zeros((3, 3), dtype=np.uint8), "has no dies"),
        (np.ones((3, 3), dtype=bool), "boolean"),
    ],
)
def test_normalize_coding_rejects_bad_maps_naming_the_source(arr, fragment):
    with pytest.raises(DataError) as err:
        normalize_coding(arr, "lot7/w03.npy")
    assert str(err.value).startswith("lot7/w03.npy: ") and fragment in str(err.value)


def test_original_lswmd_pickle(tmp_path):
    empty = np.zeros((0, 0))  # LSWMD stores "unlabelled" as an empty 2-D array
    frame = pd.DataFrame(
        {
            "waferMap": [MAP_012, MAP_012.T.copy(), MAP_012],
            "dieSize": [12.0, 12.0, 12.0],
            "lotName": ["lot1", "lot1", "lot2"],
            "waferIndex": [1.0, 2.0, 1.0],
            "trianTestLabel": [np.array([["Training"]]), np.array([["Test"]]), empty],
            "failureType": [np.array([["none"]]), np.array([["Edge-Ring"]]), empty],
        }
    )
    path = tmp_path / "LSWMD.pkl"
    frame.to_pickle(path)
    maps = read_wm811k_pickle(path)
    assert [m.meta["id"] for m in maps] == ["LSWMD:0", "LSWMD:1", "LSWMD:2"]
    assert [m.label for m in maps] == ["None", "Edge-Ring", None]
    assert [m.meta["lot"] for m in maps] == ["lot1", "lot1", "lot2"]
    assert [m.meta["wafer_index"] for m in maps] == [1, 2, 1]
    assert [m.meta["split"] for m in maps] == ["Training", "Test", None]
    assert np.array_equal(maps[1].dies, MAP_012.T) and maps[0].meta["source"] == str(path)


def test_processed_wm811k_pickle_xz_with_limit(tmp_path):
    eight_bit = np.array([0, 128, 255], dtype=np.uint8)[MAP_012]
    frame = pd.DataFrame(
        {
            "waferMap": [eight_bit, eight_bit, eight_bit],
            "failureType": pd.Categorical(["None", "Center", "Scratch"]),
            "failureCode": np.array([8, 0, 7], dtype=np.int8),
        },
        index=[28294, 17, 4],
    )
    path = tmp_path / "train_1_split.pkl.xz"
    frame.to_pickle(path)
    maps = read_wm811k_pickle(path, limit=2)
    assert len(maps) == 2
    assert [m.meta["id"] for m in maps] == ["train_1_split:0", "train_1_split:1"]
    assert [m.label for m in maps] == ["None", "Center"] and maps[0].meta["index"] == 28294
    assert np.array_equal(maps[0].dies, MAP_012)


def test_pickle_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.pkl"
    pd.DataFrame({"waferMap": [MAP_012, MAP_012 * 3]}).to_pickle(bad)
    with pytest.raises(DataError, match=r"bad\.pkl row 1: wafer map has values \{3, 6\}"):
        read_wm811k_pickle(bad)
    nomap = tmp_path / "nomap.pkl"
    pd.DataFrame({"x": [1]}).to_pickle(nomap)
    with pytest.raises(DataError, match=r"nomap\.pkl: no 'waferMap' column"):
        read_wm811k_pickle(nomap)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"junk\.pkl: cannot read as a pandas pickle"):
        load_wafer_maps(junk)


def _write_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    np.save(root / "a.npy", MAP_012)
    np.savez(root / "b.npz", waferMap=np.array([0, 128, 255], dtype=np.uint8)[MAP_012], other=np.zeros(3))
    Image.fromarray(np.array([0, 128, 255], dtype=np.uint8)[MAP_012]).save(root / "sub" / "c.png")
    # a palette of three arbitrary gray levels is ranked dark/mid/bright -> 0/1/2
    Image.fromarray(np.array([10, 90, 200], dtype=np.uint8)[MAP_012]).save(root / "sub" / "d.bmp")
    (root / "notes.txt").write_text("ignored")


def test_folder_with_metadata_csv(tmp_path):
    _write_folder(tmp_path / "maps")
    csv = tmp_path / "meta.csv"
    csv.write_text("file,lot,date,label,tool\na.npy,L1,2026/01/05,Center,\nsub/c.png,L2,2026-02-01 13:30,,etch-3\n")
    maps = read_wafer_folder(tmp_path / "maps", metadata_csv=csv)
    assert [m.meta["id"] for m in maps] == ["a", "b", "sub/c", "sub/d"]
    for m in maps:
        assert m.dies.dtype == np.uint8 and np.array_equal(m.dies, MAP_012), m.meta["id"]
    a, b, c, _ = maps
    assert (a.meta["lot"], a.meta["date"], a.label) == ("L1", "2026-01-05", "Center")
    assert (c.meta["lot"], c.meta["date"], c.label, c.meta["tool"]) == ("L2", "2026-02-01T13:30:00", None, "etch-3")
    assert (b.meta["lot"], b.meta["date"], b.label) == (None, None, None)
    assert [m.meta["id"] for m in read_wafer_folder(tmp_path / "maps", recursive=False)] == ["a", "b"]


def test_folder_picks_up_its_own_metadata_csv(tmp_path):
    _write_folder(tmp_path / "maps")
    (tmp_path / "maps" / "metadata.csv").write_text("file,lot,label\na.npy,L7,Donut\n")
    maps = load_wafer_maps(tmp_path / "maps")
    assert (maps[0].meta["lot"], maps[0].label) == ("L7", "Donut")
    assert maps[1].label is None


def test_metadata_csv_by_id_and_mismatch(tmp_path):
    _write_folder(tmp_path / "maps")
    by_id = tmp_path / "ids.csv"
    by_id.write_text("id,label\nsub/d,Donut\n")
    maps = load_wafer_maps(tmp_path / "maps", metadata_csv=by_id)
    assert [m.label for m in maps] == [None, None, None, "Donut"]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,label\nzzz.npy,Donut\n")
    with pytest.raises(DataError, match=r"wrong\.csv: none of its 1 rows matches"):
        load_wafer_maps(tmp_path / "maps", metadata_csv=wrong)
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("name,label\na,Loc\n")
    with pytest.raises(DataError, match=r"nokey\.csv: needs a 'file' or 'id' column"):
        read_wafer_folder(tmp_path / "maps", metadata_csv=nokey)


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no wafer map files \(\.npy \.npz \.png"):
        load_wafer_maps(empty)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"corrupt\.png: cannot read as an image"):
        read_map_file(corrupt)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(DataError, match=r"flat\.npy: wafer map has shape \(3,\)"):
        load_wafer_maps(flat)
    grays = tmp_path / "grays.png"
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10).save(grays)
    with pytest.raises(DataError, match=r"grays\.png: image has 16 gray levels"):
        read_map_file(grays)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy: cannot read as a numpy array"):
        read_map_file(objects)
    with pytest.raises(DataError, match=r"nowhere/maps: no such file or folder"):
        load_wafer_maps(tmp_path / "nowhere" / "maps")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type"):
        read_map_file(tmp_path / "notes.txt")


def test_error_in_folder_names_the_corrupt_file(tmp_path):
    _write_folder(tmp_path / "maps")
    (tmp_path / "maps" / "sub" / "zz.png").write_bytes(b"broken")
    with pytest.raises(DataError) as err:
        load_wafer_maps(tmp_path / "maps")
    assert "zz.png" in str(err.value) and "\n" not in str(err.value)


def test_load_dispatch_lists_limits_and_unique_ids(tmp_path):
    frame = pd.DataFrame({"waferMap": [MAP_012] * 3, "failureType": ["None", "Loc", "Donut"]})
    one, two = tmp_path / "one.pkl", tmp_path / "two.pkl.gz"
    frame.to_pickle(one)
    frame.to_pickle(two)
    maps = load_wafer_maps(f"{one},{two}")
    assert [m.meta["id"] for m in maps] == ["one:0", "one:1", "one:2", "two:0", "two:1", "two:2"]
    assert len(load_wafer_maps([one, two], limit=4)) == 4
    again = load_wafer_maps([one, one], limit=0)
    assert [m.meta["id"] for m in again][2:4] == ["one:2", "one:0#2"]
    assert len({m.meta["id"] for m in again}) == 6
    synthetic = load_wafer_maps("synthetic:12:3")
    assert len(synthetic) == 12 and synthetic[0].meta["id"] == "syn-00001"
    with pytest.raises(ConfigError, match="synthetic:N"):
        load_wafer_maps("synthetic:many")
    with pytest.raises(ConfigError, match="limit"):
        load_wafer_maps(one, limit=-1)


def test_real_wm811k_split_smoke():
    if not REAL_SPLIT.is_file():
        pytest.skip(f"{REAL_SPLIT} is absent")
    maps = load_wafer_maps(REAL_SPLIT, limit=100)
    assert len(maps) == 100
    for m in maps:
        assert m.dies.dtype == np.uint8 and m.dies.ndim == 2 and int(m.dies.max()) <= 2
        assert (m.dies > 0).sum() > 100
    labels = {m.label for m in maps}
    assert "None" in labels and labels <= {
        "None", "Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch",
    }


# --- multi-pattern labels ------------------------------------------------------------------------------


def _mixed_set(folder: Path, n: int = 12) -> list:
    """A small generated set with overlaid families, written as .npy files (labels only in the CSV)."""
    from fabml.data.synthetic_wafer import generate_wafer_maps

    families = ("Center", "None", "Center+Scratch", "Donut+Edge-Loc+Scratch", "Edge-Ring+Loc")
    maps = generate_wafer_maps(n, seed=3, families=families, grid_range=(20, 26))
    folder.mkdir()
    for m in maps:
        np.save(folder / f"{m.id}.npy", m.dies)
    return maps


def test_mixed_labels_round_trip_through_metadata_csv(tmp_path):
    maps = _mixed_set(tmp_path / "maps")
    assert {m.label for m in maps} >= {"Center+Scratch", "Donut+Edge-Loc+Scratch", "Edge-Ring+Loc"}
    # Written as a user might: patterns in any order, spaces around the separator.
    rows = ["file,label"] + [f"{m.id}.npy,{' + '.join(reversed(m.label.split('+')))}" for m in maps]
    (tmp_path / "maps" / "metadata.csv").write_text("\n".join(rows) + "\n")
    back = {m.id: m for m in load_wafer_maps(tmp_path / "maps")}
    assert {i: m.label for i, m in back.items()} == {m.id: m.label for m in maps}
    assert all(np.array_equal(back[m.id].dies, m.dies) for m in maps)


def test_multi_hot_metadata_columns_and_vector_cells(tmp_path):
    maps = _mixed_set(tmp_path / "maps")
    patterns = ["Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Scratch"]
    header = "file," + ",".join(f"label:{p}" for p in patterns)
    lines = [header] + [
        f"{m.id}.npy," + ",".join("1" if p in m.label.split("+") else "0" for p in patterns) for m in maps
    ]
    csv = tmp_path / "hot.csv"
    csv.write_text("\n".join(lines) + "\n")
    back = read_wafer_folder(tmp_path / "maps", metadata_csv=csv)
    assert [m.label for m in back] == [m.label for m in maps]  # all-zero rows are "None"
    assert not any(k.startswith("label:") for k in back[0].meta)
    # One 0/1 vector per cell, in the MixedWM38 order (Center Donut Edge-Loc Edge-Ring Loc Near-full Scratch Random).
    vec = tmp_path / "vec.csv"
    vec.write_text(f"file,label\n{maps[0].id}.npy,1 0 0 0 0 0 1 0\n{maps[1].id}.npy,\"[0,0,0,0,0,0,0,0]\"\n")
    back = read_wafer_folder(tmp_path / "maps", metadata_csv=vec)
    assert (back[0].label, back[1].label, back[2].label) == ("Center+Scratch", "None", None)


def test_multi_hot_columns_must_agree_and_hold_01(tmp_path):
    _write_folder(tmp_path / "maps")
    clash = tmp_path / "clash.csv"
    clash.write_text("file,label,label:Center,label:Scratch\na.npy,Center,1,1\n")
    with pytest.raises(DataError, match=r"clash\.csv row file='a\.npy': label 'Center' disagrees"):
        read_wafer_folder(tmp_path / "maps", metadata_csv=clash)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label:Center\na.npy,maybe\n")
    with pytest.raises(DataError, match=r"column 'label:Center' holds 'maybe'"):
        read_wafer_folder(tmp_path / "maps", metadata_csv=bad)
    ok = tmp_path / "ok.csv"
    ok.write_text("file,label,label:Center,label:Scratch\na.npy,Scratch+Center,1,1\nb.npz,,0,1\n")
    maps = read_wafer_folder(tmp_path / "maps", metadata_csv=ok)
    assert (maps[0].label, maps[1].label) == ("Center+Scratch", "Scratch")


def test_other_separator_is_a_setting(tmp_path):
    _write_folder(tmp_path / "maps")
    csv = tmp_path / "pipe.csv"
    csv.write_text("file,label\na.npy,Scratch|Edge-Loc\n")
    maps = load_wafer_maps(tmp_path / "maps", metadata_csv=csv, label_separator="|")
    assert maps[0].label == "Edge-Loc|Scratch"
    with pytest.raises(ConfigError, match="label separator"):
        load_wafer_maps(tmp_path / "maps", label_separator=",")


def test_multi_labels_in_pickles_and_npz(tmp_path):
    frame = pd.DataFrame({
        "waferMap": [MAP_012] * 5,
        "failureType": [
            np.array([["Scratch", "Center"]], dtype=object),  # a list of names
            np.array([1, 0, 0, 0, 0, 0, 1, 0]),  # multi-hot
            "Edge-Loc+Loc",
            np.zeros(8, dtype=np.uint8),  # no pattern
            np.zeros((0, 0)),  # unlabelled
        ],
    })
    path = tmp_path / "mixed.pkl"
    frame.to_pickle(path)
    assert [m.label for m in read_wm811k_pickle(path)] == ["Center+Scratch", "Center+Scratch", "Edge-Loc+Loc", "None", None]
    npz = tmp_path / "w.npz"
    np.savez(npz, waferMap=MAP_012, label=np.array([0, 1, 0, 0, 0, 0, 1, 0]))
    assert read_map_file(npz).label == "Donut+Scratch"
    np.savez(npz, waferMap=MAP_012, label=np.array("Scratch+Donut"))
    assert read_map_file(npz).label == "Donut+Scratch"
