"""Which reference (golden template) each test image is compared with, three ways.

==============  =================================================================================
pairs CSV       :func:`pairs_from_csv`: a CSV with header columns ``image`` and ``reference``
                (case and surrounding spaces ignored; other columns are kept out of the way; an
                optional ``label`` column of 0/1, an optional ``mask`` (or ``boxes``) column naming
                a mask or annotation file and an optional ``defect_type`` (or ``defects``) column
                are read). Relative paths are taken from the CSV's
                folder (or ``root``). Every row needs both cells; an image listed twice is an error.
name pattern    :func:`pairs_from_pattern`: the regular expression must match the test image's
                *stem* (file name without its suffix) as a whole (``re.fullmatch``); its group
                named ``ref`` if it has one, else its group 1, is the reference's stem; the
                reference is the one image file in ``reference_dir`` with that stem and an image
                suffix (``.png .jpg .jpeg .bmp .tif .tiff``, any case). Example: pattern
                ``(.+)_\\d+`` pairs ``test/layout_000_03.png`` with ``golden/layout_000.png``.
one golden      :func:`pairs_single_reference`: every test image with the same reference file (the
                reference itself is left out of the test images if it is among them).
==============  =================================================================================

Test images are given as a folder (its image files, sorted by name, not recursive) or a list of
paths. Every missing file, unmatched name or malformed CSV is a one-line :class:`DataError`
that names the file and says what to do; a pattern that does not compile or has no group is a
:class:`ConfigError`. Returned paths are absolute.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fabml.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ReferencePair:
    """A test ``image`` and its ``reference`` (absolute paths); ``label`` 0 (good) / 1 (defective),
    ``mask`` (absolute path of a mask or annotation file) and ``defect_type`` when the pairs CSV gives
    them, else None."""

    image: str
    reference: str
    label: int | None = None
    mask: str | None = None
    defect_type: str | None = None


def _column(header: list[str], *names: str) -> int | None:
    """Index of the first of ``names`` in ``header``, or None."""
    return next((header.index(n) for n in names if n in header), None)


def list_images(folder: str | Path) -> list[str]:
    """Absolute paths of the image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"test image folder {folder} does not exist; give a folder of images or a list of files")
    files = sorted(str(p.resolve()) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"test image folder {folder} holds no images ({' '.join(IMAGE_SUFFIXES)})")
    return files


def _images(images: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(images, (str, Path)):
        return list_images(images)
    paths = [str(Path(p).resolve()) for p in images]
    if not paths:
        raise DataError("no test images given; pass a folder of images or a non-empty list of files")
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"test image {p} does not exist; fix the path or leave it out")
    return paths


def pairs_from_csv(csv_path: str | Path, root: str | Path | None = None) -> list[ReferencePair]:
    """The pairs listed in ``csv_path`` (see the module docstring), in file order."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"pairs file {csv_path} does not exist; write a CSV with columns image,reference")
    base = Path(root) if root is not None else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read pairs file {csv_path}: {exc}") from None
    if not rows:
        raise DataError(f"pairs file {csv_path} is empty; write a header line image,reference and one row per test image")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("image", "reference") if c not in header]
    if missing:
        raise DataError(f"pairs file {csv_path} has no column {' or '.join(missing)} (header: {','.join(rows[0])}); "
                        "its first line must name the columns image,reference")
    ci, cr = header.index("image"), header.index("reference")
    cl = _column(header, "label")
    cm = _column(header, "mask", "boxes", "annotation")
    ct = _column(header, "defect_type", "defects")
    pairs: list[ReferencePair] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = row + [""] * (len(header) - len(row))
        image, ref = cells[ci].strip(), cells[cr].strip()
        if not image:
            raise DataError(f"pairs file {csv_path}, line {n}: the image cell is empty; fill it or remove the line")
        if not ref:
            raise DataError(f"pairs file {csv_path}, line {n}: test image {image} has no reference; "
                            "fill the reference cell with its golden image")
        img_path, ref_path = str((base / image).resolve()), str((base / ref).resolve())
        if not os.path.isfile(img_path):
            raise DataError(f"pairs file {csv_path}, line {n}: test image {img_path} does not exist; fix the "
                            "path or remove the line")
        if not os.path.isfile(ref_path):
            raise DataError(f"pairs file {csv_path}, line {n}: reference {ref_path} does not exist (test image "
                            f"{image}); fix the path or add the golden image")
        if img_path in seen:
            raise DataError(f"pairs file {csv_path}, line {n}: test image {image} is listed again (first on line "
                            f"{seen[img_path]}); give each test image one reference")
        seen[img_path] = n
        label = None
        if cl is not None and cells[cl].strip():
            if cells[cl].strip() not in ("0", "1"):
                raise DataError(f"pairs file {csv_path}, line {n}: label {cells[cl].strip()!r} is not 0 (good) or "
                                "1 (defective)")
            label = int(cells[cl].strip())
        mask = None
        if cm is not None and cells[cm].strip():
            mask = str((base / cells[cm].strip()).resolve())
            if not os.path.isfile(mask):
                raise DataError(f"pairs file {csv_path}, line {n}: mask {mask} does not exist (test image {image}); "
                                "fix the path or empty the cell")
        defect_type = cells[ct].strip() if ct is not None and cells[ct].strip() else None
        pairs.append(ReferencePair(img_path, ref_path, label, mask, defect_type))
    if not pairs:
        raise DataError(f"pairs file {csv_path} lists no test images; add one row image,reference per test image")
    return pairs


def _group(rx: re.Pattern[str], pattern: str) -> int | str:
    if "ref" in rx.groupindex:
        return "ref"
    if rx.groups < 1:
        raise ConfigError(f"reference pattern {pattern!r} has no group; put the part of the test name that is the "
                          r"reference's stem in parentheses, e.g. (.+)_\d+")
    return 1


def pairs_from_pattern(images: str | Path | Sequence[str | Path], pattern: str,
                       reference_dir: str | Path) -> list[ReferencePair]:
    """Each test image paired with ``reference_dir/<group>.<image suffix>`` (module docstring)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"reference pattern {pattern!r} is not a regular expression: {exc}") from None
    group = _group(rx, pattern)
    ref_dir = Path(reference_dir)
    if not ref_dir.is_dir():
        raise DataError(f"reference folder {ref_dir} does not exist; give the folder of golden images")
    by_stem: dict[str, list[str]] = {}
    for p in sorted(ref_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(p.stem, []).append(str(p.resolve()))
    pairs = []
    for img in _images(images):
        stem = Path(img).stem
        m = rx.fullmatch(stem)
        if m is None:
            raise DataError(f"test image {img}: its name {stem!r} does not match the reference pattern {pattern!r}; "
                            "rename it, change the pattern or pair images with a pairs CSV")
        ref_stem = m.group(group)
        if not ref_stem:
            raise DataError(f"test image {img}: the pattern {pattern!r} gives an empty reference name")
        found = by_stem.get(ref_stem, [])
        if not found:
            raise DataError(f"test image {img} has no reference: {ref_dir}/{ref_stem}.* does not exist; add the golden "
                            "image or fix the pattern")
        if len(found) > 1:
            raise DataError(f"test image {img}: several references named {ref_stem} in {ref_dir} "
                            f"({', '.join(Path(f).name for f in found)}); keep one")
        if os.path.samefile(found[0], img):
            raise DataError(f"test image {img} would be its own reference under pattern {pattern!r}; keep golden "
                            "images out of the test images")
        pairs.append(ReferencePair(img, found[0]))
    return pairs


def pairs_single_reference(images: str | Path | Sequence[str | Path], reference: str | Path) -> list[ReferencePair]:
    """Every test image paired with the one ``reference`` image (which is not paired with itself)."""
    ref = Path(reference)
    if not ref.is_file():
        raise DataError(f"reference image {ref} does not exist; give the path of the golden image")
    ref_path = str(ref.resolve())
    pairs = [ReferencePair(img, ref_path) for img in _images(images) if not os.path.samefile(img, ref_path)]
    if not pairs:
        raise DataError(f"no test images besides the reference {ref_path}; add test images")
    return pairs


def read_pairs(images: str | Path | Sequence[str | Path] | None = None, *, pairs_csv: str | Path | None = None,
               pattern: str | None = None, reference_dir: str | Path | None = None,
               reference: str | Path | None = None) -> list[ReferencePair]:
    """The pairs by exactly one of the three ways: ``pairs_csv``; ``pattern`` + ``reference_dir``
    (+ ``images``); ``reference`` (+ ``images``)."""
    modes = [m for m, on in (("pairs_csv", pairs_csv is not None), ("pattern", pattern is not None),
                             ("reference", reference is not None)) if on]
    if len(modes) != 1:
        raise ConfigError("pair test images with their reference in exactly one way: a pairs CSV, a name pattern "
                          f"with a reference folder, or one reference image (given: {', '.join(modes) or 'none'})")
    if pairs_csv is not None:
        return pairs_from_csv(pairs_csv)
    if images is None:
        raise ConfigError(f"pairing by {modes[0]} needs the test images (a folder or a list of files)")
    if pattern is not None:
        if reference_dir is None:
            raise ConfigError("a reference pattern needs the reference folder (reference_dir) that holds the golden images")
        return pairs_from_pattern(images, pattern, reference_dir)
    assert reference is not None
    return pairs_single_reference(images, reference)
