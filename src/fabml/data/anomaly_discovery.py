"""Anomaly image folders: the data settings, one record per image, and discovery of both layouts.

Two layouts are read (``AnomalyDataConfig.layout``):

* ``per_type`` — each subfolder of ``root`` is one type (``MT_Free/``, ``MT_Blowhole/``, ...);
  its images lie directly in it or in an ``Imgs/`` (or ``images/``) subfolder. One type is the
  normal one (``normal_type``). The type name is the folder name minus the prefix common to all
  type folders, cut at its last ``_``/``-``/space (``MT_Blowhole`` -> ``Blowhole``).
* ``folders`` — ``normal_dir`` (searched recursively), optional ``abnormal_dir`` (images directly
  in it take its folder name as type; each subfolder is a type) and optional ``mask_dir``.

Masks and annotation files (``data.annotations``; :mod:`fabml.data.annotations`: PNG masks,
Pascal VOC ``.xml``, YOLO or box ``.txt``, MATLAB ``.mat``, one COCO ``.json``) are matched by
file stem: a ``.png`` beside a same-stem image of another format (the magnetic-tile
convention), ``<stem>_mask.*`` or ``<stem>.xml/.txt/.mat`` beside the image, ``<type>/masks/``,
``<root>/<type>_mask/`` or a mask folder beside the type folders (per_type:
``<root>/masks/<type>/<stem>`` or ``<root>/masks/<stem>``), ``mask_dir`` (``mask_dir/<type>/<stem>``
first, then ``mask_dir/<stem>``; ``_mask`` suffix allowed) and ``annotation_path`` (a folder
searched like ``mask_dir``, or a COCO file). A mask that matches no image is an error, and so
is an image with two masks. Masks of normal images are ignored (their mask is all zeros).

In the per_type layout a folder beside the type folders that is named like masks
(:data:`MASK_FOLDER_NAMES`, any case) or holds only binary 0/255 images (while the type folders
do not) is never a defect type: its files are masks, or an error says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fabml.data.annotations import ANNOTATION_FORMATS, ANNOTATION_SUFFIXES, CLASS_NAME_FILES, make_spec
from fabml.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
NORMAL_NAMES = ("good", "free", "normal", "ok")
LAYOUTS = ("auto", "folders", "per_type")
_IMAGE_SUBDIRS = ("imgs", "images")
MASK_FOLDER_NAMES = ("masks", "mask", "ground_truth", "groundtruth", "ground-truth", "gt", "labels", "annotations")
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
    ``annotations``: which mask/annotation files count — auto (all, told apart by suffix and
    content) | masks (images) | voc (.xml) | coco (the ``annotation_path`` .json) | yolo (.txt,
    normalised ``class cx cy w h``) | boxes_txt (.txt, pixel ``x1 y1 x2 y2 [type]``) | mat (.mat).
    ``annotation_path``: a COCO .json file, or a folder of per-image annotation files searched
    like ``mask_dir`` (relative to ``root`` or absolute). ``mask_variable``: the variable of the
    .mat masks (default: the file's only 2-D array).

    Reference (golden-template) mode, :mod:`fabml.data.reference_records`: ``pairs_csv`` (a CSV
    ``image,reference[,label,mask,defect_type]``, relative to ``root`` or absolute; it replaces the
    folder discovery), or the folder discovery plus ``reference_image`` (one golden image for
    every image) or ``reference_pattern`` + ``reference_dir`` (a regular expression on each image's
    stem whose group ``ref`` or 1 names its reference's stem in ``reference_dir``). Each
    reference is aligned onto its image (translation + rotation within ``align_max_angle``
    degrees; 0 = translation only) when the image is read.
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
    annotations: str = "auto"
    annotation_path: str = ""
    mask_variable: str = ""
    pairs_csv: str = ""
    reference_image: str = ""
    reference_dir: str = ""
    reference_pattern: str = ""
    align_max_angle: float = 2.0

    @property
    def reference_mode(self) -> bool:
        """True when images are compared with a reference (any of the reference settings is set)."""
        return bool(self.pairs_csv or self.reference_image or self.reference_pattern)


@dataclass
class ImageRecord:
    """One image: absolute ``path``, ``label`` (0 normal, 1 anomalous), ``defect_type`` (type
    folder name), ``mask_path`` (absolute, or None when the image has no pixel mask): a mask image
    or an annotation spec (``file``, ``file#yolo``, ``ann.json#coco:17``; :mod:`fabml.data.annotations`);
    ``reference``: the absolute path of its golden template in reference mode, else None."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None
    reference: str | None = None


def _extensions(cfg: AnomalyDataConfig) -> set[str]:
    exts = {e.lower().lstrip(".") for e in cfg.extensions if e.strip(". ")}
    if not exts:
        raise ConfigError("setting 'extensions' is empty; list image suffixes such as png, jpg")
    return exts


def _mask_extensions(cfg: AnomalyDataConfig, exts: set[str]) -> set[str]:
    """Suffixes of the files that may be masks under the ``annotations`` setting."""
    fmt = cfg.annotations
    if fmt not in ANNOTATION_FORMATS:
        raise ConfigError(f"setting 'annotations' = '{fmt}' is unknown; choose one of: {', '.join(ANNOTATION_FORMATS)}")
    if fmt == "auto":
        return exts | set(ANNOTATION_SUFFIXES)
    return {"masks": exts, "coco": set(), "voc": {"xml"}, "yolo": {"txt"}, "boxes_txt": {"txt"}, "mat": {"mat"}}[fmt]


def _spec(mask: str, cfg: AnomalyDataConfig) -> str:
    """The annotation spec of a found mask file under the settings (a forced text format, the .mat variable)."""
    suffix = Path(mask).suffix.lower().lstrip(".")
    if suffix == "txt" and cfg.annotations in ("yolo", "boxes_txt"):
        return make_spec(mask, cfg.annotations)
    if suffix == "mat" and cfg.mask_variable:
        return make_spec(mask, "mat", cfg.mask_variable)
    return mask


def _is_label_list(name: str) -> bool:
    return name.lower() in CLASS_NAME_FILES or name.lower().endswith(".names")


def resolve_path(root: str, path: str) -> Path:
    """``path`` (``~`` expanded) as an absolute path, taken from ``root`` when relative and ``root`` is set."""
    p = Path(path).expanduser()
    if not p.is_absolute() and root:
        p = Path(root).expanduser() / p
    return Path(os.path.abspath(p))


def _is_mask_stem(stem: str) -> bool:
    return stem.lower().endswith("_mask")


def _scan_folder(folder: Path, exts: set[str], ann_exts: set[str] = frozenset()) -> tuple[list[Path], dict[str, Path]]:
    """Images directly in ``folder`` and the masks beside them, keyed by their image's stem.

    A ``<stem>_mask.*`` file is a mask; a ``.png`` whose stem also has a file of another image
    format is that image's mask (magnetic tile: ``x.jpg`` + ``x.png``); a file with an annotation
    suffix in ``ann_exts`` (xml, txt, mat) named like an image is its annotation.
    """
    by_stem: dict[str, list[Path]] = {}
    annotations: dict[str, list[Path]] = {}
    with os.scandir(folder) as entries:  # scandir: no stat call per file
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    for name in names:
        p = folder / name
        suffix = p.suffix.lower().lstrip(".")
        if suffix in exts:
            by_stem.setdefault(p.stem, []).append(p)
        elif suffix in ann_exts and not _is_label_list(name):
            annotations.setdefault(p.stem[:-5] if _is_mask_stem(p.stem) else p.stem, []).append(p)
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
    stems = {p.stem for p in images}
    for stem, files in annotations.items():
        if stem in stems:
            if stem in masks or len(files) > 1:
                found = ([masks[stem]] if stem in masks else []) + files
                raise DataError(f"image {stem} in {folder} has several masks: {', '.join(map(str, found))}; keep one")
            masks[stem] = files[0]
    return images, masks


def _index_masks(folder: Path, exts: set[str], recursive: bool) -> dict[tuple[str, str], list[Path]]:
    """Mask files under ``folder`` keyed by (parent folder relative to ``folder``, image stem)."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[tuple[str, str], list[Path]] = {}
    for p in sorted(paths):
        if (p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in exts
                and not _is_label_list(p.name)):
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


def _looks_binary(images: Sequence[Path], sample: int = 4) -> bool:
    """Every sampled image (up to ``sample``, evenly spread) holds only the values 0 and 255 (or 0 and 1)."""
    from fabml.data.images import open_image, to_8bit

    picks = sorted({int(i) for i in np.linspace(0, len(images) - 1, min(len(images), sample)).round()})
    for i in picks:
        values = set(np.unique(np.asarray(to_8bit(open_image(str(images[i]))).convert("L"))).tolist())
        if not (values <= {0, 255} or values <= {0, 1}):
            return False
    return bool(picks)


def _mask_roots(subdirs: list[Path], scanned: list[tuple[Path, list[Path], dict[str, Path]]]
                ) -> list[tuple[Path, str]]:
    """Folders beside the type folders that hold masks: named like masks, or all-binary images while
    the type folders are not (never a folder named like the normal one). Removes them from ``scanned``."""
    roots = [(d, f"is named '{d.name}'") for d in subdirs if d.name.lower() in MASK_FOLDER_NAMES]
    binary = [e for e in scanned if e[0].name.lower() not in NORMAL_NAMES and _looks_binary(e[1])]
    if binary and len(binary) < len(scanned):
        for entry in binary:
            scanned.remove(entry)
            roots.append((entry[0], "holds only binary 0/255 images"))
    return roots


def _discover_per_type(cfg: AnomalyDataConfig, root: Path, exts: set[str], mask_exts: set[str],
                       shared: list[tuple[Path, str, str]]) -> list[ImageRecord]:
    """``shared``: extra mask folders searched as ``<folder>/<type>/<stem>`` then ``<folder>/<stem>``,
    each with the setting or reason shown when one of its files matches no image."""
    own = {d for d, _, _ in shared}
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d not in own)
    mask_dirs = {d.name[:-5]: d for d in subdirs if _is_mask_stem(d.name)}
    ann_exts = mask_exts - exts
    scanned: list[tuple[Path, list[Path], dict[str, Path]]] = []
    for d in subdirs:
        if _is_mask_stem(d.name) or d.name.lower() in MASK_FOLDER_NAMES:
            continue
        images: list[Path] = []
        siblings: dict[str, Path] = {}
        for folder in [d] + [c for c in sorted(d.iterdir()) if c.is_dir() and c.name.lower() in _IMAGE_SUBDIRS]:
            found, masks = _scan_folder(folder, exts, ann_exts)
            images += found
            siblings.update(masks)
        if images:
            scanned.append((d, images, siblings))
    beside = _mask_roots(subdirs, scanned)
    if not scanned:
        raise DataError(f"no images found in the type subfolders of {root} (setting root); extensions: {sorted(exts)}")
    folders = [d.name for d, _, _ in scanned]
    names = _strip_common_prefix(folders)
    normal = _pick_normal(folders, names, cfg.normal_type)
    hint = "put each mask at <root>/masks/<type>/<stem>.png or <root>/masks/<stem>.png, named like its image"
    shared_indexes = [(_index_masks(d, mask_exts, True),
                       f"folder {d} beside the type folders {why}, so it is read as masks, not as a defect type, "
                       f"but its file {{mask}} matches no image by file stem; {hint}, or move the folder out of {root}")
                      for d, why in beside]
    shared_indexes += [(_index_masks(d, mask_exts, True), f"{{mask}} matches no image by file stem ({setting})")
                       for d, setting, _ in shared]
    claimed: set[Path] = set()
    flat_users: dict[Path, str] = {}
    records: list[ImageRecord] = []
    for i, ((d, images, siblings), name) in enumerate(zip(scanned, names)):
        mask_subdirs = [c for c in sorted(d.iterdir()) if c.is_dir() and c.name.lower() in _MASK_SUBDIRS]
        indexes = [_index_masks(c, mask_exts, False) for c in mask_subdirs]
        if d.name in mask_dirs:
            indexes.append(_index_masks(mask_dirs[d.name], mask_exts, False))
        local_claimed: set[Path] = set()
        for img in images:
            mask = siblings.get(img.stem)
            for index in indexes:
                found = _take_mask(index, (".", img.stem), img)
                if found is not None:
                    local_claimed.add(found)
                    mask = mask or found
            for index, _ in shared_indexes:
                for key in dict.fromkeys([(d.name, img.stem), (name, img.stem), (".", img.stem)]):
                    found = _take_mask(index, key, img)
                    if found is not None and flat_users.setdefault(found, d.name) != d.name:
                        raise DataError(f"mask {found} matches images of types {flat_users[found]} and {d.name}; "
                                        "put masks in <mask folder>/<type>/<stem>")
                    if found is not None:
                        claimed.add(found)
                        mask = mask or found
                        break
            label = 0 if i == normal else 1
            mask_path = str(mask) if (mask is not None and label == 1) else None
            records.append(ImageRecord(os.path.abspath(img), label, name, mask_path))
        for index in indexes:
            _check_orphans(index, local_claimed, f"type folder {d}")
        stems = {p.stem for p in images}
        stray = [m for stem, m in siblings.items() if stem not in stems]
        if stray:
            raise DataError(f"mask {stray[0]} matches no image (by file stem); remove it or fix its name")
    for index, message in shared_indexes:
        for paths in index.values():
            for p in paths:
                if p not in claimed:
                    raise DataError(message.replace("{mask}", str(p)))
    if not any(r.label == 0 for r in records):
        raise DataError(f"normal type folder {scanned[normal][0]} has no images (setting normal_type)")
    return records


def _folder_images(folder: Path, exts: set[str], skip: Sequence[Path | None],
                   ann_exts: set[str] = frozenset()) -> list[tuple[Path, Path | None]]:
    """(image, sibling mask) for every image under ``folder`` (recursive), skipping the ``skip`` folders."""
    out: list[tuple[Path, Path | None]] = []
    for d in [folder] + sorted(p for p in folder.rglob("*") if p.is_dir()):
        if any(s is not None and (d == s or s in d.parents) for s in skip):
            continue
        images, masks = _scan_folder(d, exts, ann_exts)
        out += [(img, masks.get(img.stem)) for img in images]
    return out


def _discover_folders(cfg: AnomalyDataConfig, exts: set[str], mask_exts: set[str],
                      shared: list[tuple[Path, str, str]]) -> list[ImageRecord]:
    if not cfg.normal_dir:
        raise ConfigError("layout=folders needs setting 'normal_dir' (the folder of normal images)")
    normal_dir = resolve_path(cfg.root, cfg.normal_dir)
    mask_dir = resolve_path(cfg.root, cfg.mask_dir) if cfg.mask_dir else None
    abnormal_dir = resolve_path(cfg.root, cfg.abnormal_dir) if cfg.abnormal_dir else None
    if not normal_dir.is_dir():
        raise DataError(f"normal image folder {normal_dir} does not exist (setting normal_dir)")
    if abnormal_dir is not None and abnormal_dir == normal_dir:
        raise ConfigError(f"settings normal_dir and abnormal_dir name the same folder {normal_dir}")
    for setting, d in (("abnormal_dir", abnormal_dir), ("mask_dir", mask_dir)):
        if d is not None and not d.is_dir():
            raise DataError(f"folder {d} does not exist (setting {setting})")
    ann_exts = mask_exts - exts
    skip = [mask_dir, abnormal_dir] + [d for d, _, _ in shared]
    normals = _folder_images(normal_dir, exts, skip, ann_exts)
    if not normals:
        raise DataError(
            f"normal image folder {normal_dir} has no images with suffix {sorted(exts)} (setting normal_dir)"
        )
    indexes = [(_index_masks(d, mask_exts, True), setting) for d, setting, _ in
               ([(mask_dir, "setting mask_dir", "")] if mask_dir is not None else []) + shared]
    claimed: set[Path] = set()
    flat_users: dict[Path, str] = {}
    records = [ImageRecord(os.path.abspath(p), 0, normal_dir.name, None) for p, _ in normals]
    for img, _ in normals:  # masks named after normal images are accepted and ignored
        for key in ((img.parent.relative_to(normal_dir).as_posix(), img.stem), (".", img.stem)):
            for index, _ in indexes:
                claimed.update(index.get(key, []))
    if abnormal_dir is not None:
        for img, sibling in _folder_images(abnormal_dir, exts, [mask_dir, normal_dir] + skip[2:], ann_exts):
            rel = img.parent.relative_to(abnormal_dir)
            dtype = rel.parts[0] if rel.parts else abnormal_dir.name
            mask = sibling
            for index, setting in indexes:
                found = _take_mask(index, (rel.as_posix(), img.stem), img)
                if found is None and rel.parts:
                    found = _take_mask(index, (".", img.stem), img)
                    if found is not None and flat_users.setdefault(found, dtype) != dtype:
                        raise DataError(
                            f"mask {found} matches images of types {flat_users[found]} and {dtype}; "
                            f"put masks in <folder>/<type>/ ({setting})"
                        )
                if found is not None:
                    claimed.add(found)
                    mask = mask or found
            records.append(ImageRecord(os.path.abspath(img), 1, dtype, str(mask) if mask else None))
    for index, setting in indexes:
        _check_orphans(index, claimed, setting)
    return records


def discover_records(cfg: AnomalyDataConfig) -> list[ImageRecord]:
    """All images of the dataset as records sorted by (label, defect_type, path); in reference mode
    each with its reference (:mod:`fabml.data.reference_records`)."""
    from fabml.data import reference_records  # it builds on this module's records

    if cfg.pairs_csv:
        return sorted(reference_records.records_from_pairs(cfg), key=lambda r: (r.label, r.defect_type, r.path))
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"layout='{cfg.layout}' is unknown; choose one of: {', '.join(LAYOUTS)}")
    exts = _extensions(cfg)
    layout = cfg.layout
    root = resolve_path("", cfg.root) if cfg.root else None
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
    mask_exts = _mask_extensions(cfg, exts)
    shared, coco = _annotation_source(cfg)
    if layout == "folders":
        records = _discover_folders(cfg, exts, mask_exts, shared)
    else:
        if root is None or not root.is_dir():
            raise DataError(f"data folder {root or '<empty>'} does not exist (setting root)")
        records = _discover_per_type(cfg, root, exts, mask_exts, shared)
    if coco is not None:
        if cfg.annotations == "coco":  # the COCO file is the one source of masks
            for r in records:
                r.mask_path = None
        _attach_coco(records, coco)
    for r in records:
        if r.mask_path and coco is None:
            r.mask_path = _spec(r.mask_path, cfg)
    if cfg.reference_mode:
        records = reference_records.attach_references(records, cfg)
    return sorted(records, key=lambda r: (r.label, r.defect_type, r.path))


def _annotation_source(cfg: AnomalyDataConfig) -> tuple[list[tuple[Path, str, str]], str | None]:
    """(extra mask folders as (folder, setting, ""), COCO file or None) named by ``annotation_path``."""
    if not cfg.annotation_path:
        if cfg.annotations == "coco":
            raise ConfigError("annotations=coco needs setting 'annotation_path' (the COCO .json file)")
        return [], None
    path = resolve_path(cfg.root, cfg.annotation_path)
    if path.is_file() and path.suffix.lower() == ".json" and cfg.annotations in ("auto", "coco"):
        return [], str(path)
    if cfg.annotations == "coco":
        raise DataError(f"annotations=coco: {path} is not a COCO .json file (setting annotation_path)")
    if not path.is_dir():
        raise DataError(f"annotation folder {path} does not exist (setting annotation_path)")
    return [(path, "setting annotation_path", "")], None


def _attach_coco(records: list[ImageRecord], path: str) -> None:
    """Point each defective image listed in COCO file ``path`` at its entry (``path#coco:<id>``).

    A listed file name matches the image whose path ends with it, else the one image with its
    base name; a listed image that matches none, or several, is a DataError."""
    from fabml.data.coco_annotations import coco_images

    by_name: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_name.setdefault(Path(r.path).name, []).append(r)
    for image_id, file_name in sorted(coco_images(path).items()):
        tail = file_name.replace("\\", "/")
        while tail.startswith("./"):
            tail = tail[2:]
        tail = "/" + tail.lstrip("/")
        found = by_name.get(Path(tail).name, [])
        if len(found) > 1:
            found = [r for r in found if Path(r.path).as_posix().endswith(tail)]
        if len(found) != 1:
            what = "no image found under root" if not found else f"{len(found)} images"
            raise DataError(f"COCO file {path} lists image '{file_name}' (id {image_id}), which matches {what}; "
                            "fix its file_name or the data settings")
        rec = found[0]
        if rec.label == 1:
            if rec.mask_path:
                raise DataError(f"image {rec.path} has a mask {rec.mask_path} and an entry in COCO file {path}; "
                                "keep one")
            rec.mask_path = make_spec(path, "coco", str(image_id))


def mask_gap_notes(records: Sequence[ImageRecord]) -> list[str]:
    """One note per defect type without any mask while other defect types have masks."""
    with_masks = sorted({r.defect_type for r in records if r.label == 1 and r.mask_path})
    missing = sorted({r.defect_type for r in records if r.label == 1} - set(with_masks))
    if not with_masks:
        return []
    have = ", ".join(with_masks) + (" has" if len(with_masks) == 1 else " have")
    return [f"defect type '{t}' has no masks while {have}: it counts in image metrics only; add its masks "
            f"(e.g. <root>/masks/{t}/<stem>.png) or check their file names" for t in missing]
