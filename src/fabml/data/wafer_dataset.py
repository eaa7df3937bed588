"""Wafer maps as fixed-size tensors: the resize that keeps single failed dies, and the dataset.

A map [H, W] coded 0/1/2 becomes ``[2, S, S]``: channel 0 = failed-die indicator, channel 1 =
wafer (die present) indicator, both 0/1. Downscaling takes the max over each output cell
(``adaptive_max_pool2d``), so one failed die always survives; upscaling replicates dies
(nearest-exact). Non-square die grids are stretched to the square, as usual for WM-811K.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fabml.data.wafer_io import WaferMap
from fabml.errors import ConfigError, DataError

_CHUNK_ELEMENTS = 1 << 22  # dies per pooling call: ~32 MB of float32 indicators, 2 channels


@dataclass
class WaferDataConfig:
    """How maps become model input: side ``size`` in pixels, outline channel shown or not, map limit."""

    size: int = 128
    outline_channel: bool = False  # False: the model sees channel 0 (failed dies) only
    limit: int = 0  # 0 = all maps


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output cell for nearest(-exact) upscaling: floor((j + 0.5) * n_in / n_out)."""
    return ((2 * torch.arange(n_out) + 1) * n_in) // (2 * n_out)


def _resize_codes(codes: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 codes [n, H, W] (0/1/2) -> uint8 indicators [n, 2, size, size] (fail, wafer)."""
    _, height, width = codes.shape
    if height < size:
        codes = codes.index_select(1, _nearest_index(height, size))
    if width < size:
        codes = codes.index_select(2, _nearest_index(width, size))
    if codes.shape[1:] != (size, size):
        # Codes are ordered 2 > 1 > 0, so the max code of a cell gives both "any failed die" and
        # "any die": one pooling of the codes serves both channels.
        codes = F.adaptive_max_pool2d(codes.float(), size).to(torch.uint8)
    return torch.stack((codes == 2, codes > 0), dim=1).to(torch.uint8)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.size must be a positive integer, got {size!r}")


def resize_wafer(dies: np.ndarray, size: int) -> torch.Tensor:
    """One map [H, W] coded 0/1/2 -> float32 [2, size, size] (channel 0 fail, channel 1 wafer)."""
    _check_size(size)
    dies = np.asarray(dies)
    if dies.ndim != 2 or dies.size == 0 or int(dies.max()) > 2 or int(dies.min()) < 0:
        raise DataError(f"resize_wafer expects a non-empty 2-D map coded 0/1/2, got shape {dies.shape}")
    codes = torch.from_numpy(np.ascontiguousarray(dies, dtype=np.uint8))[None]
    return _resize_codes(codes, size)[0].float()


def prepare_wafer_tensors(dies_list: list[np.ndarray], size: int, names: list[str] | None = None) -> torch.Tensor:
    """Resize many maps at once -> uint8 [N, 2, size, size].

    Maps of one shape are stacked and pooled together in chunks (WM-811K has ~340 shapes
    for 62k maps), which is what makes 40k maps take seconds rather than minutes.
    ``names`` (map ids) only serve error messages.
    """
    _check_size(size)
    out = torch.empty((len(dies_list), 2, size, size), dtype=torch.uint8)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, dies in enumerate(dies_list):
        groups[np.shape(dies)].append(i)
    for shape, indices in groups.items():
        if len(shape) != 2 or 0 in shape:
            name = names[indices[0]] if names else indices[0]
            raise DataError(f"wafer map {name}: shape {shape}, expected a non-empty 2-D map")
        step = max(1, _CHUNK_ELEMENTS // (shape[0] * shape[1]))
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            stacked = np.stack([dies_list[i] for i in chunk]).astype(np.uint8, copy=False)
            if int(stacked.max()) > 2:
                bad = next(i for i in chunk if int(np.max(dies_list[i])) > 2)
                raise DataError(f"wafer map {names[bad] if names else bad}: values above 2; code it 0/1/2")
            out[chunk] = _resize_codes(torch.from_numpy(stacked), size)
    return out


def select_channels(x: torch.Tensor, outline_channel: bool) -> torch.Tensor:
    """[B, 2, S, S] or [2, S, S] -> channel 0 only ([.., 1, S, S]) unless ``outline_channel``."""
    if x.dim() not in (3, 4) or x.shape[-3] != 2:
        raise DataError(f"select_channels expects [B, 2, S, S] or [2, S, S] (fail, wafer), got {tuple(x.shape)}")
    return x if outline_channel else x[..., :1, :, :]


class WaferTensorDataset(Dataset):
    """All maps resized once at construction into one uint8 tensor [N, 2, S, S].

    ``dataset[i]`` is ``(x float32 [2, S, S], i)``; the default collate makes batches
    ``(x [B, 2, S, S], index [B] int64)``. Metadata stays in ``dataset.meta`` (a list of dicts,
    joined by index).
    """

    def __init__(self, maps: list[WaferMap], size: int = 128):
        if not maps:
            raise DataError("no wafer maps to build a dataset from: the source is empty (check the path and limit)")
        self.size = size
        self.meta = [m.meta for m in maps]
        self.shapes = [tuple(m.dies.shape) for m in maps]  # original die-grid shape (rows, cols) per map
        self._tensors = prepare_wafer_tensors([m.dies for m in maps], size, [str(m.meta.get("id")) for m in maps])

    @property
    def tensors(self) -> torch.Tensor:
        """uint8 [N, 2, S, S]: channel 0 failed dies, channel 1 wafer, values 0/1."""
        return self._tensors

    def __len__(self) -> int:
        return self._tensors.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._tensors[i].float(), i
