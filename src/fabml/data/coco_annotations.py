"""COCO JSON annotations: one file for a dataset, boxes and (when given) segmentation per object.

Read: ``images`` [id, file_name, width, height], ``annotations`` [image_id, bbox [x, y, w, h]
(0-based pixels, the box ``[x, x + w) x [y, y + h)``), category_id, optional segmentation],
``categories`` [id, name]. Decision: an object's ``segmentation`` is used for the mask when it is
given — polygons (lists of x, y pixel pairs) are drawn, RLE (``{"size": [h, w], "counts": ...}``,
counts as a list or as COCO's compressed string) is decoded — and its ``bbox`` otherwise; its
box always joins the box list (for box metrics).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fabml.data.annotations import Annotation, Box, checked_box
from fabml.errors import DataError


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict[str, Any]:
    """The parsed and checked file, indexed: images by id, annotations by image id, category names."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"COCO annotation file {path} does not exist (setting data.annotation_path)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"COCO annotation file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"COCO annotation file {path} has no 'images' list; is it a COCO file?")
    try:
        images = {int(im["id"]): (str(im["file_name"]), int(im["height"]), int(im["width"])) for im in data["images"]}
        names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in data.get("annotations", []):
            by_image.setdefault(int(a["image_id"]), []).append(a)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"COCO annotation file {path}: an image, annotation or category lacks a field "
                        f"({exc!r}); images need id, file_name, width, height") from None
    unknown = sorted(set(by_image) - set(images))
    if unknown:
        raise DataError(f"COCO annotation file {path}: annotations refer to image id {unknown[0]}, "
                        "which is not in its 'images' list")
    return {"images": images, "annotations": by_image, "categories": names}


def load_coco(path: str) -> dict[str, Any]:
    """The checked content of a COCO file (cached while the file is unchanged)."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        raise DataError(f"COCO annotation file {path} does not exist (setting data.annotation_path)") from None
    return _load(os.path.abspath(path), mtime)


def coco_images(path: str) -> dict[int, str]:
    """image id -> file_name of every image the COCO file lists."""
    return {i: v[0] for i, v in load_coco(path)["images"].items()}


def decode_rle(counts: list[int] | str, height: int, width: int) -> np.ndarray:
    """bool ``[height, width]`` of a COCO run-length encoding (column-major runs, starting with zeros).

    ``counts`` as a list of run lengths, or as the compressed string: each run is a signed number
    in 5-bit groups (offset 48 as ASCII, bit 0x20 = more groups follow, bit 0x10 of the last
    group = negative), and from the third run on the value is a difference to the run two back.
    """
    if isinstance(counts, str):
        runs: list[int] = []
        p = 0
        while p < len(counts):
            value, shift, more = 0, 0, True
            while more:
                c = ord(counts[p]) - 48
                value |= (c & 0x1F) << shift
                more = bool(c & 0x20)
                p += 1
                shift += 5
                if not more and c & 0x10:
                    value |= -1 << shift
            if len(runs) > 2:
                value += runs[-2]
            runs.append(value)
        counts = runs
    flat = np.zeros(height * width, bool)
    pos = 0
    for i, run in enumerate(counts):
        if run < 0 or pos + run > flat.size:
            raise ValueError(f"run {i} of length {run} does not fit a {width}x{height} mask")
        if i % 2:
            flat[pos:pos + run] = True
        pos += run
    return flat.reshape(width, height).T


def read_coco(path: str, key: str, image_size: tuple[int, int]) -> Annotation:
    """The annotation of image id ``key`` in COCO file ``path`` for an image of (H, W) = ``image_size``."""
    coco = load_coco(path)
    try:
        image_id = int(key)
        file_name, h, w = coco["images"][image_id]
    except (ValueError, KeyError):
        raise DataError(f"COCO annotation file {path} has no image with id '{key}'") from None
    if (h, w) != tuple(image_size):
        raise DataError(f"COCO annotation file {path} says image {file_name} is {w}x{h} but the image is "
                        f"{image_size[1]}x{image_size[0]} (width x height)")
    ann = Annotation((h, w))
    for n, a in enumerate(coco["annotations"].get(image_id, [])):
        where = f"annotation {a.get('id', n)} of image {file_name}"
        try:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            kind = coco["categories"].get(int(a.get("category_id", -1)), str(a.get("category_id", "")))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"COCO annotation file {path}, {where}: 'bbox' must be [x, y, width, height]") from None
        box = checked_box(path, Box(x, y, x + bw, y + bh, kind), (h, w), where)
        ann.boxes.append(box)
        seg = a.get("segmentation")
        try:
            polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if len(p) >= 6] \
                if isinstance(seg, list) else []
            if polygons:
                ann.polygons += polygons
            elif isinstance(seg, dict):
                rle = decode_rle(seg["counts"], int(seg["size"][0]), int(seg["size"][1]))
                if rle.shape != (h, w):
                    raise ValueError(f"RLE size {rle.shape[1]}x{rle.shape[0]} differs from the image")
                ann.mask = rle if ann.mask is None else ann.mask | rle
            else:
                ann.fill.append(box)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"COCO annotation file {path}, {where}: malformed 'segmentation' ({exc})") from None
    return ann
