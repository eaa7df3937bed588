"""Anomaly image folders: the data settings, one record per image, and discovery of both layouts.

Two layouts are read (``AnomalyDataConfig.layout``):

* ``per_type`` — each subfolder of ``root`` is one type (``MT_Free/``, ``MT_Blowhole/``, ...);
  its images lie directly in it or in an ``Imgs/`` (or ``images/``) subfolder. One type is the
  normal one (``normal_type``). The type name is the folder name minus the prefix common to all
  type folders, cut at its last ``_``/``-``/space (``MT_Blowhole`` -> ``Blowhole``).
* ``folders`` — ``normal_dir`` (searched recursively), optional ``abnormal_dir`` (images directly
  in it take its folder name as type; each subfolder is a type) and optional ``mask_dir``.

Masks are matched by file stem: a ``.png`` beside a same-stem image of another format (the
magnetic-tile convention), ``<stem>_mask.*`` beside the image, ``<type>/masks/``,
``<root>/<type>_mask/`` (per_type) or ``mask_dir`` (``mask_dir/<type>/<stem>`` first, then
``mask_dir/<stem>``; ``_mask`` suffix allowed). A mask that matches no image is an error.
Masks of normal images are ignored (their mask is all zeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fabml.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
NORMAL_NAMES = ("good", "free", "normal", "ok")
LAYOUTS = ("auto", "folders", "per_type")
_IMAGE_SUBDIRS = ("imgs", "images")
MASK_FOLDER_NAMES = ("masks", "mask", "ground_truth", "gt")
_MASK_SUBDIRS = MASK_FOLDER_NAMES


@dataclass
class AnomalyDataConfig:
    """Where the images are and how they become tensors.

    root: dataset folder; ``normal_dir`` / ``abnormal_dir`` / ``mask_dir`` are relative to it
    (or absolute). ``layout``: auto | folders | per_type (auto = per_type when ``root`` has
    subfolders and ``normal_dir`` is empty). ``normal_type``: the per_type folder holding normal
    images; ``auto`` recognises good/free/normal/ok. ``image_size``: (H, W) in pixels.
    ``channels``: 0 = auto (1 if every sampled image is grayscale, else 3), or 1 / 3 to force.
    ``train_fraction``: share of the normal images used for fitting + validation; the other
    normals and all abnormal images form the test set. ``val_fraction``: share of the fitting
    normals held out for validation (threshold calibration). ``split_seed``: seed of the
    permutation of normal images. ``group_pattern``: regular expression searched in each file
    name whose first capture group (or whole match) names the image's group (e.g. the photo a
    tile was cut from): all images of a group land in one split; ``""`` (default) makes each image
    its own group (magnetic-tile file names carry no photo or tile identity). ``group_file``: a CSV
    list file with columns ``path`` and ``group`` instead (paths as written or as tails such as
    ``MT_Free/Imgs/x.jpg``). ``extensions``: image file suffixes, case-insensitive.
    """

    root: str = ""
    layout: str = "auto"
    normal_dir: str = ""
    abnormal_dir: str = ""
    mask_dir: str = ""
    normal_type: str = "auto"
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    channels: int = 0
    train_fraction: float = 0.7
    val_fraction: float = 0.1
    split_seed: int = 0
    group_pattern: str = ""
    group_file: str = ""
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))


@dataclass
class ImageRecord:
    """One image: absolute ``path``, ``label`` (0 normal, 1 anomalous), ``defect_type`` (type
    folder name), ``mask_path`` (absolute, or None when the image has no pixel mask)."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None


def _extensions(cfg: AnomalyDataConfig) -> set[str]:
    exts = {e.lower().lstrip(".") for e in cfg.extensions if e.strip(". ")}
    if not exts:
        raise ConfigError("setting 'extensions' is empty; list image suffixes such as png, jpg")
    return exts


def _resolve(root: str, path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and root:
        p = Path(root).expanduser() / p
    return Path(os.path.abspath(p))


def _is_mask_stem(stem: str) -> bool:
    return stem.lower().endswith("_mask")


def _scan_folder(folder: Path, exts: set[str]) -> tuple[list[Path], dict[str, Path]]:
    """Images directly in ``folder`` and the masks beside them, keyed by their image's stem.

    A ``<stem>_mask.*`` file is a mask; a ``.png`` whose stem also has a file of another image
    format is that image's mask (magnetic tile: ``x.jpg`` + ``x.png``).
    """
    by_stem: dict[str, list[Path]] = {}
    with os.scandir(folder) as entries:  # scandir: no stat call per file
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    for name in names:
        p = folder / name
        if p.suffix.lower().lstrip(".") in exts:
            by_stem.setdefault(p.stem, []).append(p)
    images: list[Path] = []
    masks: dict[str, Path] = {}
    for stem, files in by_stem.items():
        if _is_mask_stem(stem):
            masks[stem[:-5]] = files[0]
            continue
        others = [f for f in files if f.suffix.lower() != ".png"]
        if others and len(others) < len(files):
            masks[stem] = next(f for f in files if f.suffix.lower() == ".png")
            images.extend(others)
        else:
            images.extend(files)
    return images, masks


def _index_masks(folder: Path, exts: set[str], recursive: bool) -> dict[tuple[str, str], list[Path]]:
    """Mask files under ``folder`` keyed by (parent folder relative to ``folder``, image stem)."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[tuple[str, str], list[Path]] = {}
    for p in sorted(paths):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in exts:
            stem = p.stem[:-5] if _is_mask_stem(p.stem) else p.stem
            index.setdefault((p.parent.relative_to(folder).as_posix(), stem), []).append(p)
    return index


def _take_mask(index: dict[tuple[str, str], list[Path]], key: tuple[str, str], image: Path) -> Path | None:
    found = index.get(key)
    if not found:
        return None
    if len(found) > 1:
        raise DataError(f"image {image} has several masks: {', '.join(str(p) for p in found)}; keep one")
    return found[0]


def _check_orphans(index: dict[tuple[str, str], list[Path]], claimed: set[Path], setting: str) -> None:
    for paths in index.values():
        for p in paths:
            if p not in claimed:
                raise DataError(f"mask {p} matches no image (by file stem); remove it or fix its name ({setting})")


def _strip_common_prefix(names: Sequence[str]) -> list[str]:
    """Drop the prefix shared by all names, cut back to its last '_', '-' or space."""
    prefix = os.path.commonprefix(list(names))
    cut = max(prefix.rfind(c) for c in "_- ") + 1
    if cut <= 0 or any(len(n) <= cut for n in names):
        return list(names)
    return [n[cut:] for n in names]


def _pick_normal(folders: list[str], names: list[str], normal_type: str) -> int:
    listed = ", ".join(folders)
    if normal_type.lower() == "auto":
        hits = [i for i, (f, n) in enumerate(zip(folders, names)) if {f.lower(), n.lower()} & set(NORMAL_NAMES)]
        if len(hits) != 1:
            why = "none is" if not hits else "several are"
            raise ConfigError(
                f"normal_type=auto: {why} named {'/'.join(NORMAL_NAMES)} among type folders [{listed}]; "
                "set normal_type to the folder of normal images"
            )
        return hits[0]
    want = normal_type.lower()
    hits = [i for i, (f, n) in enumerate(zip(folders, names)) if want in (f.lower(), n.lower())]
    if not hits:
        raise ConfigError(f"normal_type='{normal_type}' is not a type folder; choose one of [{listed}]")
    return hits[0]


def _discover_per_type(cfg: AnomalyDataConfig, root: Path, exts: set[str]) -> list[ImageRecord]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    mask_dirs = {d.name[:-5]: d for d in subdirs if _is_mask_stem(d.name)}
    scanned: list[tuple[Path, list[Path], dict[str, Path]]] = []
    for d in subdirs:
        if _is_mask_stem(d.name):
            continue
        images: list[Path] = []
        siblings: dict[str, Path] = {}
        for folder in [d] + [c for c in sorted(d.iterdir()) if c.is_dir() and c.name.lower() in _IMAGE_SUBDIRS]:
            found, masks = _scan_folder(folder, exts)
            images += found
            siblings.update(masks)
        if images:
            scanned.append((d, images, siblings))
    if not scanned:
        raise DataError(f"no images found in the type subfolders of {root} (setting root); extensions: {sorted(exts)}")
    folders = [d.name for d, _, _ in scanned]
    names = _strip_common_prefix(folders)
    normal = _pick_normal(folders, names, cfg.normal_type)
    records: list[ImageRecord] = []
    for i, ((d, images, siblings), name) in enumerate(zip(scanned, names)):
        mask_subdirs = [c for c in sorted(d.iterdir()) if c.is_dir() and c.name.lower() in _MASK_SUBDIRS]
        indexes = [_index_masks(c, exts, False) for c in mask_subdirs]
        if d.name in mask_dirs:
            indexes.append(_index_masks(mask_dirs[d.name], exts, False))
        claimed: set[Path] = set()
        for img in images:
            mask = siblings.get(img.stem)
            for index in indexes:
                found = _take_mask(index, (".", img.stem), img)
                if found is not None:
                    claimed.add(found)
                    mask = mask or found
            label = 0 if i == normal else 1
            mask_path = str(mask) if (mask is not None and label == 1) else None
            records.append(ImageRecord(os.path.abspath(img), label, name, mask_path))
        for index in indexes:
            _check_orphans(index, claimed, f"type folder {d}")
        stems = {p.stem for p in images}
        stray = [m for stem, m in siblings.items() if stem not in stems]
        if stray:
            raise DataError(f"mask {stray[0]} matches no image (by file stem); remove it or fix its name")
    if not any(r.label == 0 for r in records):
        raise DataError(f"normal type folder {scanned[normal][0]} has no images (setting normal_type)")
    return records


def _folder_images(folder: Path, exts: set[str], skip: Sequence[Path | None]) -> list[tuple[Path, Path | None]]:
    """(image, sibling mask) for every image under ``folder`` (recursive), skipping the ``skip`` folders."""
    out: list[tuple[Path, Path | None]] = []
    for d in [folder] + sorted(p for p in folder.rglob("*") if p.is_dir()):
        if any(s is not None and (d == s or s in d.parents) for s in skip):
            continue
        images, masks = _scan_folder(d, exts)
        out += [(img, masks.get(img.stem)) for img in images]
    return out


def _discover_folders(cfg: AnomalyDataConfig, exts: set[str]) -> list[ImageRecord]:
    if not cfg.normal_dir:
        raise ConfigError("layout=folders needs setting 'normal_dir' (the folder of normal images)")
    normal_dir = _resolve(cfg.root, cfg.normal_dir)
    mask_dir = _resolve(cfg.root, cfg.mask_dir) if cfg.mask_dir else None
    abnormal_dir = _resolve(cfg.root, cfg.abnormal_dir) if cfg.abnormal_dir else None
    if not normal_dir.is_dir():
        raise DataError(f"normal image folder {normal_dir} does not exist (setting normal_dir)")
    if abnormal_dir is not None and abnormal_dir == normal_dir:
        raise ConfigError(f"settings normal_dir and abnormal_dir name the same folder {normal_dir}")
    for setting, d in (("abnormal_dir", abnormal_dir), ("mask_dir", mask_dir)):
        if d is not None and not d.is_dir():
            raise DataError(f"folder {d} does not exist (setting {setting})")
    normals = _folder_images(normal_dir, exts, (mask_dir, abnormal_dir))
    if not normals:
        raise DataError(
            f"normal image folder {normal_dir} has no images with suffix {sorted(exts)} (setting normal_dir)"
        )
    index = _index_masks(mask_dir, exts, True) if mask_dir is not None else {}
    claimed: set[Path] = set()
    flat_users: dict[Path, str] = {}
    records = [ImageRecord(os.path.abspath(p), 0, normal_dir.name, None) for p, _ in normals]
    for img, _ in normals:  # masks named after normal images are accepted and ignored
        for key in ((img.parent.relative_to(normal_dir).as_posix(), img.stem), (".", img.stem)):
            claimed.update(index.get(key, []))
    if abnormal_dir is not None:
        for img, sibling in _folder_images(abnormal_dir, exts, (mask_dir, normal_dir)):
            rel = img.parent.relative_to(abnormal_dir)
            dtype = rel.parts[0] if rel.parts else abnormal_dir.name
            mask = _take_mask(index, (rel.as_posix(), img.stem), img)
            if mask is None and rel.parts:
                mask = _take_mask(index, (".", img.stem), img)
                if mask is not None and flat_users.setdefault(mask, dtype) != dtype:
                    raise DataError(
                        f"mask {mask} matches images of types {flat_users[mask]} and {dtype}; "
                        "put masks in <mask_dir>/<type>/ (setting mask_dir)"
                    )
            if mask is not None:
                claimed.add(mask)
            mask = sibling or mask
            records.append(ImageRecord(os.path.abspath(img), 1, dtype, str(mask) if mask else None))
    _check_orphans(index, claimed, "setting mask_dir")
    return records


def discover_records(cfg: AnomalyDataConfig) -> list[ImageRecord]:
    """All images of the dataset as records sorted by (label, defect_type, path)."""
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"layout='{cfg.layout}' is unknown; choose one of: {', '.join(LAYOUTS)}")
    exts = _extensions(cfg)
    layout = cfg.layout
    root = _resolve("", cfg.root) if cfg.root else None
    if layout == "auto":
        if cfg.normal_dir:
            layout = "folders"
        elif root is not None and root.is_dir() and any(d.is_dir() for d in root.iterdir()):
            layout = "per_type"
        elif root is not None and not root.is_dir():
            raise DataError(f"data folder {root} does not exist (setting root)")
        else:
            raise ConfigError(
                "cannot tell the data layout: set root to a folder with one subfolder per type, "
                "or set normal_dir (and abnormal_dir, mask_dir)"
            )
    if layout == "folders":
        records = _discover_folders(cfg, exts)
    else:
        if root is None or not root.is_dir():
            raise DataError(f"data folder {root or '<empty>'} does not exist (setting root)")
        records = _discover_per_type(cfg, root, exts)
    return sorted(records, key=lambda r: (r.label, r.defect_type, r.path))
