"""Retrieval images as tensors: Pillow decoding, RGB, square ``[3, S, S]`` in [0, 1].

Without augmentation an image is stretched to ``S x S`` with Pillow's bilinear filter
(antialiased when shrinking): the same pixels every time. With ``augment`` (a
``RetrievalAugmentConfig`` whose ``enabled`` is true), on the decoded uint8 ``[3, H, W]`` tensor,
with ``torchvision.transforms.v2`` (random numbers from torch's global generator, which the
trainer seeds per epoch and worker, so a resumed run replays them):

1. random resized crop: a crop of area fraction ``s ~ U[crop_scale_min, 1]`` and aspect ratio
   ``r ~ logU[3/4, 4/3]`` of the image, resized to ``S x S`` (bilinear, antialiased);
2. rotation by ``a ~ U[-rotation, rotation]`` degrees about the centre (corners filled black);
3. colour jitter in random order: brightness factor ``U[1-b, 1+b]``, contrast ``U[1-c, 1+c]``,
   saturation ``U[1-s, 1+s]``, hue shift ``U[-h, h]`` (fraction of the hue circle).

Mean/std normalisation is the model's business, not the dataset's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fabml.data.images import open_image, to_8bit
from fabml.data.retrieval_discovery import RetrievalRecord
from fabml.errors import ConfigError


def train_transform(image_size: int, augment: Any) -> Any:
    """The torchvision v2 pipeline of the module doc for uint8 ``[3, H, W]`` -> uint8 ``[3, S, S]``."""
    from torchvision.transforms import v2  # torchvision's import needs fabml's shim (fabml/__init__)

    scale_min = float(augment.crop_scale_min)
    if not 0.0 < scale_min <= 1.0:
        raise ConfigError(f"setting 'augment.crop_scale_min' = {scale_min} must lie in (0, 1]")
    steps: list[Any] = [v2.RandomResizedCrop(image_size, scale=(scale_min, 1.0), antialias=True)]
    if float(augment.rotation) > 0:
        steps.append(v2.RandomRotation(float(augment.rotation)))
    jitter = [float(augment.brightness), float(augment.contrast), float(augment.saturation), float(augment.hue)]
    if any(jitter):
        steps.append(v2.ColorJitter(*jitter))
    return v2.Compose(steps)


class RetrievalImageDataset(Dataset):
    """Item ``i``: ``{"image": float32 [3, S, S] in [0, 1], "label": int64 (position of the record's
    class in ``classes``; -1 for a class not listed), "index": int64 i}``.

    ``labels``: int64 ``[N]`` array of those labels (what :class:`~fabml.data.pk_sampler.PKBatchSampler`
    reads). A corrupt image is a DataError naming its file when it is loaded.
    """

    def __init__(
        self, records: Sequence[RetrievalRecord], classes: Sequence[str], image_size: int, augment: Any | None = None
    ) -> None:
        if int(image_size) < 1:
            raise ConfigError(f"setting 'data.image_size' = {image_size} must be a positive number of pixels")
        self.records = list(records)
        self.classes = list(classes)
        position = {name: i for i, name in enumerate(self.classes)}
        self.labels = np.asarray([position.get(r.label, -1) for r in self.records], dtype=np.int64)
        self.image_size = int(image_size)
        use = augment is not None and bool(getattr(augment, "enabled", True))
        self.transform = train_transform(self.image_size, augment) if use else None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> torch.Tensor:
        """uint8 ``[3, S, S]`` of record ``i`` (augmented when the dataset augments)."""
        img = to_8bit(open_image(self.records[i].path)).convert("RGB")
        size = self.image_size
        if self.transform is None:
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        tensor = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return self.transform(tensor)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.load(i).float().div_(255.0)
        return {"image": image, "label": torch.tensor(self.labels[i], dtype=torch.int64),
                "index": torch.tensor(i, dtype=torch.int64)}
