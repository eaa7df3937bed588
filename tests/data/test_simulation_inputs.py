"""Case inputs (CSV / image folder), images and the matching of inputs to field cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabml.data.simulation_inputs import load_image, match_cases, read_inputs
from fabml.data.simulation_io import open_fields
from fabml.errors import DataError
from fabml.surrogate.config import SurrogateDataConfig


def _fields(tmp_path: Path, n: int, ids: list[int] | None = None) -> Path:
    arr = np.zeros((n, 2, 3), np.float32)
    if ids is None:
        path = tmp_path / "fields.npy"
        np.save(path, arr)
    else:
        path = tmp_path / "fields.npz"
        np.savez(path, fields=arr, case_ids=np.asarray(ids))
    return path


def _images(folder: Path, ids: list[int], size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        arr = np.full((size, size), 10 * i % 256, np.uint8)
        Image.fromarray(arr).save(folder / f"param_{i:03d}.png")
    return folder


def test_csv_with_id_column_and_in_row_order(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("run,a,b\n7,1.0,2\n3,3.5,4\n")
    got = read_inputs(SurrogateDataConfig(inputs=str(csv), id_column="run"))
    assert got.kind == "params" and got.columns == ["a", "b"]
    assert got.ids.tolist() == [7, 3]
    np.testing.assert_array_equal(got.params, np.array([[1, 2], [3.5, 4]], np.float32))
    by_row = read_inputs(SurrogateDataConfig(inputs=str(csv)))
    assert by_row.ids.tolist() == [0, 1] and by_row.columns == ["run", "a", "b"]
    # a column named case_id is the id column without a setting
    csv.write_text("case_id,a\n2,0.5\n1,0.25\n")
    assert read_inputs(SurrogateDataConfig(inputs=str(csv))).ids.tolist() == [2, 1]


def test_path_argument_overrides_the_setting(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a\n1\n2\n")
    (tmp_path / "new.csv").write_text("a\n5\n")
    got = read_inputs(SurrogateDataConfig(inputs=str(tmp_path / "train.csv")), tmp_path / "new.csv")
    assert got.source == tmp_path / "new.csv" and got.params.tolist() == [[5.0]]


def test_headerless_csv_of_the_seed(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("1.0,2.0\n3.0,4.0\n5,6\n")
    got = read_inputs(SurrogateDataConfig(inputs=str(csv)))
    assert got.params.shape == (3, 2) and got.columns == ["p0", "p1"] and got.params[0, 0] == 1.0


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a,b\n1,x\n", "column 'b' holds 'x' in row 2"),
        ("a,b\n1,\n", "column 'b' is empty in row 2"),
        ("case_id,a\n1,2\n1,3\n", r"case id\(s\) 1 appear in more than one row"),
        ("a,b\n", "no rows"),
        ("", "is empty"),
    ],
)
def test_bad_csv_is_one_line_naming_the_file(tmp_path: Path, text: str, pattern: str) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=pattern) as err:
        read_inputs(SurrogateDataConfig(inputs=str(csv)))
    assert str(csv) in str(err.value) and "\n" not in str(err.value)


def test_missing_id_column_names_the_columns(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no id column 'run' .columns: a, b"):
        read_inputs(SurrogateDataConfig(inputs=str(csv), id_column="run"))


def test_image_folder_ids_from_names_sorted(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs", [3, 1, 2])
    got = read_inputs(SurrogateDataConfig(inputs=str(folder)))
    assert got.kind == "image" and got.ids.tolist() == [1, 2, 3]
    assert [p.name for p in got.image_paths] == ["param_001.png", "param_002.png", "param_003.png"]


def test_empty_folder_and_corrupt_image_are_data_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no images"):
        read_inputs(SurrogateDataConfig(inputs=str(empty)))
    folder = _images(tmp_path / "imgs", [0, 1])
    (folder / "param_002.png").write_bytes(b"\x89PNG this is not an image")
    with pytest.raises(DataError, match="param_002.png is corrupt"):
        read_inputs(SurrogateDataConfig(inputs=str(folder)))
    good = (folder / "param_000.png").read_bytes()
    (folder / "param_002.png").write_bytes(good[: len(good) // 2])  # truncated: fails the check too
    with pytest.raises(DataError, match="param_002.png is corrupt"):
        read_inputs(SurrogateDataConfig(inputs=str(folder)))
    with pytest.raises(DataError, match="param_002.png"):  # and decoding it names the file
        load_image(folder / "param_002.png", 8, 1)
    (folder / "param_002.png").unlink()
    (folder / "notes.png").write_bytes(good)
    with pytest.raises(DataError, match="notes.png has no number"):
        read_inputs(SurrogateDataConfig(inputs=str(folder)))


def test_load_image_shape_range_and_channels(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "x_1.png")
    grey = load_image(tmp_path / "x_1.png", 16, 1)
    colour = load_image(tmp_path / "x_1.png", 16, 3)
    assert grey.shape == (1, 16, 16) and colour.shape == (3, 16, 16)
    assert grey.dtype == np.float32 and 0.0 <= grey.min() and grey.max() <= 1.0
    np.testing.assert_allclose(colour[0], 1.0)
    np.testing.assert_allclose(colour[1], 0.0)


def test_match_cases_by_id(tmp_path: Path) -> None:
    fields = open_fields(SurrogateDataConfig(fields=str(_fields(tmp_path, 3, ids=[30, 10, 20]))))
    csv = tmp_path / "p.csv"
    csv.write_text("case_id,a\n10,1\n20,2\n30,3\n")
    inputs = read_inputs(SurrogateDataConfig(inputs=str(csv)))
    rows = match_cases(fields, inputs)
    assert rows.tolist() == [2, 0, 1]
    assert inputs.params[rows, 0].tolist() == [3.0, 1.0, 2.0]


def test_case_without_inputs_and_input_without_case(tmp_path: Path) -> None:
    fields = open_fields(SurrogateDataConfig(fields=str(_fields(tmp_path, 4))))
    folder = _images(tmp_path / "imgs", [0, 1, 2])
    with pytest.raises(DataError) as err:
        match_cases(fields, read_inputs(SurrogateDataConfig(inputs=str(folder))))
    msg = str(err.value)
    assert "1 case(s) have no inputs" in msg and "holds 4 cases" in msg and "holds 3 images" in msg
    assert "without inputs: 3" in msg and str(folder) in msg and "\n" not in msg
    _images(folder, [3, 4, 9])
    with pytest.raises(DataError) as err:
        match_cases(fields, read_inputs(SurrogateDataConfig(inputs=str(folder))))
    msg = str(err.value)
    assert "2 input(s) have no case" in msg and "without a case: 4, 9" in msg and "holds 6 images" in msg
    csv = tmp_path / "p.csv"
    csv.write_text("a\n1\n2\n3\n4\n5\n")  # row order: one row too many
    with pytest.raises(DataError, match="holds 4 cases.*holds 5 rows.*without a case: 4"):
        match_cases(fields, read_inputs(SurrogateDataConfig(inputs=str(csv))))
