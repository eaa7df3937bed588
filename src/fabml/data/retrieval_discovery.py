"""Retrieval images: one record (path, class, object ID) per image, from class folders or a list file.

Two inputs (``RetrievalDataConfig``, duck-typed: any object with its fields works):

* **Folders** (``data.root``): ``ROOT/<class>/<ID>_<seq>.<ext>``: each subfolder is a class, the
  image files in it or in its subfolders (suffix in ``data.extensions``; e.g. magnetic tile's
  ``MT_Crack/Imgs/*.jpg`` with ``extensions=[jpg]``, which leaves out its ``.png`` masks) are the
  class's images. The object ID
  is group 1 of ``data.id_pattern`` matched against the file name (default ``^(.*)_[^_]+$``:
  everything before the last ``_``); all images of one ID form one group, which the split never
  cuts. ``data.group_by_id=false`` makes each image its own group (data without object IDs).
* **List file** (``data.list_file``): CSV lines ``path, label[, id]`` (spaces after commas are
  ignored, blank lines and ``#`` lines skipped); paths relative to ``data.root`` when set, else to
  the list file's folder. A first line whose first cell is ``path`` is a header, and then columns
  are taken by name: ``path``, ``label`` and, if present, ``id``; every other column is ignored.
  Without a header the third column, when present, is the object ID. A file whose third column is
  something else (``../shared/data/grocery/train.txt``: ``path, fine_label, coarse_label``) needs
  a header (``path,label,coarse``) or ``data.group_by_id=false``; read as IDs, its coarse labels
  would put images of several classes under one ID, which is refused (below). Without an ``id``
  column the ID comes from the file name by ``data.id_pattern``, as for folders.

Checks, each a one-line error naming the file: an empty class folder, a file name the ID pattern
does not match, a list file naming a missing image, an unreadable or corrupt image (its header is
read and checked by Pillow's ``verify``, the pixels are not decoded; with ``data.skip_bad`` such
images are skipped and listed in :attr:`DiscoveredRecords.skipped` instead), and an ID holding
images of two classes (one object has one class). ``data.class_names`` picks and orders the
classes: a name with no folder (or no label in the list file) is an error listing those found;
folders not listed are skipped. Without it the classes are every folder (label) in natural order
(``2`` before ``10``).

``data.min_image_size``: an ID group with any image whose shorter side is below it (pixels) is
excluded whole; the count is reported in ``excluded_small_groups`` and in the notes. A class left
with no image is reported in the notes and left out of ``classes``.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fabml.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
SKIP_HINT = "pass --skip-bad (data.skip_bad=true) to skip unreadable images"


@dataclass(frozen=True)
class RetrievalRecord:
    """One image: absolute ``path``, class ``label`` (folder name or list-file label) and ``group``
    (the object ID; images of one group always land in one split)."""

    path: str
    label: str
    group: str


@dataclass
class DiscoveredRecords:
    """What :func:`discover_records` found: ``records`` (sorted by class order, then path),
    ``classes`` (names, in label-index order), ``excluded_small_groups`` (ID groups dropped by
    ``min_image_size``), ``skipped`` (``"path: reason"`` of unreadable images skipped by
    ``skip_bad``) and ``notes`` (one line per thing the user should know)."""

    records: list[RetrievalRecord]
    classes: list[str]
    excluded_small_groups: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the digit runs of ``name`` by value: ``c2`` < ``c10``, ``9`` < ``10``."""
    return [int(tok) if i % 2 else tok.lower() for i, tok in enumerate(re.split(r"(\d+)", name))]


def _extensions(cfg: Any) -> set[str]:
    exts = {str(e).lower().lstrip(".") for e in (getattr(cfg, "extensions", None) or DEFAULT_EXTENSIONS)}
    exts.discard("")
    if not exts:
        raise ConfigError("setting 'data.extensions' is empty; list image suffixes such as png, jpg")
    return exts


def _id_regex(cfg: Any) -> re.Pattern[str] | None:
    if not getattr(cfg, "group_by_id", True):
        return None
    pattern = getattr(cfg, "id_pattern", r"^(.*)_[^_]+$")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"setting 'data.id_pattern' = {pattern!r} is not a regular expression ({err})") from None
    if regex.groups < 1:
        raise ConfigError(f"setting 'data.id_pattern' = {pattern!r} needs a capture group: group 1 is the object ID")
    return regex


def _id_from_name(regex: re.Pattern[str], path: Path) -> str:
    match = regex.search(path.name)
    if match is None or not match.group(1):
        raise DataError(
            f"file name {path} does not match data.id_pattern {regex.pattern!r} (group 1 = the object ID); "
            "rename it, fix the pattern, or set data.group_by_id=false to make each image its own group"
        )
    return match.group(1)


def image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` in pixels from the image header; Pillow's ``verify`` checks the file's
    structure (PNG chunk checksums, truncation) without decoding the pixels. Raises OSError-like
    exceptions (or ``SyntaxError`` / ``ValueError`` from Pillow) for unreadable files."""
    with Image.open(path) as img:
        size = img.size
        img.verify()
    return int(size[0]), int(size[1])


def _choose_classes(found: list[str], wanted: list[str], where: str, what: str) -> list[str]:
    """``wanted`` (checked against ``found``) when given, else ``found`` in natural order."""
    if not wanted:
        return sorted(found, key=natural_key)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ConfigError(
            f"data.class_names: {', '.join(repr(m) for m in missing)} has no {what} in {where}; "
            f"{what}s found: {', '.join(sorted(found, key=natural_key))}"
        )
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"data.class_names lists a class twice: {wanted}")
    return list(wanted)


def _images_under(folder: Path, exts: set[str]) -> list[Path]:
    """Image files in ``folder`` and its subfolders (hidden files and folders skipped)."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / f for f in files if not f.startswith(".") and Path(f).suffix.lower().lstrip(".") in exts]
    return found


def _folder_entries(cfg: Any, exts: set[str]) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(path, label, id or None) per image of ``ROOT/<class>/``, and the chosen classes."""
    root = Path(os.path.abspath(Path(cfg.root).expanduser()))
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (setting data.root)")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DataError(f"data folder {root} has no class subfolders; lay images out as ROOT/<class>/<ID>_<seq>.jpg")
    classes = _choose_classes(folders, list(getattr(cfg, "class_names", None) or []), str(root), "folder")
    entries: list[tuple[str, str, str | None]] = []
    for name in classes:
        folder = root / name
        images = sorted(_images_under(folder, exts))
        if not images:
            raise DataError(
                f"class folder {folder} has no images with suffix {', '.join(sorted(exts))}; "
                "add images, remove the folder, or leave it out of data.class_names"
            )
        entries += [(str(path), name, None) for path in images]
    return entries, classes


def _list_entries(cfg: Any) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(path, label, id or None) per line of the list file, and the chosen classes."""
    list_path = Path(os.path.abspath(Path(cfg.list_file).expanduser()))
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist (setting data.list_file)")
    base = Path(os.path.abspath(Path(cfg.root).expanduser())) if getattr(cfg, "root", "") else list_path.parent
    with open(list_path, newline="", encoding="utf-8") as handle:
        rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(handle, skipinitialspace=True), 1)
                if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")]
    if not rows:
        raise DataError(f"list file {list_path} has no lines; write one 'path, label[, id]' line per image")
    columns = {"path": 0, "label": 1, "id": 2}
    if rows[0][1][0].lower() == "path":
        header = [c.lower() for c in rows[0][1]]
        if "label" not in header:
            raise DataError(f"list file {list_path}: the header {rows[0][1]} has no 'label' column")
        columns = {k: header.index(k) for k in ("path", "label", "id") if k in header}
        rows = rows[1:]
    entries: list[tuple[str, str, str | None]] = []
    for number, cells in rows:
        if len(cells) <= max(columns["path"], columns["label"]) or not cells[columns["path"]]:
            raise DataError(f"list file {list_path} line {number}: expected 'path, label[, id]', got {cells}")
        path = Path(cells[columns["path"]]).expanduser()
        path = Path(os.path.abspath(path if path.is_absolute() else base / path))
        if not path.is_file():
            raise DataError(f"list file {list_path} line {number}: image {path} does not exist")
        ident = cells[columns["id"]] if "id" in columns and len(cells) > columns["id"] else None
        entries.append((str(path), cells[columns["label"]], ident or None))
    found = sorted({label for _, label, _ in entries}, key=natural_key)
    classes = _choose_classes(found, list(getattr(cfg, "class_names", None) or []), str(list_path), "label")
    keep = set(classes)
    return [e for e in entries if e[1] in keep], classes


def discover_records(cfg: Any) -> DiscoveredRecords:
    """All usable images of ``cfg`` (a ``RetrievalDataConfig``) as records; see the module doc."""
    if getattr(cfg, "list_file", ""):
        entries, classes = _list_entries(cfg)
    elif getattr(cfg, "root", ""):
        entries, classes = _folder_entries(cfg, _extensions(cfg))
    else:
        raise ConfigError("set data.root (a folder of class folders) or data.list_file (path, label[, id] lines)")
    regex = _id_regex(cfg)
    skip_bad = bool(getattr(cfg, "skip_bad", False))
    min_size = int(getattr(cfg, "min_image_size", 0) or 0)
    records: list[RetrievalRecord] = []
    sizes: dict[str, tuple[int, int]] = {}
    skipped: list[str] = []
    for path, label, ident in entries:
        try:
            sizes[path] = image_size(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if not skip_bad:
                raise DataError(f"cannot read image {path} ({reason}); fix or remove it, or {SKIP_HINT}") from None
            skipped.append(f"{path}: {reason}")
            continue
        if regex is None:
            group = path
        else:
            group = ident if ident is not None else _id_from_name(regex, Path(path))
        records.append(RetrievalRecord(path, label, group))
    label_of: dict[str, str] = {}
    for r in records:
        if label_of.setdefault(r.group, r.label) != r.label:
            raise DataError(
                f"ID '{r.group}' has images of classes '{label_of[r.group]}' and '{r.label}' (e.g. {r.path}): one "
                "object has one class; fix the IDs, give a list file a header without an 'id' column, or set "
                "data.group_by_id=false"
            )
    notes: list[str] = []
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image(s) (data.skip_bad): " + "; ".join(skipped))
    small = {r.group for r in records if min(sizes[r.path]) < min_size}
    if small:
        example = next(r for r in records if r.group in small and min(sizes[r.path]) < min_size)
        dropped = sum(r.group in small for r in records)
        w, h = sizes[example.path]
        notes.append(
            f"excluded {len(small)} ID group(s) ({dropped} images) with an image smaller than data.min_image_size="
            f"{min_size} px on its shorter side (e.g. {example.path}: {w}x{h})"
        )
        records = [r for r in records if r.group not in small]
    present = {r.label for r in records}
    empty = [c for c in classes if c not in present]
    if empty:
        notes.append(f"class(es) {', '.join(empty)} have no usable image left and are left out")
        classes = [c for c in classes if c in present]
    if not records:
        raise DataError("no usable image is left (see the notes: unreadable or too small images); nothing to split")
    order = {c: i for i, c in enumerate(classes)}
    records.sort(key=lambda r: (order[r.label], r.path))
    return DiscoveredRecords(records, classes, len(small), skipped, notes)
