"""Reference mode records: pairs CSV (labels, types, masks), a golden image or a name pattern over the
usual folder layout, and the reference column of the split file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabml.data.anomaly_data import AnomalyDataConfig, AnomalyImageDataset, discover_records, make_split, read_split, write_split
from fabml.data.reference_view import match_light, reference_on_image
from fabml.data.template_pairs import generate_template_pairs, make_template_pairs
from fabml.errors import ConfigError, DataError


def _image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)
    return path


def test_pairs_csv_gives_labels_types_masks_and_references(tmp_path: Path) -> None:
    root = make_template_pairs(tmp_path, n_layouts=2, n_good=1, n_defect=2, size=64, seed=1)
    records = discover_records(AnomalyDataConfig(root=str(root), pairs_csv="pairs.csv"))
    assert len(records) == 6
    good = [r for r in records if r.label == 0]
    bad = [r for r in records if r.label == 1]
    assert {r.defect_type for r in good} == {"good"} and all(r.mask_path is None for r in good)
    assert all(r.mask_path and Path(r.mask_path.split("#")[0]).is_file() for r in bad)
    assert all(r.defect_type != "defect" for r in bad)  # the defects column names the type
    assert all(Path(r.reference).parent.name == "golden" for r in records)
    dataset = AnomalyImageDataset(records, (64, 64))
    item = dataset[records.index(bad[0])]
    assert item["image"].shape == (2, 64, 64) and item["mask"].sum() > 0


def test_golden_image_or_pattern_over_the_folder_layout(tmp_path: Path) -> None:
    for name in ("a_1", "a_2"):
        _image(tmp_path / "data" / "good" / f"{name}.png")
    _image(tmp_path / "data" / "scratch" / "a_3.png")
    _image(tmp_path / "golden" / "a.png", 90)
    single = discover_records(AnomalyDataConfig(root=str(tmp_path / "data"), reference_image="../golden/a.png"))
    pattern = discover_records(AnomalyDataConfig(root=str(tmp_path / "data"), reference_pattern=r"(.+)_\d+",
                                                 reference_dir=str(tmp_path / "golden")))
    golden = str((tmp_path / "golden" / "a.png").resolve())
    assert [r.reference for r in single] == [golden] * 3 == [r.reference for r in pattern]
    assert [r.label for r in single] == [0, 0, 1]
    with pytest.raises(ConfigError, match="reference_dir"):
        discover_records(AnomalyDataConfig(root=str(tmp_path / "data"), reference_pattern=r"(.+)_\d+"))
    with pytest.raises(DataError, match="has no reference"):
        discover_records(AnomalyDataConfig(root=str(tmp_path / "data"), reference_pattern=r"(.+)_(\d+)",
                                           reference_dir=str(tmp_path / "data" / "good")))


def test_split_file_keeps_the_references(tmp_path: Path) -> None:
    root = make_template_pairs(tmp_path / "p", n_layouts=3, n_good=3, n_defect=1, size=64, seed=2)
    split = make_split(AnomalyDataConfig(root=str(root), pairs_csv="pairs.csv"))
    write_split(split, tmp_path / "split.csv")
    back = read_split(tmp_path / "split.csv")
    assert back == split and all(r.reference for r in back.train + back.val + back.test)


def test_reference_view_recovers_offset_and_light() -> None:
    data = generate_template_pairs(n_layouts=1, n_good=2, n_defect=0, size=96, seed=4)
    golden = data.goldens["layout_000"]
    for sample in data.samples:
        view = reference_on_image(sample.image[None], golden[None])
        t = sample.transform
        assert abs(view.offset.dx - t.dx) < 0.1 and abs(view.offset.dy - t.dy) < 0.1
        assert abs(view.offset.angle_deg - t.angle_deg) < 0.1
        assert view.residual_px < 0.1 and 0.9 < view.coverage <= 1.0
        diff = view.reference[0].astype(float) - sample.image.astype(float)
        assert np.abs(diff[8:-8, 8:-8]).mean() < 6.0  # noise (3 grey levels per image) is what is left


def test_match_light_undoes_gain_offset_and_gradient() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 255, (32, 32))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    image = 1.2 * ref - 10 + 8 * xx - 5 * yy
    image[4:8, 4:8] = 255  # a defect does not pull the fit
    matched = match_light(ref, image, np.ones((32, 32), bool))
    ok = np.ones((32, 32), bool)
    ok[4:8, 4:8] = False
    np.testing.assert_allclose(matched[ok], image[ok], atol=1e-6)
