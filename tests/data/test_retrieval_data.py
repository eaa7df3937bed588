"""Retrieval data: class folders and list files -> records with object IDs, the ID-grouped split
(no leak, stratified, reused, leaks caught on load), min_image_size, class_names, bad inputs, the dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fabml.data.retrieval_data import (
    RetrievalImageDataset,
    RetrievalRecord,
    discover_records,
    make_retrieval_split,
    read_retrieval_split,
)
from fabml.errors import ConfigError, DataError
from fabml.retrieval.config import RetrievalAugmentConfig, RetrievalDataConfig

COLOURS = {"crack": (200, 30, 30), "scratch": (30, 200, 30), "stain": (30, 30, 200)}


def _image(path: Path, size: tuple[int, int] = (40, 32), colour: tuple[int, int, int] = (128, 128, 128)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _folders(root: Path, ids: dict[str, int], shots: int = 3) -> Path:
    """``root/<class>/<class>_lot_<i>_<seq>.png``: ``ids[class]`` objects of ``shots`` photos each
    (the IDs hold underscores themselves: everything before the last ``_`` is the ID)."""
    for cls, n in ids.items():
        for i in range(n):
            for seq in range(shots):
                _image(root / cls / f"{cls}_lot_{i}_{seq:02d}.png", colour=COLOURS.get(cls, (90, 90, 90)))
    return root


def _cfg(**changes: object) -> RetrievalDataConfig:
    base: dict[str, object] = dict(min_image_size=16)
    base.update(changes)
    return RetrievalDataConfig(**base)  # type: ignore[arg-type]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_split_keeps_each_id_in_one_part_stratified_and_is_reused(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 20, "scratch": 20, "stain": 10})
    splits = tmp_path / "run" / "splits"
    split = make_retrieval_split(_cfg(root=str(root)), splits)
    assert split.classes == ["crack", "scratch", "stain"]
    written = {part: _rows(splits / f"{part}.csv") for part in ("train", "val", "test")}
    part_of_id: dict[str, set[str]] = {}
    for part, rows in written.items():
        assert {r["part"] for r in rows} == {part}
        for r in rows:
            part_of_id.setdefault(r["group"], set()).add(part)
            assert r["group"] == Path(r["item"]).name.rsplit("_", 1)[0]  # the ID: everything before the last _
            assert r["label"] == Path(r["item"]).parent.name
    assert len(part_of_id) == 50 and all(len(parts) == 1 for parts in part_of_id.values())  # no leak
    assert sum(len(rows) for rows in written.values()) == 150
    # Stratified: every class in every part, in about 70/15/15 of its IDs.
    for cls, n in (("crack", 20), ("scratch", 20), ("stain", 10)):
        ids = {part: {r["group"] for r in rows if r["label"] == cls} for part, rows in written.items()}
        assert abs(len(ids["train"]) - 0.7 * n) <= 1 and len(ids["val"]) >= 1 and len(ids["test"]) >= 1
    assert (splits / "classes.txt").read_text().split() == ["crack", "scratch", "stain"]
    assert split.notes == []
    # Reused by every later call, even when the data changed since.
    _image(root / "crack" / "crack_lot_99_00.png")
    again = make_retrieval_split(_cfg(root=str(root), split_seed=5), splits)
    assert again.train == split.train and again.val == split.val and again.test == split.test
    assert "reused" in again.notes[0]
    # Same seed, same data, fresh folder: the same split; another seed: another one.
    (root / "crack" / "crack_lot_99_00.png").unlink()
    assert make_retrieval_split(_cfg(root=str(root)), tmp_path / "s2").val == split.val
    assert make_retrieval_split(_cfg(root=str(root), split_seed=1), tmp_path / "s3").val != split.val


def test_leak_in_split_files_is_an_error_naming_the_id(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 10, "scratch": 10})
    splits = tmp_path / "splits"
    make_retrieval_split(_cfg(root=str(root)), splits)
    val = _rows(splits / "val.csv")
    moved = val[0]  # one photo of a validation object moved into train: the object is in two parts
    train = _rows(splits / "train.csv") + [{**moved, "part": "train"}]
    with open(splits / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(train[0]))
        writer.writeheader()
        writer.writerows(train)
    with open(splits / "val.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(val[0]))
        writer.writeheader()
        writer.writerows(val[1:])
    with pytest.raises(DataError, match=f"group '{moved['group']}' is in train and val"):
        read_retrieval_split(splits)
    with pytest.raises(DataError, match=moved["group"]):
        make_retrieval_split(_cfg(root=str(root)), splits)


def test_small_classes_are_reported_and_a_partial_split_folder_refused(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 10, "scratch": 1})
    split = make_retrieval_split(_cfg(root=str(root)), tmp_path / "splits")
    assert split.classes == ["crack", "scratch"]
    assert any("class 'scratch' has 1 ID group(s)" in n and "train only" in n for n in split.notes)
    assert [r.label for r in split.train].count("scratch") == 3  # kept, in train, not dropped
    assert any("scratch" in n for n in read_retrieval_split(tmp_path / "splits").notes)  # also on reuse
    (tmp_path / "splits" / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv"):
        make_retrieval_split(_cfg(root=str(root)), tmp_path / "splits")


def test_min_image_size_excludes_whole_id_groups_and_counts_them(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 4, "scratch": 4})
    _image(root / "crack" / "crack_lot_1_01.png", size=(200, 12))  # one small photo of object crack_lot_1
    _image(root / "scratch" / "scratch_lot_2_00.png", size=(15, 90))
    found = discover_records(_cfg(root=str(root)))
    assert found.excluded_small_groups == 2
    groups = {r.group for r in found.records}
    assert "crack_lot_1" not in groups and "scratch_lot_2" not in groups and len(groups) == 6
    assert len(found.records) == 18  # 8 objects x 3 photos - 2 whole objects
    assert any("excluded 2 ID group(s) (6 images)" in n for n in found.notes)
    assert discover_records(_cfg(root=str(root), min_image_size=0)).excluded_small_groups == 0


def test_class_names_pick_and_order_classes_and_a_typo_lists_the_folders(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 2, "scratch": 2, "stain": 2})
    found = discover_records(_cfg(root=str(root), class_names=["stain", "crack"]))
    assert found.classes == ["stain", "crack"] and {r.label for r in found.records} == {"stain", "crack"}
    with pytest.raises(ConfigError, match=r"'scrach' has no folder .*folders found: crack, scratch, stain"):
        discover_records(_cfg(root=str(root), class_names=["crack", "scrach"]))


def test_group_by_id_false_makes_each_image_its_own_group_and_subfolders_are_searched(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 3, "scratch": 3})
    _image(root / "crack" / "noid.png")  # no '_': fine without IDs
    _image(root / "crack" / "Imgs" / "deep.jpg")  # in a subfolder of the class folder (magnetic tile)
    (root / "crack" / "readme.txt").write_text("not an image suffix: ignored")
    found = discover_records(_cfg(root=str(root), group_by_id=False))
    assert len({r.group for r in found.records}) == len(found.records) == 20
    assert {r.label for r in found.records if Path(r.path).name == "deep.jpg"} == {"crack"}
    only_jpg = discover_records(_cfg(root=str(root), group_by_id=False, extensions=["jpg"], class_names=["crack"]))
    assert [Path(r.path).name for r in only_jpg.records] == ["deep.jpg"]


def test_list_file_with_ids_a_header_or_no_ids(tmp_path: Path) -> None:
    for i in range(6):
        _image(tmp_path / "img" / f"a{i}.png")
        _image(tmp_path / "img" / f"b{i}.png")
    lines = [f"img/a{i}.png, 0, obj{i // 2}" for i in range(6)] + [f"img/b{i}.png, 1, obj{10 + i // 3}" for i in range(6)]
    (tmp_path / "ids.txt").write_text("\n".join(["# path, label, id", *lines, ""]))
    found = discover_records(_cfg(list_file=str(tmp_path / "ids.txt")))
    assert found.classes == ["0", "1"]
    assert sorted({r.group for r in found.records}) == ["obj0", "obj1", "obj10", "obj11", "obj2"]
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in found.records)

    # Grocery's layout: path, fine label, coarse label. The third column is not an ID: a header says so ...
    grocery = [f"img/a{i}.png, {i % 3}, 0" for i in range(6)] + [f"img/b{i}.png, {3 + i % 2}, 0" for i in range(6)]
    (tmp_path / "fine.txt").write_text("\n".join(["path,label,coarse", *grocery]))
    headed = discover_records(_cfg(list_file=str(tmp_path / "fine.txt"), group_by_id=False))
    assert headed.classes == ["0", "1", "2", "3", "4"] and len({r.group for r in headed.records}) == 12
    (tmp_path / "grocery.txt").write_text("\n".join(grocery))
    # ... or group_by_id=false; read as IDs, the coarse labels would join classes: refused.
    plain = discover_records(_cfg(list_file=str(tmp_path / "grocery.txt"), group_by_id=False))
    assert len({r.group for r in plain.records}) == 12
    with pytest.raises(DataError, match=r"ID '0' has images of classes '0' and '1'.*group_by_id=false"):
        discover_records(_cfg(list_file=str(tmp_path / "grocery.txt")))
    # Paths are relative to data.root when it is set; two columns take the ID from the file name.
    (tmp_path / "two.txt").write_text("a0.png, x\na1.png, x\n")
    two = discover_records(_cfg(list_file=str(tmp_path / "two.txt"), root=str(tmp_path / "img"), id_pattern=r"^(a)\d"))
    assert [r.group for r in two.records] == ["a", "a"]


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", {"crack": 2, "scratch": 2})
    (root / "stain").mkdir()
    (root / "stain" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*stain has no images") as err:
        discover_records(_cfg(root=str(root)))
    assert "\n" not in str(err.value)
    (root / "stain" / "notes.txt").unlink()
    (root / "stain").rmdir()

    _image(root / "crack" / "nounderscore.png")
    with pytest.raises(DataError, match=r"nounderscore\.png does not match data\.id_pattern"):
        discover_records(_cfg(root=str(root)))
    (root / "crack" / "nounderscore.png").unlink()

    (tmp_path / "missing.txt").write_text("data/crack/crack_lot_0_00.png, crack\ndata/crack/gone_0.png, crack\n")
    with pytest.raises(DataError, match=r"missing\.txt line 2: image .*gone_0\.png does not exist"):
        discover_records(_cfg(list_file=str(tmp_path / "missing.txt")))

    garbage = root / "crack" / "crack_lot_7_00.png"
    garbage.write_bytes(b"\x00\x01 not a png at all" * 10)
    good = root / "scratch" / "scratch_lot_0_00.png"
    truncated = root / "scratch" / "scratch_lot_8_00.png"
    truncated.write_bytes(good.read_bytes()[:-30])  # the image data is cut off
    for bad in (garbage, truncated):
        other = truncated if bad == garbage else garbage
        kept = other.read_bytes()
        other.unlink()
        with pytest.raises(DataError, match=rf"cannot read image .*{bad.name}.*--skip-bad") as err:
            discover_records(_cfg(root=str(root)))
        assert "\n" not in str(err.value)
        other.write_bytes(kept)
    found = discover_records(_cfg(root=str(root), skip_bad=True))
    assert sorted(Path(s.split(":")[0]).name for s in found.skipped) == [garbage.name, truncated.name]
    assert len(found.records) == 12 and any("skipped 2 unreadable image(s)" in n for n in found.notes)


def test_dataset_gives_rgb_squares_labels_and_seeded_augmentations(tmp_path: Path) -> None:
    gray = tmp_path / "g_0.png"
    Image.fromarray(np.arange(60 * 80, dtype=np.uint32).reshape(60, 80).astype(np.uint16) * 13).save(gray)
    rgb = _image(tmp_path / "c_0.png", size=(50, 70), colour=(250, 10, 100))
    records = [RetrievalRecord(str(gray), "gray", "g"), RetrievalRecord(str(rgb), "colour", "c"),
               RetrievalRecord(str(rgb), "other", "c")]
    plain = RetrievalImageDataset(records, ["colour", "gray"], image_size=24)
    item = plain[1]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"][:, 5, 5], torch.tensor([250, 10, 100]) / 255.0)
    assert plain[0]["image"].shape == (3, 24, 24)
    assert plain.labels.tolist() == [1, 0, -1] and plain.labels.dtype == np.int64
    assert int(item["label"]) == 0 and int(item["index"]) == 1
    assert torch.equal(plain[0]["image"], plain[0]["image"])  # no augmentation: the same pixels each time

    augmented = RetrievalImageDataset(records, ["colour", "gray"], image_size=24, augment=RetrievalAugmentConfig())
    torch.manual_seed(3)
    a = augmented[0]["image"]
    torch.manual_seed(3)
    b = augmented[0]["image"]
    c = augmented[0]["image"]
    assert a.shape == (3, 24, 24) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(b, c)
    off = RetrievalImageDataset(records, ["colour"], 24, augment=RetrievalAugmentConfig(enabled=False))
    assert off.transform is None
