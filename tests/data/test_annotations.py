"""Annotations as inspection teams keep them: VOC, COCO, YOLO, box text and .mat files -> masks and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import savemat

from fabml.data.annotations import Box, read_annotation, spec_format
from fabml.data.anomaly_data import AnomalyDataConfig, AnomalyImageDataset, ImageRecord, discover_records
from fabml.data.coco_annotations import decode_rle
from fabml.errors import ConfigError, DataError

W, H = 20, 10  # every test image is 20 wide and 10 high
BOX = (2, 3, 7, 8)  # x1, y1, x2, y2 in pixels: columns 2..6, rows 3..7


def _image(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 120, np.uint8)).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _box_mask(box: tuple[int, int, int, int] = BOX, size: tuple[int, int] = (H, W)) -> np.ndarray:
    out = np.zeros(size, np.float32)
    out[box[1]:box[3], box[0]:box[2]] = 1
    return out


def _voc(path: Path, boxes: list[tuple[str, int, int, int, int]], size: tuple[int, int] = (W, H)) -> Path:
    objects = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in boxes)
    return _write(path, f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"
                        f"{objects}</annotation>")


def test_box_text_lines_become_pixel_exact_masks_at_any_size(tmp_path: Path) -> None:
    spaced = _write(tmp_path / "a.txt", "# defects\n2 3 7 8 scratch\n\n")
    ann = read_annotation(str(spaced), (H, W))
    assert ann.boxes == [Box(2, 3, 7, 8, "scratch")]
    assert np.array_equal(ann.rasterise(), _box_mask())
    assert np.array_equal(ann.rasterise((2 * H, 2 * W)), _box_mask((4, 6, 14, 16), (2 * H, 2 * W)))
    half = ann.rasterise((H // 2, W // 2))  # rows 1.5..4 -> 1..3, columns 1..3.5 -> 1..3: every touched pixel
    assert np.array_equal(half, _box_mask((1, 1, 4, 4), (H // 2, W // 2)))
    commas = _write(tmp_path / "b.txt", "x1,y1,x2,y2,type\n2,3,7,8,dent\n0,0,1,1\n")
    assert read_annotation(str(commas), (H, W)).boxes == [Box(2, 3, 7, 8, "dent"), Box(0, 0, 1, 1, "")]


@pytest.mark.parametrize("text,message", [
    ("2 3 7\n", r"b.txt, line 1: expected 'x1 y1 x2 y2 \[type\]'.*found 3 column"),
    ("1 1 2 2\n2 3 7 8 a b\n", r"line 2: expected .*found 6 column"),
    ("2 3 25 8 dent\n", r"line 1: box \(2, 3, 25, 8\) lies outside the 20x10 image"),
    ("7 3 2 8\n", r"line 1: box .* is empty"),
    ("20.2 3 20.8 8\n", r"line 1: box \(20.2, 3, 20.8, 8\) lies outside"),
])
def test_box_text_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_annotation(str(_write(tmp_path / "b.txt", text)), (H, W))


def test_a_box_one_pixel_over_the_edge_is_clipped(tmp_path: Path) -> None:
    ann = read_annotation(str(_write(tmp_path / "e.txt", "15 5 20.6 10.4\n")), (H, W))
    assert ann.boxes == [Box(15, 5, 20, 10)]


def test_pascal_voc_boxes_are_one_based_inclusive(tmp_path: Path) -> None:
    xml = _voc(tmp_path / "x.xml", [("scratch", 3, 4, 7, 8), ("dent", 1, 1, 1, 1)])
    ann = read_annotation(str(xml), (H, W))
    assert ann.boxes == [Box(2, 3, 7, 8, "scratch"), Box(0, 0, 1, 1, "dent")]  # VOC pixel 1 = column 0
    expected = _box_mask()
    expected[0, 0] = 1
    assert np.array_equal(ann.rasterise(), expected)
    with pytest.raises(DataError, match=r"x.xml is for a 20x10 image but its image is 30x10"):
        read_annotation(str(xml), (H, 30))
    with pytest.raises(DataError, match=r"y.xml: object 1 has no <bndbox>"):
        read_annotation(str(_write(tmp_path / "y.xml", "<annotation><object><name>a</name></object></annotation>")),
                        (H, W))
    with pytest.raises(DataError, match=r"z.xml is not valid Pascal VOC XML"):
        read_annotation(str(_write(tmp_path / "z.xml", "<annotation><object>")), (H, W))


def test_yolo_boxes_are_fractions_of_the_image_with_class_names(tmp_path: Path) -> None:
    _write(tmp_path / "labels" / "classes.txt", "scratch\ndent\n")
    label = _write(tmp_path / "labels" / "a.txt", "1 0.225 0.55 0.25 0.5\n")  # centre (4.5, 5.5), 5 x 5 px
    ann = read_annotation(str(label), (H, W))
    assert spec_format(str(label)) == "txt" and len(ann.boxes) == 1 and ann.boxes[0].type == "dent"
    b = ann.boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx(BOX)
    assert np.array_equal(ann.rasterise(), _box_mask())
    seg = _write(tmp_path / "labels" / "s.txt", "0 0.1 0.3 0.35 0.3 0.35 0.8 0.1 0.8\n")  # the same box as a polygon
    poly = read_annotation(str(seg), (H, W))
    assert poly.boxes[0].type == "scratch" and np.array_equal(poly.rasterise(), _box_mask())
    thin = read_annotation(str(_write(tmp_path / "labels" / "t.txt", "0 0.5 0.5 0.6 0.52 0.5 0.52\n")), (H, W))
    assert thin.rasterise().sum() >= 1  # a sliver polygon keeps its vertex pixels
    with pytest.raises(DataError, match=r"line 1: YOLO coordinates must be fractions .*boxes_txt"):
        read_annotation(f"{_write(tmp_path / 'p.txt', '0 4 5 5 5')}#yolo", (H, W))
    with pytest.raises(DataError, match=r"line 1: expected YOLO 'class cx cy w h'.*found 6 column"):
        read_annotation(f"{_write(tmp_path / 'q.txt', '0 0.1 0.1 0.2 0.2 0.3')}#yolo", (H, W))
    with pytest.raises(DataError, match=r"r.txt, line 1: box .* lies outside"):
        read_annotation(str(_write(tmp_path / "r.txt", "0 0.95 0.5 0.5 0.2")), (H, W))


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed counts, written from the rule in decode_rle's docstring."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _coco(tmp_path: Path) -> Path:
    rle_mask = np.zeros((H, W), bool)
    rle_mask[1:3, 10:12] = True  # column-major runs of the 2 x 2 square at rows 1-2, columns 10-11
    runs, value, n = [], False, 0
    for v in rle_mask.T.ravel():
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    data = {
        "images": [{"id": 1, "file_name": "Crack/c1.png", "width": W, "height": H},
                   {"id": 2, "file_name": "c2.png", "width": W, "height": H},
                   {"id": 3, "file_name": "g0.png", "width": W, "height": H}],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [2, 3, 5, 5], "category_id": 7},
            {"id": 11, "image_id": 2, "bbox": [2, 3, 5, 5], "category_id": 8,
             "segmentation": [[3, 4, 6, 4, 6, 7, 3, 7]]},
            {"id": 12, "image_id": 2, "bbox": [10, 1, 2, 2], "category_id": 8,
             "segmentation": {"size": [H, W], "counts": _rle_string(runs)}},
        ],
        "categories": [{"id": 7, "name": "crack"}, {"id": 8, "name": "stain"}],
    }
    return _write(tmp_path / "instances.json", json.dumps(data))


def _per_type(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for i in range(4):
        _image(root / "Good" / f"g{i}.png")
    for stem in ("c1", "c2"):
        _image(root / "Crack" / f"{stem}.png")
    return root


def test_coco_boxes_polygons_and_rle_through_discovery(tmp_path: Path) -> None:
    root = _per_type(tmp_path)
    coco = _coco(tmp_path)
    cfg = AnomalyDataConfig(root=str(root), annotation_path=str(coco))
    records = [r for r in discover_records(cfg) if r.label == 1]
    assert [r.mask_path for r in records] == [f"{coco}#coco:1", f"{coco}#coco:2"]
    ds = AnomalyImageDataset(records, (H, W), channels=1)
    assert np.array_equal(ds[0]["mask"][0].numpy(), _box_mask())  # a bbox without segmentation is filled
    assert ds.boxes(0) == [Box(2, 3, 7, 8, "crack")]
    polygon_and_rle = ds[1]["mask"][0].numpy()
    assert polygon_and_rle[4:7, 3:6].all() and not polygon_and_rle[3, 2]  # the polygon, not its bbox
    assert polygon_and_rle[1:3, 10:12].all() and polygon_and_rle.sum() == 9 + 4  # pixel centres inside
    assert [b.type for b in ds.boxes(1)] == ["stain", "stain"]
    assert ds.boxes(0) and AnomalyImageDataset(records, (2 * H, 2 * W), 1).boxes(0) == [Box(4, 6, 14, 16, "crack")]


def test_rle_decoding_matches_the_mask() -> None:
    assert decode_rle([3, 2, 1], 2, 3).tolist() == [[False, False, True], [False, True, False]]  # column-major
    assert decode_rle(_rle_string([3, 2, 1]), 2, 3).tolist() == decode_rle([3, 2, 1], 2, 3).tolist()
    long_runs = [100, 37, 2, 300, 1, 0, 60]
    assert np.array_equal(decode_rle(_rle_string(long_runs), 20, 25), decode_rle(long_runs, 20, 25))


def test_coco_errors(tmp_path: Path) -> None:
    root = _per_type(tmp_path)
    coco = _coco(tmp_path)
    data = json.loads(coco.read_text())
    data["images"].append({"id": 4, "file_name": "ghost.png", "width": W, "height": H})
    _write(tmp_path / "ghost.json", json.dumps(data))
    with pytest.raises(DataError, match=r"ghost.json lists image 'ghost.png' \(id 4\), which matches no image"):
        discover_records(AnomalyDataConfig(root=str(root), annotation_path=str(tmp_path / "ghost.json")))
    data = json.loads(coco.read_text())
    data["images"][0]["width"] = 40
    _write(tmp_path / "wide.json", json.dumps(data))
    with pytest.raises(DataError, match=r"wide.json says image Crack/c1.png is 40x10 but the image is 20x10"):
        read_annotation(f"{tmp_path / 'wide.json'}#coco:1", (H, W))
    data = json.loads(coco.read_text())
    data["annotations"][0]["image_id"] = 99
    _write(tmp_path / "orphan.json", json.dumps(data))
    with pytest.raises(DataError, match=r"orphan.json: annotations refer to image id 99"):
        read_annotation(f"{tmp_path / 'orphan.json'}#coco:1", (H, W))
    _write(tmp_path / "broken.json", "{not json")
    with pytest.raises(DataError, match=r"broken.json is not readable JSON"):
        read_annotation(f"{tmp_path / 'broken.json'}#coco:1", (H, W))
    with pytest.raises(ConfigError, match=r"annotations=coco needs setting 'annotation_path'"):
        discover_records(AnomalyDataConfig(root=str(root), annotations="coco"))


def _mat_v73(path: Path, variables: dict[str, np.ndarray]) -> Path:
    """A MATLAB v7.3 file: HDF5 behind a 512-byte MATLAB header (arrays stored transposed, as MATLAB does)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in variables.items():
            f.create_dataset(name, data=arr.T)
    header = b"MATLAB 7.3 MAT-file, written by a test".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as f:
        f.write(header)
    return path


def test_mat_masks_v5_and_v73_with_a_variable_setting(tmp_path: Path) -> None:
    truth = _box_mask().astype(np.uint8) * 255
    savemat(tmp_path / "one.mat", {"gt": truth})
    savemat(tmp_path / "two.mat", {"gt": truth, "weights": np.ones((H, W)), "note": np.ones(3)})
    _mat_v73(tmp_path / "big.mat", {"gt": truth})
    assert np.array_equal(read_annotation(str(tmp_path / "one.mat"), (H, W)).rasterise(), _box_mask())
    assert np.array_equal(read_annotation(str(tmp_path / "big.mat"), (H, W)).rasterise(), _box_mask())
    assert np.array_equal(read_annotation(f"{tmp_path / 'two.mat'}#mat:gt", (H, W)).rasterise(), _box_mask())
    twice = read_annotation(str(tmp_path / "one.mat"), (2 * H, 2 * W)).rasterise((2 * H, 2 * W))
    assert np.array_equal(twice, _box_mask((4, 6, 14, 16), (2 * H, 2 * W)))  # nearest resize
    with pytest.raises(DataError, match=r"two.mat has several 2-D arrays \(variables: gt 10x20, note 1x3, "
                                        r"weights 10x20\); set data.mask_variable"):
        read_annotation(str(tmp_path / "two.mat"), (H, W))
    with pytest.raises(DataError, match=r"one.mat has no variable 'mask' \(data.mask_variable\); its variables: gt"):
        read_annotation(f"{tmp_path / 'one.mat'}#mat:mask", (H, W))
    _write(tmp_path / "junk.mat", "not a mat file at all" * 10)
    with pytest.raises(DataError, match=r"cannot read MATLAB mask file .*junk.mat"):
        read_annotation(str(tmp_path / "junk.mat"), (H, W))
    with pytest.raises(DataError, match=r"one.mat is 20x10 but its image is 10x20"):
        read_annotation(str(tmp_path / "one.mat"), (W, H))


def test_discovery_finds_annotation_files_beside_images_and_in_label_folders(tmp_path: Path) -> None:
    root = _per_type(tmp_path)
    _voc(root / "Crack" / "c1.xml", [("crack", 3, 4, 7, 8)])
    _write(root / "labels" / "Crack" / "c2.txt", "0 0.225 0.55 0.25 0.5\n")  # YOLO under <root>/labels/<type>/
    _write(root / "labels" / "classes.txt", "crack\n")
    _write(root / "labels" / "g0.txt", "")  # a normal image's empty label file is accepted
    records = {Path(r.path).stem: r for r in discover_records(AnomalyDataConfig(root=str(root)))}
    assert records["c1"].mask_path == str(root / "Crack" / "c1.xml")
    assert records["c2"].mask_path == str((root / "labels" / "Crack" / "c2.txt").resolve())
    assert records["g0"].mask_path is None and {r.defect_type for r in records.values()} == {"Good", "Crack"}
    ds = AnomalyImageDataset([records["c1"], records["c2"]], (H, W), 1)
    assert np.array_equal(ds[0]["mask"][0].numpy(), _box_mask()) and np.array_equal(ds[1]["mask"][0].numpy(),
                                                                                     _box_mask())
    forced = discover_records(AnomalyDataConfig(root=str(root), annotations="yolo"))
    assert [r.mask_path for r in forced if r.label == 1] == [None, f"{records['c2'].mask_path}#yolo"]
    _image(root / "Crack" / "c1_mask.png")
    with pytest.raises(DataError, match=r"image c1 in .*Crack has several masks"):
        discover_records(AnomalyDataConfig(root=str(root)))
    with pytest.raises(ConfigError, match=r"'annotations' = 'json' is unknown"):
        discover_records(AnomalyDataConfig(root=str(root), annotations="json"))


def test_annotation_folder_setting_and_mat_variable(tmp_path: Path) -> None:
    root = _per_type(tmp_path)
    ann = tmp_path / "elsewhere"
    ann.mkdir()
    savemat(ann / "c1.mat", {"gt": _box_mask(), "w": np.ones((H, W))})
    _write(ann / "c2.txt", "2 3 7 8 crack\n")
    cfg = AnomalyDataConfig(root=str(root), annotation_path=str(ann), mask_variable="gt")
    records = {Path(r.path).stem: r for r in discover_records(cfg)}
    assert records["c1"].mask_path == f"{ann / 'c1.mat'}#mat:gt" and records["c2"].mask_path == str(ann / "c2.txt")
    ds = AnomalyImageDataset([records["c1"], records["c2"]], (H, W), 1)
    assert all(np.array_equal(ds[i]["mask"][0].numpy(), _box_mask()) for i in range(2))
    _write(ann / "zz.txt", "1 1 2 2\n")
    with pytest.raises(DataError, match=r"zz.txt matches no image by file stem \(setting annotation_path\)"):
        discover_records(cfg)
    with pytest.raises(DataError, match=r"annotation folder .*nowhere does not exist"):
        discover_records(AnomalyDataConfig(root=str(root), annotation_path="nowhere"))


def test_a_record_pointing_at_a_bad_annotation_fails_with_the_file_named(tmp_path: Path) -> None:
    img = _image(tmp_path / "x.png")
    bad = _write(tmp_path / "x.txt", "2 3 70 8\n")
    ds = AnomalyImageDataset([ImageRecord(str(img), 1, "crack", str(bad))], (8, 8), 1)
    with pytest.raises(DataError, match=r"x.txt, line 1: box \(2, 3, 70, 8\) lies outside the 20x10 image"):
        ds[0]


def test_fit_and_evaluate_on_yolo_boxes(tmp_path: Path) -> None:
    """End to end: the generated inspection set with its Spot masks replaced by YOLO boxes and its Scratch
    masks deleted (reported in fit.json)."""
    from fabml.anomaly.config import AnomalyConfig
    from fabml.anomaly.pipeline import evaluate, fit
    from fabml.config import from_dict
    from fabml.data.synthetic_inspection import make_inspection_set

    root = make_inspection_set(tmp_path / "set", n_normal=12, n_defect=4, size=32, defect_types=("Spot", "Scratch"))
    for mask_file in (root / "Scratch" / "masks").iterdir():
        mask_file.unlink()
    truth = {}
    for mask_file in sorted((root / "Spot" / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_file)) > 127
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        x1, y1, x2, y2 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1  # the spot is a filled square
        _write(root / "labels" / "Spot" / f"{mask_file.stem}.txt",
               f"0 {(x1 + x2) / 64} {(y1 + y2) / 64} {(x2 - x1) / 32} {(y2 - y1) / 32}\n")
        truth[mask_file.stem] = mask
        mask_file.unlink()
    (root / "Spot" / "masks").rmdir()
    _write(root / "labels" / "classes.txt", "spot\n")
    cfg = from_dict(AnomalyConfig, {
        "model": {"name": "padim", "backbone": "resnet18", "layers": [1, 2], "pretrained": False, "n_features": 32},
        "data": {"root": str(root), "image_size": [32, 32], "train_fraction": 0.75, "val_fraction": 0.25},
        "batch_size": 8, "device": "cpu",
    })
    fit(cfg, tmp_path / "run")
    split = pd.read_csv(tmp_path / "run" / "split.csv", keep_default_na=False)
    fit_json = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert "defect type 'Scratch' has no masks while Spot has" in fit_json["split"]
    defects = split[split["defect_type"] == "Spot"]
    assert len(defects) == 4 and defects["mask_path"].str.endswith(".txt").all()
    records = [ImageRecord(p, 1, "Spot", m) for p, m in zip(defects["item"], defects["mask_path"])]
    ds = AnomalyImageDataset(records, (32, 32), 1)
    assert all(np.array_equal(ds[i]["mask"][0].numpy() > 0, truth[Path(r.path).stem]) for i, r in enumerate(records))
    evaluate(tmp_path / "run", tmp_path / "eval", figures=False)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and metrics["image_auroc"] > 0.7


def test_folders_layout_with_an_annotation_folder_and_a_mask_dir(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / "normal" / f"n{i}.png")
    _image(tmp_path / "bad" / "scratch" / "s1.png")
    _image(tmp_path / "bad" / "dent" / "d1.png")
    _voc(tmp_path / "ann" / "scratch" / "s1.xml", [("scratch", 3, 4, 7, 8)])
    _write(tmp_path / "ann" / "n0.txt", "")  # annotations of normal images are accepted and ignored
    _write(tmp_path / "masks" / "dent" / "d1.txt", "2 3 7 8 dent\n")
    cfg = AnomalyDataConfig(root=str(tmp_path), normal_dir="normal", abnormal_dir="bad", mask_dir="masks",
                            annotation_path="ann")
    records = discover_records(cfg)
    assert [(r.defect_type, r.mask_path) for r in records if r.label == 1] == [
        ("dent", str(tmp_path / "masks" / "dent" / "d1.txt")), ("scratch", str(tmp_path / "ann" / "scratch" / "s1.xml"))]
    ds = AnomalyImageDataset(records[3:], (H, W), 1)
    assert all(np.array_equal(ds[i]["mask"][0].numpy(), _box_mask()) for i in range(2))
    assert [b.type for i in range(2) for b in ds.boxes(i)] == ["dent", "scratch"]
