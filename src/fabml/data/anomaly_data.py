"""Image folders for anomaly detection: discovery, the normal-only split, decoding, the dataset.

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

Decoding uses Pillow only (``torchvision.io`` does not work with the CPU torch build).
EXIF orientation is ignored so that an image and its mask stay aligned pixel for pixel.
Resizing does not keep the aspect ratio: every image is stretched to ``image_size``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fabml.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
NORMAL_NAMES = ("good", "free", "normal", "ok")
LAYOUTS = ("auto", "folders", "per_type")
_IMAGE_SUBDIRS = ("imgs", "images")
MASK_FOLDER_NAMES = ("masks", "mask", "ground_truth", "gt")
_MASK_SUBDIRS = MASK_FOLDER_NAMES
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SPLIT_FORMAT = "fabml-anomaly-split"


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
    permutation of normal images. ``extensions``: image file suffixes, case-insensitive.
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
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))


@dataclass
class ImageRecord:
    """One image: absolute ``path``, ``label`` (0 normal, 1 anomalous), ``defect_type`` (type
    folder name), ``mask_path`` (absolute, or None when the image has no pixel mask)."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None


@dataclass
class AnomalySplit:
    """Normal-only ``train`` and ``val`` records; ``test`` = held-out normals + all abnormal."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]

    def summary(self) -> str:
        """One line of counts, e.g. ``train 599 normal | val 67 normal | test 286 normal + 392 abnormal (...)``."""
        abnormal = [r for r in self.test if r.label == 1]
        types: dict[str, int] = {}
        for r in abnormal:
            types[r.defect_type] = types.get(r.defect_type, 0) + 1
        detail = ", ".join(f"{t} {n}" for t, n in sorted(types.items()))
        return (
            f"train {len(self.train)} normal | val {len(self.val)} normal | "
            f"test {len(self.test) - len(abnormal)} normal + {len(abnormal)} abnormal"
            + (f" ({detail})" if detail else "")
        )


# ---------------------------------------------------------------------------------- discovery


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


# -------------------------------------------------------------------------------------- split


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise ConfigError(f"setting '{name}' = {value!r} must lie strictly between 0 and 1")


def split_records(
    records: Sequence[ImageRecord], train_fraction: float = 0.7, val_fraction: float = 0.1, seed: int = 0
) -> AnomalySplit:
    """Split normal images into fit (train + val) and test; every abnormal image goes to test.

    The normal records are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(train_fraction * n)`` form the fitting pool (at least 1, and at least 1 normal is left
    for testing), of which ``round(val_fraction * n_fit)`` (at least 1 when n_fit >= 2, never all)
    are validation. Each subset keeps the order of ``records``.
    """
    _check_fraction("train_fraction", train_fraction)
    _check_fraction("val_fraction", val_fraction)
    normal = [i for i, r in enumerate(records) if r.label == 0]
    n = len(normal)
    if n < 2:
        raise DataError(f"need at least 2 normal images to split into fit and test, found {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_fit = min(max(math.floor(train_fraction * n + 0.5), 1), n - 1)
    n_val = min(max(math.floor(val_fraction * n_fit + 0.5), 1), n_fit - 1) if n_fit >= 2 else 0
    val_idx = {normal[j] for j in order[:n_val]}
    train_idx = {normal[j] for j in order[n_val:n_fit]}
    fit = val_idx | train_idx
    return AnomalySplit(
        train=[r for i, r in enumerate(records) if i in train_idx],
        val=[r for i, r in enumerate(records) if i in val_idx],
        test=[r for i, r in enumerate(records) if i not in fit],
    )


def make_split(cfg: AnomalyDataConfig) -> AnomalySplit:
    """``split_records(discover_records(cfg), ...)`` with the config's fractions and seed."""
    return split_records(discover_records(cfg), cfg.train_fraction, cfg.val_fraction, cfg.split_seed)


def write_split(split: AnomalySplit, path: str | Path) -> None:
    """Write the split as JSON (absolute paths) so another program can use the exact same images."""
    data: dict[str, Any] = {"format": _SPLIT_FORMAT, "version": 1}
    for part in ("train", "val", "test"):
        data[part] = [
            {**asdict(r), "path": os.path.abspath(r.path),
             "mask_path": os.path.abspath(r.mask_path) if r.mask_path else None}
            for r in getattr(split, part)
        ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def read_split(path: str | Path) -> AnomalySplit:
    """Read a split written by :func:`write_split`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != _SPLIT_FORMAT:
        raise DataError(f"split file {path} is not a fabml anomaly split (write it with write_split)")
    parts: dict[str, list[ImageRecord]] = {}
    for part in ("train", "val", "test"):
        try:
            parts[part] = [
                ImageRecord(str(e["path"]), int(e["label"]), str(e["defect_type"]), e.get("mask_path"))
                for e in data[part]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"split file {path}: entry list '{part}' is malformed ({exc!r})") from None
    return AnomalySplit(**parts)


# ----------------------------------------------------------------------------------- decoding


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from None
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale -> 8-bit 'L' (16-bit keeps the high byte; float in [0, 1] is x255)."""
    if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max(initial=0) > 255):
        arr = np.asarray(img).astype(np.int64) >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return img


def _is_gray(img: Image.Image) -> bool:
    if img.mode in _GRAY_MODES:
        return True
    arr = np.asarray(img.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def _check_channels(channels: int, allow_auto: bool) -> None:
    if channels not in ((0, 1, 3) if allow_auto else (1, 3)):
        raise ConfigError(f"setting 'channels' = {channels!r} must be {'0 (auto), ' if allow_auto else ''}1 or 3")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ConfigError(f"setting 'image_size' = {list(size)!r} must be two positive integers [H, W]")
    return int(size[0]), int(size[1])


def _decode(img: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image(path: str, channels: int, size: Sequence[int] | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 ``[H, W, channels]`` (1 = luma, 3 = RGB; alpha dropped).

    ``size`` = (H, W) resizes with Pillow's bilinear filter (antialiased when shrinking).
    An unreadable or corrupt file raises :class:`DataError` naming it.
    """
    _check_channels(channels, allow_auto=False)
    return _decode(_open(path), channels, _check_size(size) if size is not None else None)


def _mask_from(img: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    arr = np.asarray(_to_8bit(img).convert("L" if img.mode in _GRAY_MODES else "RGB"), dtype=np.float32)
    if arr.ndim == 3:  # a coloured mask: any channel marks the defect
        arr = arr.max(axis=2)
    if arr.size and arr.max() <= 1.0:  # masks stored as 0/1 instead of 0/255
        arr = arr * 255.0
    has_defect = bool((arr > 127.0).any())
    if size is not None and arr.shape != size:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    mask = arr > 127.0
    if has_defect and not mask.any():
        # The defect is smaller than half an output pixel everywhere: keep its most-covered
        # pixels rather than lose it (a defective image must not end up with an empty mask).
        mask = arr >= 0.5 * arr.max()
    return mask.astype(np.float32)


def load_mask(path: str, size: Sequence[int] | None = None) -> np.ndarray:
    """Decode a mask to float32 ``[H, W]`` in {0, 1}.

    The grey levels (0..255; a 0/1-coded mask is scaled to 0/255; a colour mask takes the max
    channel) are resized to ``size`` = (H, W) with the bilinear filter as floats, then thresholded
    at > 127, i.e. a pixel is defective when more than half of its footprint was. This equals the
    dataset's own > 127 rule at native size and keeps thin defects better than nearest resizing.
    When shrinking would erase every defect pixel (a blowhole at 32 x 32), the pixels holding at
    least half of the largest remaining coverage are kept instead, so a mask never vanishes.
    """
    return _mask_from(_open(path), _check_size(size) if size is not None else None)


def detect_channels(records: Sequence[ImageRecord], sample: int = 16) -> int:
    """1 if every sampled image (up to ``sample``, evenly spread over ``records``) is grayscale —
    a gray mode, or RGB with three equal channels — else 3."""
    if not records:
        raise DataError("cannot detect the channel count from an empty image list; set 'channels' to 1 or 3")
    picks = sorted({int(i) for i in np.linspace(0, len(records) - 1, min(len(records), max(sample, 1))).round()})
    return 1 if all(_is_gray(_open(records[i].path)) for i in picks) else 3


# ------------------------------------------------------------------------------------ dataset


class AnomalyImageDataset(Dataset):
    """Records -> dict(image ``[C,H,W]`` float32 in [0,1], mask ``[1,H,W]`` float32 {0,1},
    label int64, index int64).

    Images are stretched to ``image_size`` (H, W) with Pillow's bilinear filter (aspect ratio not
    kept). The mask is zeros for normal images and images without a mask file. ``channels`` 0
    detects 1 or 3 from the records. ``cache=True`` keeps each decoded, resized image as uint8
    after its first use (call :meth:`preload` to fill it in the main process; DataLoader workers
    each hold their own copy, which only persists with ``persistent_workers=True``).
    """

    def __init__(
        self, records: Sequence[ImageRecord], image_size: Sequence[int] = (256, 256), channels: int = 0,
        cache: bool = False,
    ) -> None:
        self.records = list(records)
        self.image_size = _check_size(image_size)
        _check_channels(channels, allow_auto=True)
        self.channels = channels or detect_channels(self.records)
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rec = self.records[index]
        img = _open(rec.path)
        image = torch.from_numpy(_decode(img, self.channels, self.image_size).transpose(2, 0, 1).copy())
        if rec.label == 0 or not rec.mask_path:
            return image, None
        mask_img = _open(rec.mask_path)
        (w, h), (mw, mh) = img.size, mask_img.size
        if abs(w * mh - h * mw) > 0.01 * w * mh:  # aspect ratios differ by more than 1 %
            raise DataError(f"mask {rec.mask_path} is {mw}x{mh} but its image {rec.path} is {w}x{h}")
        return image, torch.from_numpy(_mask_from(mask_img, self.image_size).astype(np.uint8))[None]

    def preload(self) -> None:
        """Decode every image into the cache now (needs ``cache=True``)."""
        if not self.cache:
            raise ConfigError("preload() needs the dataset built with cache=True")
        for i in range(len(self)):
            if i not in self._cache:
                self._cache[i] = self._load(i)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        item = self._cache.get(index) if self.cache else None
        if item is None:
            item = self._load(index)
            if self.cache:
                self._cache[index] = item
        image, mask = item
        h, w = self.image_size
        return {
            "image": image.float().div_(255.0),
            "mask": mask.float() if mask is not None else torch.zeros(1, h, w),
            "label": torch.tensor(self.records[index].label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
