"""Pairing test images with their reference: pairs CSV, name pattern, one golden image, and each error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabml.data.reference_pairs import (
    pairs_from_csv,
    pairs_from_pattern,
    pairs_single_reference,
    read_pairs,
)
from fabml.errors import ConfigError, DataError


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        _png(tmp_path / "golden" / f"{name}.png")
    for name in ("a_0", "a_1", "b_0"):
        _png(tmp_path / "test" / f"{name}.png")
    return tmp_path


def _names(pairs):
    return [(Path(p.image).name, Path(p.reference).name, p.label) for p in pairs]


def test_csv_pairs_relative_to_csv_with_labels(tree: Path) -> None:
    (tree / "pairs.csv").write_text(" Image , REFERENCE ,label,extra\n"
                                    "test/a_0.png,golden/a.png,0,x\n\ntest/b_0.png,golden/b.png,1,y\n")
    pairs = pairs_from_csv(tree / "pairs.csv")
    assert _names(pairs) == [("a_0.png", "a.png", 0), ("b_0.png", "b.png", 1)]
    assert all(Path(p.image).is_absolute() and Path(p.reference).is_file() for p in pairs)
    assert _names(read_pairs(pairs_csv=tree / "pairs.csv")) == _names(pairs)


@pytest.mark.parametrize("text, message", [
    ("image,golden\ntest/a_0.png,golden/a.png\n", "no column reference"),
    ("image,reference\ntest/a_0.png,\n", "has no reference"),
    ("image,reference\ntest/a_0.png,golden/zz.png\n", "zz.png does not exist"),
    ("image,reference\ntest/nope.png,golden/a.png\n", "nope.png does not exist"),
    ("image,reference\ntest/a_0.png,golden/a.png\ntest/a_0.png,golden/b.png\n", "listed again"),
    ("image,reference,label\ntest/a_0.png,golden/a.png,2\n", r"label .2. is not 0 \(good\) or 1"),
    ("image,reference\n", "lists no test images"),
    ("", "is empty"),
])
def test_csv_errors(tree: Path, text: str, message: str) -> None:
    (tree / "pairs.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        pairs_from_csv(tree / "pairs.csv")


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        pairs_from_csv(tmp_path / "none.csv")


def test_pattern_pairs_by_group_one_and_named_group(tree: Path) -> None:
    pairs = pairs_from_pattern(tree / "test", r"(.+)_\d+", tree / "golden")
    assert _names(pairs) == [("a_0.png", "a.png", None), ("a_1.png", "a.png", None), ("b_0.png", "b.png", None)]
    named = pairs_from_pattern([tree / "test" / "b_0.png"], r"(?P<ref>[a-z])_(\d)", tree / "golden")
    assert _names(named) == [("b_0.png", "b.png", None)]
    via = read_pairs(tree / "test", pattern=r"(.+)_\d+", reference_dir=tree / "golden")
    assert _names(via) == _names(pairs)


def test_pattern_errors(tree: Path) -> None:
    with pytest.raises(DataError, match="does not match the reference pattern"):
        pairs_from_pattern(tree / "test", r"(.+)-\d+", tree / "golden")
    _png(tree / "test" / "c_0.png")
    with pytest.raises(DataError, match="c_0.png has no reference"):
        pairs_from_pattern(tree / "test", r"(.+)_\d+", tree / "golden")
    _png(tree / "golden" / "c.png")
    _png(tree / "golden" / "c.bmp")
    with pytest.raises(DataError, match="several references named c"):
        pairs_from_pattern(tree / "test", r"(.+)_\d+", tree / "golden")
    with pytest.raises(ConfigError, match="has no group"):
        pairs_from_pattern(tree / "test", r".+_\d+", tree / "golden")
    with pytest.raises(ConfigError, match="not a regular expression"):
        pairs_from_pattern(tree / "test", r"(.+", tree / "golden")
    with pytest.raises(DataError, match="reference folder"):
        pairs_from_pattern(tree / "test", r"(.+)_\d+", tree / "missing")
    with pytest.raises(DataError, match="own reference"):
        pairs_from_pattern([tree / "golden" / "a.png"], r"(.+)", tree / "golden")


def test_single_reference_skips_itself(tree: Path) -> None:
    _png(tree / "test" / "golden.png")
    pairs = pairs_single_reference(tree / "test", tree / "test" / "golden.png")
    assert [n for n, _, _ in _names(pairs)] == ["a_0.png", "a_1.png", "b_0.png"]
    assert {r for _, r, _ in _names(pairs)} == {"golden.png"}
    with pytest.raises(DataError, match="reference image .* does not exist"):
        pairs_single_reference(tree / "test", tree / "nope.png")
    with pytest.raises(DataError, match="no test images besides"):
        pairs_single_reference([tree / "test" / "golden.png"], tree / "test" / "golden.png")


def test_images_and_mode_errors(tree: Path) -> None:
    with pytest.raises(DataError, match="test image .*missing.png does not exist"):
        pairs_single_reference([tree / "test" / "missing.png"], tree / "golden" / "a.png")
    (tree / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        pairs_single_reference(tree / "empty", tree / "golden" / "a.png")
    with pytest.raises(DataError, match="does not exist"):
        pairs_single_reference(tree / "nowhere", tree / "golden" / "a.png")
    with pytest.raises(ConfigError, match="exactly one way"):
        read_pairs(tree / "test", pattern=r"(.+)_\d+", reference=tree / "golden" / "a.png")
    with pytest.raises(ConfigError, match="exactly one way"):
        read_pairs(tree / "test")
    with pytest.raises(ConfigError, match="reference folder"):
        read_pairs(tree / "test", pattern=r"(.+)_\d+")
    with pytest.raises(ConfigError, match="needs the test images"):
        read_pairs(reference=tree / "golden" / "a.png")
