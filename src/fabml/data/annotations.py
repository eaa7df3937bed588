"""Defect annotations as inspection teams keep them -> boxes with a type, and masks at any size.

Formats (``data.annotations``; ``auto`` tells them apart by file suffix and, for ``.txt``, content):

==========  =================================================================================
masks       an image file (PNG, ...): decoded by :mod:`fabml.data.images`, not here
voc         Pascal VOC ``.xml`` per image: ``<object><name>`` + ``<bndbox>`` xmin ymin xmax ymax,
            1-based inclusive pixels (the VOC devkit rule; a 0 written by 0-based tools is read as 1)
coco        one COCO ``.json`` per dataset: ``images`` [id, file_name, width, height],
            ``annotations`` [image_id, bbox [x, y, w, h], category_id, optional ``segmentation``],
            ``categories`` [id, name] (:mod:`fabml.data.coco_annotations`)
yolo        ``.txt`` per image: ``class cx cy w h`` in [0, 1] of the image width/height (or a
            YOLO-seg polygon ``class x1 y1 x2 y2 ...``); type names from ``classes.txt`` /
            ``*.names`` beside the file or one folder up, else the class number
boxes_txt   ``.txt`` per image: ``x1 y1 x2 y2 [type]`` in pixels, space- or comma-separated,
            ``#`` comments and one header line allowed
mat         MATLAB ``.mat`` mask (v5 via scipy, v7.3 via h5py): nonzero = defect
            (:mod:`fabml.data.mat_masks`)
==========  =================================================================================

A record's ``mask_path`` is an annotation *spec*: a file path, optionally followed by
``#<format>`` or ``#<format>:<key>`` (``ann.json#coco:17`` = image id 17 of a COCO file,
``x.mat#mat:gt`` = variable ``gt``, ``x.txt#yolo`` = a forced text format). Specs survive the
split file unchanged.

Box convention: :class:`Box` holds continuous pixel coordinates of the original image, the
rectangle ``[x1, x2) x [y1, y2)`` (x1, y1 inclusive, x2, y2 exclusive), so pixel column ``c``
(covering ``[c, c + 1)``) lies in the box when ``x1 <= c < x2`` for integer coordinates. At
another size a box is scaled with the image and every pixel it touches is filled, so a box never
vanishes when the image shrinks. Polygons (COCO, YOLO-seg) fill the pixels whose centre lies
inside. A ``.txt`` read as ``auto`` is YOLO when every line is an integer class followed by
fractions in [0, 1], else pixel boxes. Boxes may overshoot the image by up to 1 pixel (rounding of
annotation tools) and are clipped; beyond that the file is a :class:`DataError`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fabml.data.parsing import is_number
from fabml.errors import DataError

ANNOTATION_FORMATS = ("auto", "masks", "voc", "coco", "yolo", "boxes_txt", "mat")
ANNOTATION_SUFFIXES = {"xml": "voc", "txt": "txt", "mat": "mat"}
"""Per-image annotation file suffixes and their format (``txt``: yolo or boxes_txt by content)."""
CLASS_NAME_FILES = ("classes.txt", "obj.names")
_TOLERANCE = 1.0  # pixels a box may overshoot the image before it is an error


@dataclass(frozen=True)
class Box:
    """A defect box ``[x1, x2) x [y1, y2)`` in pixels of its image (x1, y1 inclusive; x2, y2
    exclusive) and its defect ``type`` ("" when the file names none)."""

    x1: float
    y1: float
    x2: float
    y2: float
    type: str = ""

    def scaled(self, sx: float, sy: float) -> Box:
        """The box in an image resized by ``sx`` (width) and ``sy`` (height)."""
        return replace(self, x1=self.x1 * sx, y1=self.y1 * sy, x2=self.x2 * sx, y2=self.y2 * sy)

    def pixels(self, height: int, width: int) -> tuple[slice, slice]:
        """(rows, cols) slices of every pixel of a ``height x width`` grid the box touches."""
        eps = 1e-6
        r0, c0 = max(0, math.floor(self.y1 + eps)), max(0, math.floor(self.x1 + eps))
        r1, c1 = min(height, math.ceil(self.y2 - eps)), min(width, math.ceil(self.x2 - eps))
        return slice(r0, max(r0 + 1, r1)), slice(c0, max(c0 + 1, c1))


@dataclass
class Annotation:
    """What one annotation file says about one image of ``size`` = (H, W) pixels.

    ``boxes``: every box (for box metrics); ``fill``: the boxes drawn into the mask (a COCO box
    whose object has a polygon is not filled, its polygon is); ``polygons``: ``[K, 2]`` arrays of
    (x, y) vertices in pixels; ``mask``: bool ``[H, W]`` (a .mat mask, a COCO RLE) or None.
    """

    size: tuple[int, int]
    boxes: list[Box] = field(default_factory=list)
    fill: list[Box] = field(default_factory=list)
    polygons: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None

    def rasterise(self, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """float32 ``[H', W']`` in {0, 1} at ``out_size`` = (H', W') (default: the image's own size).

        Boxes and polygons are scaled with the image and drawn at the output size; a stored mask
        is resized with nearest-neighbour sampling.
        """
        h, w = self.size
        oh, ow = out_size or self.size
        sx, sy = ow / w, oh / h
        out = np.zeros((oh, ow), bool)
        if self.mask is not None:
            rows = np.minimum((np.arange(oh) + 0.5) * h / oh, h - 1).astype(int)
            cols = np.minimum((np.arange(ow) + 0.5) * w / ow, w - 1).astype(int)
            out |= self.mask[rows][:, cols]
        for box in self.fill:
            out[box.scaled(sx, sy).pixels(oh, ow)] = True
        for poly in self.polygons:
            fill_polygon(out, np.asarray(poly, dtype=np.float64) * [sx, sy])
        return out.astype(np.float32)


def fill_polygon(out: np.ndarray, poly: np.ndarray) -> None:
    """Set the pixels of bool ``out`` ``[H, W]`` whose centre ``(c + 0.5, r + 0.5)`` lies inside the
    polygon ``poly`` ``[K, 2]`` of (x, y) vertices (even-odd rule); a polygon too thin to hold a
    pixel centre sets the pixels of its vertices instead, so that it never vanishes."""
    h, w = out.shape
    x0, y0 = max(0, math.floor(poly[:, 0].min())), max(0, math.floor(poly[:, 1].min()))
    x1, y1 = min(w, math.ceil(poly[:, 0].max())), min(h, math.ceil(poly[:, 1].max()))
    inside = np.zeros((0, 0), bool)
    if x1 > x0 and y1 > y0:
        py, px = np.mgrid[y0:y1, x0:x1] + 0.5
        inside = np.zeros(px.shape, bool)
        for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, axis=0)):
            crosses = (ya > py) != (yb > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cut = xa + (py - ya) * (xb - xa) / (yb - ya)
            inside ^= crosses & (px < x_cut)
        out[y0:y1, x0:x1] |= inside
    if inside.any():
        return
    cols = np.clip(np.floor(poly[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(poly[:, 1]).astype(int), 0, h - 1)
    out[rows, cols] = True


def split_spec(spec: str) -> tuple[str, str, str]:
    """(path, format, key) of an annotation spec; the format is "" when only the suffix tells."""
    head, sep, tail = spec.rpartition("#")
    if sep:
        fmt, _, key = tail.partition(":")
        if fmt in ANNOTATION_FORMATS:
            return head, fmt, key
    return spec, "", ""


def make_spec(path: str, fmt: str = "", key: str = "") -> str:
    """The spec string naming ``path`` read as ``fmt`` (and ``key``); plain ``path`` when both are empty."""
    if not fmt:
        return path
    return f"{path}#{fmt}" + (f":{key}" if key else "")


def spec_format(spec: str) -> str:
    """The format of a spec: its ``#format``, else by suffix (xml voc, mat mat, txt txt, other masks)."""
    path, fmt, _ = split_spec(spec)
    if fmt and fmt != "auto":
        return fmt
    return ANNOTATION_SUFFIXES.get(Path(path).suffix.lower().lstrip("."), "masks")


def read_annotation(spec: str, image_size: tuple[int, int]) -> Annotation:
    """The annotation named by ``spec`` for an image of ``image_size`` = (H, W) pixels.

    Any unreadable, malformed or mismatching file is a one-line :class:`DataError` naming it.
    """
    path, _, key = split_spec(spec)
    fmt = spec_format(spec)
    if fmt == "masks":
        raise DataError(f"{spec} is an image mask, not an annotation file; decode it with fabml.data.images")
    if fmt == "coco":
        from fabml.data.coco_annotations import read_coco

        return read_coco(path, key, image_size)
    if fmt == "mat":
        from fabml.data.mat_masks import read_mat_mask

        mask = read_mat_mask(path, key)
        if mask.shape != tuple(image_size) and _aspect_differs(mask.shape, image_size):
            raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{image_size[1]}x{image_size[0]} (width x height)")
        return Annotation(tuple(mask.shape), mask=mask)  # type: ignore[arg-type]
    text = _read_text(path)
    if fmt == "voc":
        boxes = _voc_boxes(path, text, image_size)
    else:
        if fmt == "txt":
            fmt = "yolo" if _looks_yolo(text) else "boxes_txt"
        if fmt == "yolo":
            return _yolo(path, text, image_size)
        boxes = _txt_boxes(path, text, image_size)
    return Annotation(image_size, boxes, list(boxes))


def _aspect_differs(a: tuple[int, ...], b: tuple[int, int]) -> bool:
    return abs(a[0] * b[1] - a[1] * b[0]) > 0.01 * a[1] * b[0]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from None


def checked_box(path: str, box: Box, image_size: tuple[int, int], where: str) -> Box:
    """``box`` clipped to the image; a DataError when it is empty or lies outside by more than 1 px."""
    h, w = image_size
    if not all(math.isfinite(v) for v in (box.x1, box.y1, box.x2, box.y2)):
        raise DataError(f"annotation file {path}, {where}: box coordinates are not finite numbers")
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        raise DataError(f"annotation file {path}, {where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) "
                        "is empty (needs x1 < x2 and y1 < y2)")
    if box.x1 < -_TOLERANCE or box.y1 < -_TOLERANCE or box.x2 > w + _TOLERANCE or box.y2 > h + _TOLERANCE:
        raise DataError(f"annotation file {path}, {where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) "
                        f"lies outside the {w}x{h} image (width x height); fix the box or pair the file "
                        "with the right image")
    clipped = replace(box, x1=min(max(box.x1, 0.0), w), y1=min(max(box.y1, 0.0), h),
                      x2=max(min(box.x2, float(w)), 0.0), y2=max(min(box.y2, float(h)), 0.0))
    if clipped.x2 <= clipped.x1 or clipped.y2 <= clipped.y1:
        raise DataError(f"annotation file {path}, {where}: box ({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) "
                        f"lies outside the {w}x{h} image (width x height)")
    return clipped


def _voc_boxes(path: str, text: str, image_size: tuple[int, int]) -> list[Box]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(f"annotation file {path} is not valid Pascal VOC XML: {exc}") from None
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        try:
            w, h = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
        except ValueError:
            raise DataError(f"annotation file {path}: <size> width/height are not numbers") from None
        if (h, w) != tuple(image_size) and w > 0 and h > 0:
            raise DataError(f"annotation file {path} is for a {w}x{h} image but its image is "
                            f"{image_size[1]}x{image_size[0]} (width x height)")
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"annotation file {path}: object {i + 1} has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(bnd.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DataError(f"annotation file {path}: object {i + 1} needs numeric xmin, ymin, xmax, ymax") from None
        box = Box(max(x1 - 1.0, 0.0), max(y1 - 1.0, 0.0), x2, y2, (obj.findtext("name") or "").strip())
        boxes.append(checked_box(path, box, image_size, f"object {i + 1}"))
    return boxes


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty, non-comment lines; commas or whitespace separate."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append((n, [f.strip() for f in line.split(",")] if "," in line else line.split()))
    return rows


def _yolo_columns_ok(fields: list[str]) -> bool:
    """``class cx cy w h`` or ``class x1 y1 x2 y2 x3 y3 ...`` (an odd count of at least 5), all numbers."""
    n = len(fields)
    return n >= 5 and n % 2 == 1 and all(is_number(v) for v in fields)


def _yolo_fractions_ok(values: list[float]) -> bool:
    """Every coordinate a fraction of the image size, [0, 1] with 0.01 slack for rounding."""
    return all(-0.01 <= v <= 1.01 for v in values)


def _looks_yolo(text: str) -> bool:
    """Every line ``int f f f f`` (or a YOLO-seg polygon) with the floats in [0, 1]."""
    rows = _rows(text)
    for _, f in rows:
        if not _yolo_columns_ok(f):
            return False
        if float(f[0]) != int(float(f[0])) or not _yolo_fractions_ok([float(v) for v in f[1:]]):
            return False
    return bool(rows)


def _txt_boxes(path: str, text: str, image_size: tuple[int, int]) -> list[Box]:
    boxes = []
    for k, (n, f) in enumerate(_rows(text)):
        if k == 0 and not any(is_number(v) for v in f[:4]):
            continue  # a header line such as "x1,y1,x2,y2,type"
        if len(f) not in (4, 5) or not all(is_number(v) for v in f[:4]):
            raise DataError(f"annotation file {path}, line {n}: expected 'x1 y1 x2 y2 [type]' (4 numbers and an "
                            f"optional type), found {len(f)} column(s): {' '.join(f)}")
        x1, y1, x2, y2 = (float(v) for v in f[:4])
        boxes.append(checked_box(path, Box(x1, y1, x2, y2, f[4] if len(f) == 5 else ""), image_size, f"line {n}"))
    return boxes


def class_names(label_file: str) -> list[str]:
    """YOLO class names from ``classes.txt`` / ``obj.names`` / one ``*.names`` file beside the label
    file or one folder up (one name per line); [] when there is none."""
    here = Path(label_file).resolve().parent
    for folder in (here, here.parent):
        found = [folder / n for n in CLASS_NAME_FILES if (folder / n).is_file()]
        found = found or sorted(folder.glob("*.names"))
        if found:
            return [line.strip() for line in _read_text(str(found[0])).splitlines() if line.strip()]
    return []


def _yolo(path: str, text: str, image_size: tuple[int, int]) -> Annotation:
    h, w = image_size
    names = class_names(path)
    ann = Annotation(image_size)
    for n, f in _rows(text):
        if not _yolo_columns_ok(f):
            raise DataError(f"annotation file {path}, line {n}: expected YOLO 'class cx cy w h' (5 numbers) or "
                            f"'class x1 y1 x2 y2 x3 y3 ...', found {len(f)} column(s): {' '.join(f)}")
        values = [float(v) for v in f[1:]]
        if not _yolo_fractions_ok(values):
            raise DataError(f"annotation file {path}, line {n}: YOLO coordinates must be fractions of the image "
                            "size in [0, 1]; pixel boxes 'x1 y1 x2 y2 type' need data.annotations=boxes_txt")
        cls = int(float(f[0]))
        kind = names[cls] if 0 <= cls < len(names) else str(cls)
        if len(values) == 4:
            cx, cy, bw, bh = values
            box = checked_box(path, Box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h,
                                        kind), image_size, f"line {n}")
            ann.boxes.append(box)
            ann.fill.append(box)
        else:
            poly = np.asarray(values, dtype=np.float64).reshape(-1, 2) * [w, h]
            ann.polygons.append(poly)
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            ann.boxes.append(checked_box(path, Box(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]), kind),
                                         image_size, f"line {n}"))
    return ann
