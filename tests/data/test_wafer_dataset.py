"""Resize invariants, channel selection and the precomputed wafer tensor dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fabml.data.synthetic_wafer import generate_wafer_maps
from fabml.data.wafer_dataset import WaferDataConfig, WaferTensorDataset, resize_wafer, select_channels
from fabml.data.wafer_io import WaferMap
from fabml.errors import ConfigError, DataError


def test_single_failed_die_survives_downscaling():
    dies = np.ones((200, 200), dtype=np.uint8)
    dies[123, 57] = 2
    x = resize_wafer(dies, 32)
    assert x.shape == (2, 32, 32) and x.dtype == torch.float32
    hits = torch.nonzero(x[0]).tolist()
    # adaptive pooling cells overlap by at most one die, so the die lands in 1 to 4 cells around 32 * 123 / 200
    assert 1 <= len(hits) <= 4
    assert all(abs(r - 123 * 32 / 200) < 1.5 and abs(c - 57 * 32 / 200) < 1.5 for r, c in hits)
    assert torch.all(x[1] == 1)


def test_downscale_is_block_max_and_upscale_replicates():
    dies = np.array([[0, 0, 1, 1], [0, 1, 1, 2], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=np.uint8)
    x = resize_wafer(dies, 2)
    assert torch.equal(x[0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # the one failed die is in the top-right block
    assert torch.equal(x[1], torch.ones(2, 2))
    up = resize_wafer(dies, 8)
    assert torch.equal(up[0], torch.from_numpy(np.kron(dies == 2, np.ones((2, 2)))).float())
    assert torch.equal(up[1], torch.from_numpy(np.kron(dies > 0, np.ones((2, 2)))).float())


def test_non_square_grid_and_fail_inside_wafer():
    for wafer in generate_wafer_maps(18, seed=2, grid_range=(20, 70)):
        x = resize_wafer(wafer.dies, 48)
        assert x.shape == (2, 48, 48)
        assert torch.all(x[0] <= x[1])  # a failed die is always a die
        assert (x[0].sum() > 0) == bool((wafer.dies == 2).any())
    tall = np.ones((70, 20), dtype=np.uint8)  # rows downscaled, columns upscaled
    tall[69, 0] = 2
    x = resize_wafer(tall, 40)
    assert x[0].sum() >= 1 and x[0, 39, 0] == 1


def test_select_channels():
    batch = torch.rand(3, 2, 8, 8)
    assert select_channels(batch, False).shape == (3, 1, 8, 8)
    assert torch.equal(select_channels(batch, False)[:, 0], batch[:, 0])
    assert select_channels(batch, True) is batch
    assert select_channels(batch[0], False).shape == (1, 8, 8)
    with pytest.raises(DataError, match=r"got \(3, 3, 8, 8\)"):
        select_channels(torch.rand(3, 3, 8, 8), True)


def test_dataset_matches_per_map_resize_and_collates():
    maps = generate_wafer_maps(30, seed=4, grid_range=(25, 34))
    ds = WaferTensorDataset(maps, size=32)
    assert len(ds) == 30 and ds.tensors.shape == (30, 2, 32, 32) and ds.tensors.dtype == torch.uint8
    assert ds.meta[7] is maps[7].meta
    for i in (0, 7, 29):
        x, index = ds[i]
        assert index == i and x.dtype == torch.float32
        assert torch.equal(x, resize_wafer(maps[i].dies, 32))
    x, index = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert x.shape == (8, 2, 32, 32) and index.dtype == torch.int64 and index.tolist() == list(range(8))


def test_dataset_bad_inputs():
    with pytest.raises(DataError, match="no wafer maps"):
        WaferTensorDataset([], size=16)
    bad = WaferMap(np.full((5, 5), 128, dtype=np.uint8), {"id": "raw-128"})
    with pytest.raises(DataError, match="wafer map raw-128: values above 2"):
        WaferTensorDataset([bad], size=16)
    with pytest.raises(ConfigError, match="data.size"):
        WaferTensorDataset(generate_wafer_maps(1), size=0)


def test_config_defaults():
    cfg = WaferDataConfig()
    assert (cfg.size, cfg.outline_channel, cfg.limit) == (128, False, 0)
