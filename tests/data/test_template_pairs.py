"""Generated golden-template pairs: reproducible, different layouts, boxes where the defects are,
defect-free copies that differ from the golden image only by misalignment, light and noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabml.data.alignment import align, warp_to_reference
from fabml.data.annotations import read_annotation
from fabml.data.reference_pairs import pairs_from_csv, pairs_from_pattern
from fabml.data.template_pairs import DEFECT_KINDS, generate_template_pairs, make_template_pairs
from fabml.errors import ConfigError

SIZE = 96


@pytest.fixture(scope="module")
def data():
    return generate_template_pairs(n_layouts=3, n_good=2, n_defect=5, size=SIZE, seed=3)


def _light_corrected(aligned: np.ndarray, golden: np.ndarray, use: np.ndarray) -> np.ndarray:
    """aligned minus the least-squares fit a*golden + b + c*x + d*y (gain, offset, gradient) on ``use``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    design = np.stack([golden, np.ones_like(golden), xx, yy], axis=-1).astype(np.float64)
    coef = np.linalg.lstsq(design[use], aligned[use], rcond=None)[0]
    return aligned - design @ coef


def _interior(valid: np.ndarray, margin: int = 6) -> np.ndarray:
    use = valid.copy()
    use[:margin], use[-margin:], use[:, :margin], use[:, -margin:] = False, False, False, False
    return use


def test_seeded_and_reproducible(data) -> None:
    again = generate_template_pairs(n_layouts=3, n_good=2, n_defect=5, size=SIZE, seed=3)
    assert all(np.array_equal(data.goldens[k], again.goldens[k]) for k in data.goldens)
    for a, b in zip(data.samples, again.samples):
        assert np.array_equal(a.image, b.image) and a.boxes == b.boxes and a.transform == b.transform
    other = generate_template_pairs(n_layouts=1, n_good=1, n_defect=0, size=SIZE, seed=4)
    assert not np.array_equal(other.goldens["layout_000"], data.goldens["layout_000"])


def test_shapes_labels_and_nuisance_ranges(data) -> None:
    assert len(data.goldens) == 3 and len(data.samples) == 3 * 7
    assert [s.label for s in data.samples[:7]] == [0, 0, 1, 1, 1, 1, 1]
    for s in data.samples:
        assert s.image.shape == (SIZE, SIZE) and s.image.dtype == np.uint8
        assert abs(s.transform.dx) <= 3 and abs(s.transform.dy) <= 3 and abs(s.transform.angle_deg) <= 1
        assert 0.85 <= s.gain <= 1.15 and -15 <= s.offset <= 15
        assert all(b.type in DEFECT_KINDS for b in s.boxes)
        assert all(0 <= b.x1 < b.x2 <= SIZE and 0 <= b.y1 < b.y2 <= SIZE for b in s.boxes)
    assert np.ptp([s.transform.angle_deg for s in data.samples]) > 0.5
    assert len({b.type for s in data.samples for b in s.boxes}) >= 4


def test_layouts_differ(data) -> None:
    names = sorted(data.goldens)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ga, gb = data.goldens[a].astype(float), data.goldens[b].astype(float)
            assert np.abs(ga - gb).mean() > 15
            assert align(gb, ga).peak < 0.3  # no shift or turn makes one layout the other


def test_boxes_cover_the_defect_pixels(data) -> None:
    for s in data.samples:
        diff = np.abs(s.image.astype(float) - s.clean.astype(float))  # same view, light and noise
        if not s.boxes:
            assert diff.max() == 0
            continue
        inside = np.zeros((SIZE, SIZE), bool)
        for b in s.boxes:
            rows, cols = b.pixels(SIZE, SIZE)
            assert diff[rows, cols].max() > 25, (s.name, b)  # each box holds a visible defect
            inside[max(0, rows.start - 2):rows.stop + 2, max(0, cols.start - 2):cols.stop + 2] = True
        assert not (diff[~inside] > 8).any(), s.name  # nothing changed outside the boxes (+2 px)


def test_good_copies_differ_from_golden_by_nuisance_only(data) -> None:
    for s in data.samples:
        golden = data.goldens[s.layout].astype(float)
        aligned, valid = warp_to_reference(s.image, s.transform)  # the true transform
        use = _interior(valid)
        res = _light_corrected(aligned, golden, use)[use]
        if s.label == 0:
            # sensor noise (3 and 1.5 grey levels) + edges resampled twice; measured std 3.5-5.5, max <= 31
            assert res.std() < 6.0 and np.abs(res).max() < 35, s.name
        else:
            assert np.abs(res).max() > 40, s.name


def test_aligned_difference_peaks_inside_a_box(data) -> None:
    """What a template comparison does: align, correct the light, take the largest difference."""
    for s in data.samples:
        if not s.boxes:
            continue
        golden = data.goldens[s.layout].astype(float)
        result = align(s.image, golden)
        use = _interior(result.valid)
        res = np.where(use, np.abs(_light_corrected(result.aligned, golden, use)), 0)
        r, c = np.unravel_index(int(np.argmax(res)), res.shape)
        x, y = result.transform.apply(np.array(c + 0.5), np.array(r + 0.5), (SIZE, SIZE))
        assert any(b.x1 - 2 <= x <= b.x2 + 2 and b.y1 - 2 <= y <= b.y2 + 2 for b in s.boxes), s.name


def test_written_folder_reads_back(tmp_path: Path) -> None:
    root = make_template_pairs(tmp_path / "set", n_layouts=2, n_good=1, n_defect=2, size=SIZE, seed=5)
    data = generate_template_pairs(n_layouts=2, n_good=1, n_defect=2, size=SIZE, seed=5)
    pairs = pairs_from_csv(root / "pairs.csv")
    assert [(Path(p.image).name, Path(p.reference).name, p.label) for p in pairs] == [
        (f"{s.name}.png", f"{s.layout}.png", s.label) for s in data.samples]
    by_pattern = pairs_from_pattern(root / "test", r"(.+)_\d+", root / "golden")
    assert [(p.image, p.reference) for p in by_pattern] == [(p.image, p.reference) for p in pairs]
    for s, p in zip(data.samples, pairs):
        assert np.array_equal(np.asarray(Image.open(p.image)), s.image)
        assert np.array_equal(np.asarray(Image.open(p.reference)), data.goldens[s.layout])
        box_file = root / "boxes" / f"{s.name}.txt"
        assert box_file.exists() == bool(s.boxes)
        if s.boxes:
            assert read_annotation(f"{box_file}#boxes_txt", (SIZE, SIZE)).boxes == s.boxes
            assert read_annotation(str(box_file), (SIZE, SIZE)).boxes == s.boxes  # auto: not mistaken for YOLO
    header = (root / "pairs.csv").read_text().splitlines()[0]
    assert header == "image,reference,label,defects,boxes,dx,dy,angle_deg,gain,offset"


@pytest.mark.parametrize("kwargs", [dict(n_layouts=0), dict(size=32), dict(max_shift=-1.0),
                                    dict(defect_kinds=("crack",)), dict(n_good=0, n_defect=0)])
def test_bad_settings(kwargs) -> None:
    with pytest.raises(ConfigError):
        generate_template_pairs(**kwargs)
