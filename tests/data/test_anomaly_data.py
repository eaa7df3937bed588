"""Anomaly image folders: discovery (both layouts), the normal-only grouped split, decoding, the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fabml.data.anomaly_data import (
    AnomalyDataConfig,
    AnomalyImageDataset,
    AnomalySplit,
    ImageRecord,
    detect_channels,
    discover_records,
    load_image,
    load_mask,
    make_split,
    read_split,
    split_records,
    write_split,
)
from fabml.data.splits import groups_from_pattern
from fabml.errors import ConfigError, DataError

MAGNETIC_TILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "magnetic_tile"


def _gray(path: Path, size: tuple[int, int] = (12, 10), value: int = 100) -> Path:
    """A gray image of size (W, H) with a bright square, saved as jpg/png by suffix."""
    arr = np.full((size[1], size[0]), value, np.uint8)
    arr[2:5, 2:5] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rgb(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 200, 50, 10
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (12, 10), box: tuple[int, int, int, int] = (0, 0, 6, 10)) -> Path:
    """Mask (W, H) with 255 inside box (x0, y0, x1, y1)."""
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def per_type_root(tmp_path: Path) -> Path:
    """MT_Free (6 normals in Imgs/ with png masks), MT_Crack (2 in Imgs/ + png masks),
    MT_Break (images directly, masks in masks/ with _mask suffix), MT_Fray_mask/ for MT_Fray."""
    root = tmp_path / "tiles"
    for i in range(6):
        _gray(root / "MT_Free" / "Imgs" / f"free{i}.jpg", value=90 + i)
        _mask(root / "MT_Free" / "Imgs" / f"free{i}.png", box=(0, 0, 0, 0))
    for name in ("c1", "c2"):
        _gray(root / "MT_Crack" / "Imgs" / f"{name}.jpg")
        _mask(root / "MT_Crack" / "Imgs" / f"{name}.png")
    _gray(root / "MT_Break" / "b1.png")
    _mask(root / "MT_Break" / "masks" / "b1_mask.png")
    _gray(root / "MT_Fray" / "f1.bmp")
    _mask(root / "MT_Fray_mask" / "f1.png")
    (root / "README.txt").write_text("not an image folder")
    return root


def test_per_type_discovery(per_type_root: Path) -> None:
    records = discover_records(AnomalyDataConfig(root=str(per_type_root)))
    assert [(r.label, r.defect_type) for r in records] == [(0, "Free")] * 6 + [
        (1, "Break"), (1, "Crack"), (1, "Crack"), (1, "Fray")
    ]
    assert all(r.path.endswith((".jpg", ".bmp")) or "b1.png" in r.path for r in records)  # masks not listed as images
    assert all(r.mask_path is None for r in records if r.label == 0)
    by_name = {Path(r.path).stem: r for r in records}
    assert by_name["c1"].mask_path == str(per_type_root / "MT_Crack" / "Imgs" / "c1.png")
    assert by_name["b1"].mask_path == str(per_type_root / "MT_Break" / "masks" / "b1_mask.png")
    assert by_name["f1"].mask_path == str(per_type_root / "MT_Fray_mask" / "f1.png")
    assert all(Path(r.path).is_absolute() for r in records)
    assert discover_records(AnomalyDataConfig(root=str(per_type_root), layout="per_type")) == records


def test_per_type_normal_type(per_type_root: Path) -> None:
    records = discover_records(AnomalyDataConfig(root=str(per_type_root), normal_type="mt_crack"))
    assert {r.defect_type for r in records if r.label == 0} == {"Crack"}
    with pytest.raises(ConfigError, match="normal_type='Dust'.*MT_Break"):
        discover_records(AnomalyDataConfig(root=str(per_type_root), normal_type="Dust"))
    (per_type_root / "MT_Free").rename(per_type_root / "MT_Clean")
    with pytest.raises(ConfigError, match="none is named good/free/normal/ok.*set normal_type"):
        discover_records(AnomalyDataConfig(root=str(per_type_root)))


def test_per_type_orphan_mask(per_type_root: Path) -> None:
    _mask(per_type_root / "MT_Break" / "masks" / "ghost_mask.png")
    with pytest.raises(DataError, match="ghost_mask.png matches no image"):
        discover_records(AnomalyDataConfig(root=str(per_type_root)))


@pytest.fixture()
def folders_root(tmp_path: Path) -> Path:
    """normal/ 5 RGB png, bad/ 1 direct jpg + scratch/ 2 jpg, masks/ flat d1.png + scratch/s1_mask.png."""
    root = tmp_path / "set"
    for i in range(5):
        _rgb(root / "normal" / f"n{i}.png")
    _gray(root / "bad" / "d1.jpg")
    _gray(root / "bad" / "scratch" / "s1.jpg")
    _gray(root / "bad" / "scratch" / "s2.jpg")
    _mask(root / "masks" / "d1.png")
    _mask(root / "masks" / "scratch" / "s1_mask.png")
    return root


def test_folders_discovery(folders_root: Path) -> None:
    cfg = AnomalyDataConfig(root=str(folders_root), normal_dir="normal", abnormal_dir="bad", mask_dir="masks")
    records = discover_records(cfg)
    assert [(r.label, r.defect_type, Path(r.path).name) for r in records] == [
        (0, "normal", f"n{i}.png") for i in range(5)
    ] + [(1, "bad", "d1.jpg"), (1, "scratch", "s1.jpg"), (1, "scratch", "s2.jpg")]
    masks = [r.mask_path for r in records[5:]]
    mask_root = folders_root / "masks"
    assert masks == [str(mask_root / "d1.png"), str(mask_root / "scratch" / "s1_mask.png"), None]
    # absolute folders work without root
    absolute = AnomalyDataConfig(normal_dir=str(folders_root / "normal"), abnormal_dir=str(folders_root / "bad"))
    assert len(discover_records(absolute)) == 8


def test_folders_errors(folders_root: Path) -> None:
    base = dict(root=str(folders_root), normal_dir="normal", abnormal_dir="bad", mask_dir="masks")
    _mask(folders_root / "masks" / "zz_unknown.png")
    with pytest.raises(DataError, match="mask .*zz_unknown.png matches no image.*mask_dir"):
        discover_records(AnomalyDataConfig(**base))
    (folders_root / "empty").mkdir()
    with pytest.raises(DataError, match=r"normal image folder .*empty has no images.*normal_dir"):
        discover_records(AnomalyDataConfig(**{**base, "normal_dir": "empty"}))
    with pytest.raises(DataError, match=r"normal image folder .*missing does not exist \(setting normal_dir\)"):
        discover_records(AnomalyDataConfig(**{**base, "normal_dir": "missing"}))
    with pytest.raises(ConfigError, match="layout='flat' is unknown"):
        discover_records(AnomalyDataConfig(**{**base, "layout": "flat"}))
    with pytest.raises(ConfigError, match="needs setting 'normal_dir'"):
        discover_records(AnomalyDataConfig(root=str(folders_root), layout="folders"))


def _records(n_normal: int, n_abnormal: int) -> list[ImageRecord]:
    return [ImageRecord(f"/d/n{i:02d}.png", 0, "good") for i in range(n_normal)] + [
        ImageRecord(f"/d/a{i:02d}.png", 1, "crack", f"/d/a{i:02d}_mask.png") for i in range(n_abnormal)
    ]


def test_split_counts_disjoint_and_deterministic() -> None:
    records = _records(20, 4)
    split = split_records(records, 0.7, 0.1, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (13, 1, 6 + 4)  # 14 fit, round(1.4) = 1 val
    paths = [[r.path for r in part] for part in (split.train, split.val, split.test)]
    assert sorted(sum(paths, [])) == sorted(r.path for r in records)  # a partition
    assert all(r.label == 0 for r in split.train + split.val)
    assert {r.path for r in records if r.label == 1} <= set(paths[2])
    assert split_records(records, 0.7, 0.1, seed=3) == split
    assert split_records(records, 0.7, 0.1, seed=4) != split
    # more abnormal images do not change which normals are held out
    assert split_records(_records(20, 9), 0.7, 0.1, seed=3).val == split.val
    assert split.summary() == "train 13 normal | val 1 normal | test 6 normal + 4 abnormal (crack 4)"


def test_split_val_only_from_fit_pool() -> None:
    records = _records(10, 0)
    for seed in range(5):
        split = split_records(records, 0.5, 0.4, seed)
        assert len(split.val) == 2 and len(split.train) == 3 and len(split.test) == 5
        assert not {r.path for r in split.val} & {r.path for r in split.test}


def test_split_errors() -> None:
    with pytest.raises(ConfigError, match="'train_fraction' = 1.0 must lie strictly between 0 and 1"):
        split_records(_records(5, 1), 1.0, 0.1, 0)
    with pytest.raises(ConfigError, match="'val_fraction' = 0"):
        split_records(_records(5, 1), 0.7, 0, 0)
    with pytest.raises(DataError, match="at least 2 normal images"):
        split_records(_records(1, 3), 0.7, 0.1, 0)


def test_split_csv_round_trip_and_legacy_json(tmp_path: Path) -> None:
    split = split_records(_records(8, 2), 0.7, 0.2, 0)
    write_split(split, tmp_path / "out" / "split.csv")
    table = pd.read_csv(tmp_path / "out" / "split.csv", keep_default_na=False)
    assert list(table.columns) == ["item", "part", "group", "stratum", "label", "defect_type", "mask_path"]
    assert table.loc[table["label"] == 1, "part"].eq("test").all()
    assert read_split(tmp_path / "out" / "split.csv") == split
    # a run written before the CSV split: its split.json is still read, also when the CSV name is asked for
    legacy = {"format": "fabml-anomaly-split", "version": 1, **{
        part: [{"path": r.path, "label": r.label, "defect_type": r.defect_type, "mask_path": r.mask_path}
               for r in getattr(split, part)] for part in ("train", "val", "test")}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "split.json").write_text(json.dumps(legacy))
    assert read_split(tmp_path / "old" / "split.csv") == split
    (tmp_path / "bad.json").write_text(json.dumps({"format": "fabml-anomaly-split", "train": [{"path": "x"}]}))
    with pytest.raises(DataError, match="bad.json: entry list 'train' is malformed"):
        read_split(tmp_path / "bad.json")
    with pytest.raises(DataError, match="nope.csv does not exist"):
        read_split(tmp_path / "nope.csv")


def test_split_file_with_a_defect_in_train_is_refused(tmp_path: Path) -> None:
    split = split_records(_records(8, 2), 0.7, 0.2, 0)
    write_split(split, tmp_path / "split.csv")
    table = pd.read_csv(tmp_path / "split.csv", keep_default_na=False)
    table.loc[table["label"] == 1, "part"] = "train"
    table.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(DataError, match="defective image is in train or val"):
        read_split(tmp_path / "split.csv")


def test_groups_keep_the_tiles_of_one_photo_together() -> None:
    # 6 photos of 4 tiles each (photo<k>_tile<j>.png); photo 5's tile 3 is defective
    records = [ImageRecord(f"/d/photo{k}_tile{j}.png", int(k == 5 and j == 3), "good" if not (k == 5 and j == 3)
                           else "crack") for k in range(6) for j in range(4)]
    groups = groups_from_pattern([r.path for r in records], r"^(photo\d+)_")
    for seed in range(5):
        split = split_records(records, 0.7, 0.3, seed, groups=groups)
        part_of = {}
        for part in ("train", "val", "test"):
            for r in getattr(split, part):
                part_of.setdefault(Path(r.path).name.split("_")[0], set()).add(part)
        assert all(len(parts) == 1 for parts in part_of.values()), part_of
        assert part_of["photo5"] == {"test"}  # a defective tile takes its whole photo to test
        assert split.train and split.val


def test_make_split_takes_groups_from_the_data_settings(per_type_root: Path, tmp_path: Path) -> None:
    defects = ["MT_Crack/Imgs/c1.jpg", "c2.jpg", "b1.png", "f1.bmp"]  # every image is listed
    pd.DataFrame({"path": [f"free{i}.jpg" for i in range(6)] + defects,
                  "group": ["p0", "p0", "p1", "p1", "p2", "p2", "d0", "d1", "d2", "d3"]}).to_csv(
        tmp_path / "photos.csv", index=False)
    for seed in range(3):
        split = make_split(AnomalyDataConfig(root=str(per_type_root), group_file=str(tmp_path / "photos.csv"),
                                             train_fraction=0.6, val_fraction=0.5, split_seed=seed))
        sides = [{p for p in ("train", "val", "test") if any(Path(r.path).stem in pair for r in getattr(split, p))}
                 for pair in (("free0", "free1"), ("free2", "free3"), ("free4", "free5"))]
        assert sorted(len(s) for s in sides) == [1, 1, 1] and {s.pop() for s in sides} == {"train", "val", "test"}
    with pytest.raises(DataError, match=r"file name b1\.png does not match data\.group_pattern"):
        make_split(AnomalyDataConfig(root=str(per_type_root), group_pattern=r"^free(\d)"))


def test_load_image_channels_and_errors(tmp_path: Path) -> None:
    gray = load_image(str(_gray(tmp_path / "g.png")), channels=1)
    assert gray.shape == (10, 12, 1) and gray.dtype == np.uint8 and gray[3, 3, 0] == 220 and gray[0, 0, 0] == 100
    as_rgb = load_image(str(tmp_path / "g.png"), channels=3)
    assert as_rgb.shape == (10, 12, 3) and (as_rgb == gray).all()
    luma = load_image(str(_rgb(tmp_path / "c.png")), channels=1, size=(5, 7))
    assert luma.shape == (5, 7, 1)
    assert abs(int(luma[0, 0, 0]) - round(0.299 * 200 + 0.587 * 50 + 0.114 * 10)) <= 1  # ITU-R 601 luma
    deep = np.full((4, 4), 40000, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert load_image(str(tmp_path / "deep.png"), channels=1)[0, 0, 0] == 40000 >> 8
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="cannot read image file .*broken.jpg"):
        load_image(str(tmp_path / "broken.jpg"), channels=1)
    full = (tmp_path / "g.jpg")
    _gray(full, size=(64, 64))
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(str(tmp_path / "cut.jpg"), channels=1)
    with pytest.raises(ConfigError, match="'channels' = 2"):
        load_image(str(tmp_path / "g.png"), channels=2)


def test_load_mask_threshold_and_resize(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 100, 127, 128, 255]], np.uint8)).save(tmp_path / "aa.png")
    assert load_mask(str(tmp_path / "aa.png")).tolist() == [[0, 0, 0, 1, 1]]
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(tmp_path / "01.png")
    assert load_mask(str(tmp_path / "01.png")).tolist() == [[0, 1], [1, 0]]  # 0/1-coded masks
    half = _mask(tmp_path / "half.png", size=(8, 8), box=(0, 0, 4, 8))
    small = load_mask(str(half), size=(4, 4))
    assert small.dtype == np.float32 and small.tolist() == [[1, 1, 0, 0]] * 4


def test_detect_channels(tmp_path: Path) -> None:
    grays = [ImageRecord(str(_gray(tmp_path / f"g{i}.jpg")), 0, "good") for i in range(3)]
    gray_rgb = Image.fromarray(np.stack([np.arange(12, dtype=np.uint8).reshape(3, 4)] * 3, axis=-1))
    gray_rgb.save(tmp_path / "grayrgb.png")
    assert detect_channels(grays + [ImageRecord(str(tmp_path / "grayrgb.png"), 0, "good")]) == 1
    assert detect_channels(grays + [ImageRecord(str(_rgb(tmp_path / "c.png")), 1, "x")]) == 3
    with pytest.raises(DataError, match="empty image list"):
        detect_channels([])


def test_dataset_items_and_cache(per_type_root: Path) -> None:
    records = discover_records(AnomalyDataConfig(root=str(per_type_root)))
    ds = AnomalyImageDataset(records, image_size=(5, 6), channels=0, cache=True)
    assert ds.channels == 1 and len(ds) == 10
    item = ds[7]  # Crack c1: mask covers the left half (x < 6 of 12)
    assert item["image"].shape == (1, 5, 6) and item["image"].dtype.is_floating_point
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (1, 5, 6) and item["mask"][0, :, :3].eq(1).all() and item["mask"][0, :, 3:].eq(0).all()
    assert item["label"].item() == 1 and item["index"].item() == 7 and item["label"].dtype.is_floating_point is False
    assert ds[0]["mask"].sum() == 0 and ds[0]["label"].item() == 0
    rgb = AnomalyImageDataset(records[:2], image_size=(4, 4), channels=3)
    assert rgb[0]["image"].shape == (3, 4, 4) and rgb[0]["image"][0].equal(rgb[0]["image"][2])
    ds.preload()
    Path(records[3].path).unlink()
    assert ds[3]["image"].shape == (1, 5, 6)  # served from the cache
    with pytest.raises(DataError, match="does not exist"):
        AnomalyImageDataset(records, (5, 6), channels=1)[3]


def test_dataset_mask_shape_mismatch(tmp_path: Path) -> None:
    img = _gray(tmp_path / "x.jpg", size=(20, 10))
    mask = _mask(tmp_path / "m.png", size=(10, 20))
    ds = AnomalyImageDataset([ImageRecord(str(img), 1, "crack", str(mask))], image_size=(8, 8), channels=1)
    with pytest.raises(DataError, match="mask .*m.png is 10x20 but its image .*x.jpg is 20x10"):
        ds[0]
    with pytest.raises(ConfigError, match="'image_size'"):
        AnomalyImageDataset([], image_size=(8,), channels=1)


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="shared magnetic_tile data not present")
def test_magnetic_tile_smoke() -> None:
    cfg = AnomalyDataConfig(root=str(MAGNETIC_TILE), image_size=[32, 32])
    records = discover_records(cfg)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.defect_type] = counts.get(r.defect_type, 0) + 1
    assert counts == {"Free": 952, "Blowhole": 115, "Uneven": 103, "Break": 85, "Crack": 57, "Fray": 32}
    assert all(r.label == (r.defect_type != "Free") for r in records)
    assert all(r.mask_path and r.mask_path.endswith(".png") for r in records if r.label == 1)
    assert all(r.path.endswith(".jpg") for r in records)
    split = make_split(cfg)
    assert isinstance(split, AnomalySplit)
    assert (len(split.train), len(split.val), len(split.test)) == (599, 67, 286 + 392)
    sample = [r for r in split.test if r.label == 1][:2]
    ds = AnomalyImageDataset(sample, cfg.image_size, channels=detect_channels(records))
    item = ds[0]
    assert ds.channels == 1 and item["image"].shape == (1, 32, 32) and item["mask"].sum() > 0


def test_load_mask_keeps_tiny_defects(tmp_path: Path) -> None:
    arr = np.zeros((16, 16), np.uint8)
    arr[5, 9] = 255  # one pixel: 1/16 of an output pixel after shrinking to 4 x 4
    Image.fromarray(arr).save(tmp_path / "dot.png")
    small = load_mask(str(tmp_path / "dot.png"), size=(4, 4))
    assert small.sum() >= 1 and small[1, 2] == 1
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(tmp_path / "faint.png")  # no pixel > 127
    assert load_mask(str(tmp_path / "faint.png"), size=(4, 4)).sum() == 0


def _root_with_mask_folder(tmp_path: Path, folder: str = "masks", nested: bool = True) -> Path:
    """Good/ 4 normals, Crack/ c1 c2, Dent/ d1; masks in <root>/<folder>/<type>/ (nested) or flat."""
    root = tmp_path / "boards"
    for i in range(4):
        _gray(root / "Good" / f"g{i}.png", value=90 + i)
    for stem, kind in (("c1", "Crack"), ("c2", "Crack"), ("d1", "Dent")):
        _gray(root / kind / f"{stem}.jpg")
        _mask(root / folder / (kind if nested else ".") / f"{stem}.png")
    return root


@pytest.mark.parametrize("folder,nested", [("masks", True), ("GT", False), ("ground_truth", True)])
def test_a_mask_folder_beside_the_types_is_masks_not_a_type(tmp_path: Path, folder: str, nested: bool) -> None:
    root = _root_with_mask_folder(tmp_path, folder, nested)
    records = discover_records(AnomalyDataConfig(root=str(root)))
    assert sorted({r.defect_type for r in records}) == ["Crack", "Dent", "Good"]
    masks = {Path(r.path).stem: r.mask_path for r in records if r.label == 1}
    sub = ("Crack", "Crack", "Dent") if nested else (".", ".", ".")
    assert masks == {s: str((root / folder / k / f"{s}.png").resolve()) for s, k in zip(("c1", "c2", "d1"), sub)}


def test_a_binary_folder_with_matching_stems_is_masks(tmp_path: Path) -> None:
    root = _root_with_mask_folder(tmp_path, "annot_png", nested=False)  # not a mask-like name: binary content
    records = discover_records(AnomalyDataConfig(root=str(root)))
    assert sorted({r.defect_type for r in records}) == ["Crack", "Dent", "Good"]
    assert all(r.mask_path and "annot_png" in r.mask_path for r in records if r.label == 1)


def test_a_mask_folder_that_matches_no_image_is_an_error(tmp_path: Path) -> None:
    root = _root_with_mask_folder(tmp_path)
    (root / "masks" / "Dent" / "d1.png").rename(root / "masks" / "Dent" / "dent_001.png")
    with pytest.raises(DataError, match=r"folder .*masks beside the type folders .*dent_001.png matches no image"
                                        r".*<root>/masks/<type>/<stem>"):
        discover_records(AnomalyDataConfig(root=str(root)))


def test_a_defect_type_without_masks_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _root_with_mask_folder(tmp_path)
    for p in (root / "masks" / "Dent").iterdir():
        p.unlink()
    split = make_split(AnomalyDataConfig(root=str(root), train_fraction=0.5, val_fraction=0.5))
    note = "defect type 'Dent' has no masks while Crack has"
    assert any(note in n for n in split.notes) and note in split.summary()
    assert note in capsys.readouterr().err


def test_a_flat_mask_named_like_images_of_two_types_is_an_error(tmp_path: Path) -> None:
    root = _root_with_mask_folder(tmp_path, nested=False)
    _gray(root / "Dent" / "c1.jpg")  # a second c1, now of type Dent
    with pytest.raises(DataError, match=r"masks/c1.png matches images of types Crack and Dent; put masks in"):
        discover_records(AnomalyDataConfig(root=str(root)))
