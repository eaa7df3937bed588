"""Image and mask decoding with Pillow: 8/16-bit and float gray, RGB, masks thresholded at > 127.

``torchvision.io`` does not work with the CPU torch build, so everything goes through Pillow.
EXIF orientation is ignored so that an image and its mask stay aligned pixel for pixel.
Resizing does not keep the aspect ratio: an image is stretched to the requested (H, W).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from fabml.errors import ConfigError, DataError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def open_image(path: str) -> Image.Image:
    """The decoded Pillow image of ``path``; a missing or unreadable file is a DataError naming it."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from None
    return img


def to_8bit(img: Image.Image) -> Image.Image:
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


def is_gray(img: Image.Image) -> bool:
    """A gray mode, or RGB whose three channels are equal everywhere."""
    if img.mode in GRAY_MODES:
        return True
    arr = np.asarray(img.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def check_channels(channels: int, allow_auto: bool) -> None:
    """ConfigError unless ``channels`` is 1 or 3 (or 0 = auto when ``allow_auto``)."""
    if channels not in ((0, 1, 3) if allow_auto else (1, 3)):
        raise ConfigError(f"setting 'channels' = {channels!r} must be {'0 (auto), ' if allow_auto else ''}1 or 3")


def check_size(size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from two positive integers; ConfigError otherwise."""
    if len(size) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in size):
        raise ConfigError(f"setting 'image_size' = {list(size)!r} must be two positive integers [H, W]")
    return int(size[0]), int(size[1])


def decode_image(img: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 ``[H, W, channels]`` of an opened image, bilinearly resized to ``size`` = (H, W) when given."""
    img = to_8bit(img).convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image(path: str, channels: int, size: Sequence[int] | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 ``[H, W, channels]`` (1 = luma, 3 = RGB; alpha dropped).

    ``size`` = (H, W) resizes with Pillow's bilinear filter (antialiased when shrinking).
    An unreadable or corrupt file raises :class:`DataError` naming it.
    """
    check_channels(channels, allow_auto=False)
    return decode_image(open_image(path), channels, check_size(size) if size is not None else None)


def mask_from_image(img: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """float32 ``[H, W]`` in {0, 1} of an opened mask image (the rule of :func:`load_mask`)."""
    arr = np.asarray(to_8bit(img).convert("L" if img.mode in GRAY_MODES else "RGB"), dtype=np.float32)
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
    return mask_from_image(open_image(path), check_size(size) if size is not None else None)


def detect_channels(records: Sequence[Any], sample: int = 16) -> int:
    """1 if every sampled image (up to ``sample``, evenly spread over ``records``, anything with a
    ``path``) is grayscale — a gray mode, or RGB with three equal channels — else 3."""
    if not records:
        raise DataError("cannot detect the channel count from an empty image list; set 'channels' to 1 or 3")
    picks = sorted({int(i) for i in np.linspace(0, len(records) - 1, min(len(records), max(sample, 1))).round()})
    return 1 if all(is_gray(open_image(records[i].path)) for i in picks) else 3
