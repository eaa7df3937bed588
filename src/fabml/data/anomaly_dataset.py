"""The anomaly job's dataset: image records -> normalised image, mask, label and index tensors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fabml.data.annotations import Box, read_annotation, spec_format
from fabml.data.anomaly_discovery import ImageRecord
from fabml.data.reference_view import reference_on_image
from fabml.data.images import check_channels, check_size, decode_image, detect_channels, mask_from_image, open_image
from fabml.errors import ConfigError, DataError


class AnomalyImageDataset(Dataset):
    """Records -> dict(image ``[C,H,W]`` float32 in [0,1], mask ``[1,H,W]`` float32 {0,1},
    label int64, index int64).

    Images are stretched to ``image_size`` (H, W) with Pillow's bilinear filter (aspect ratio not
    kept). The mask is zeros for normal images and images without a mask file. A ``mask_path``
    naming an annotation file (boxes, polygons, a .mat mask; :mod:`fabml.data.annotations`) is
    drawn at ``image_size``: boxes scaled with the image, stored masks resized nearest-neighbour;
    :meth:`boxes` gives its boxes at that size. ``channels`` 0
    detects 1 or 3 from the records. ``cache=True`` keeps each decoded, resized image as uint8
    after its first use (call :meth:`preload` to fill it in the main process; DataLoader workers
    each hold their own copy, which only persists with ``persistent_workers=True``).

    Reference mode (records with a ``reference``): ``image`` is ``[2C, H, W]``, the test image's
    ``C`` channels then those of its reference aligned and light-matched onto it
    (:func:`fabml.data.reference_view.reference_on_image`, rotations within ``align_max_angle``
    degrees); :attr:`alignments` keeps, per index read in this process, the test image's offset
    from its reference (``align_dx``, ``align_dy`` in pixels at ``image_size``, ``align_angle_deg``), the
    ``residual_px`` misalignment and the ``align_coverage`` (the predictions table's column names).
    """

    def __init__(
        self, records: Sequence[ImageRecord], image_size: Sequence[int] = (256, 256), channels: int = 0,
        cache: bool = False, align_max_angle: float = 2.0,
    ) -> None:
        self.records = list(records)
        self.image_size = check_size(image_size)
        check_channels(channels, allow_auto=True)
        self.channels = channels or detect_channels(self.records)
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.align_max_angle = float(align_max_angle)
        self.alignments: dict[int, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rec = self.records[index]
        img = open_image(rec.path)
        pixels = decode_image(img, self.channels, self.image_size).transpose(2, 0, 1)
        if rec.reference:
            ref = decode_image(open_image(rec.reference), self.channels, self.image_size).transpose(2, 0, 1)
            view = reference_on_image(pixels, ref, self.align_max_angle)
            self.alignments[index] = {"align_dx": view.offset.dx, "align_dy": view.offset.dy,
                                      "align_angle_deg": view.offset.angle_deg, "residual_px": view.residual_px,
                                      "align_coverage": view.coverage}
            pixels = np.concatenate([pixels, view.reference])
        image = torch.from_numpy(pixels.copy())
        if rec.label == 0 or not rec.mask_path:
            return image, None
        if spec_format(rec.mask_path) != "masks":
            ann = read_annotation(rec.mask_path, (img.size[1], img.size[0]))
            return image, torch.from_numpy(ann.rasterise(self.image_size).astype(np.uint8))[None]
        mask_img = open_image(rec.mask_path)
        (w, h), (mw, mh) = img.size, mask_img.size
        if abs(w * mh - h * mw) > 0.01 * w * mh:  # aspect ratios differ by more than 1 %
            raise DataError(f"mask {rec.mask_path} is {mw}x{mh} but its image {rec.path} is {w}x{h}")
        return image, torch.from_numpy(mask_from_image(mask_img, self.image_size).astype(np.uint8))[None]

    def boxes(self, index: int) -> list[Box]:
        """The annotated boxes of image ``index`` in pixels of ``image_size`` (scaled with the image);
        [] for normal images, images without annotations and pixel masks."""
        rec = self.records[index]
        if rec.label == 0 or not rec.mask_path or spec_format(rec.mask_path) == "masks":
            return []
        w, h = open_image(rec.path).size
        out_h, out_w = self.image_size
        return [b.scaled(out_w / w, out_h / h) for b in read_annotation(rec.mask_path, (h, w)).boxes]

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
