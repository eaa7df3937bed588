"""Case splits, lazy vs preloaded datasets, the preload decision and the latent dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fabml.data.simulation_dataset import (
    LatentDataset,
    SimulationDataset,
    decide_preload,
    inputs_array,
    read_case_split,
    split_cases,
    write_case_split,
)
from fabml.data.simulation_inputs import match_cases, read_inputs
from fabml.data.simulation_io import open_fields
from fabml.data.simulation_scaler import FieldScaler, ParamScaler
from fabml.data.synthetic_simulation import make_synthetic_simulation
from fabml.errors import ConfigError, DataError
from fabml.surrogate.config import SurrogateDataConfig


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_simulation(tmp_path_factory.mktemp("sim"), n_cases=20, time_steps=6, nodes=16,
                                     variables=2, image_size=16)


def test_split_is_seeded_disjoint_and_complete() -> None:
    split = split_cases(50, 0.1, 0.2, seed=3)
    assert [len(split[p]) for p in ("train", "val", "test")] == [35, 5, 10]
    joined = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(joined.tolist()) == list(range(50))
    again = split_cases(50, 0.1, 0.2, seed=3)
    assert all(np.array_equal(split[p], again[p]) for p in split)
    other = split_cases(50, 0.1, 0.2, seed=4)
    assert not np.array_equal(split["train"], other["train"])
    small = split_cases(3, 0.1, 0.1, seed=0)  # every part with a share gets a case
    assert all(len(small[p]) == 1 for p in small)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_cases(10, 0.6, 0.5, seed=0)


def test_split_files_round_trip_and_refuse_changed_data(tmp_path: Path) -> None:
    split = split_cases(12, 0.25, 0.25, seed=0)
    ids = np.arange(100, 112)
    folder = write_case_split(split, tmp_path, ids)
    assert sorted(p.name for p in folder.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    assert (folder / "val.csv").read_text().splitlines()[0] == "index,case_id"
    back = read_case_split(tmp_path, ids)
    assert all(np.array_equal(back[p], split[p]) for p in split)
    with pytest.raises(DataError, match="case ids of index.*differ.*--fresh"):
        read_case_split(tmp_path, np.arange(12))
    with pytest.raises(DataError, match="outside the 5 cases"):
        read_case_split(tmp_path, np.arange(100, 105))
    (folder / "test.csv").write_text(f"index,case_id\n{split['train'][0]},{100 + split['train'][0]}\n")
    with pytest.raises(DataError, match="also in train"):
        read_case_split(tmp_path)
    (folder / "val.csv").unlink()
    with pytest.raises(DataError, match="val.csv does not exist"):
        read_case_split(tmp_path)


def _datasets(synthetic, inputs_path: Path, preload_flags=(False, True), **kw):
    cfg = SurrogateDataConfig(fields=str(synthetic.fields), inputs=str(inputs_path), image_size=16, **kw)
    source = open_fields(cfg)
    inputs = read_inputs(cfg)
    rows = match_cases(source, inputs)
    split = split_cases(len(source), 0.2, 0.2, seed=0)
    fscaler = FieldScaler.fit(source, split["train"], cfg.scale_range)
    pscaler = ParamScaler.fit(inputs.params, rows[split["train"]]) if inputs.kind == "params" else None
    return [
        SimulationDataset(source, inputs, rows, split["train"], fscaler, pscaler, 16, 1, preload=flag)
        for flag in preload_flags
    ]


@pytest.mark.parametrize("which", ["params", "images"])
def test_lazy_and_preloaded_give_the_same_batches(synthetic, which: str) -> None:
    path = synthetic.params_csv if which == "params" else synthetic.images_dir
    lazy, pre = _datasets(synthetic, path, time_stride=2)
    assert lazy.field_shape == pre.field_shape == (2, 3, 16)
    torch.manual_seed(0)
    lazy_batches = list(DataLoader(lazy, batch_size=4, shuffle=True))
    torch.manual_seed(0)
    pre_batches = list(DataLoader(pre, batch_size=4, shuffle=True))
    assert len(lazy_batches) == len(pre_batches) == 3
    for a, b in zip(lazy_batches, pre_batches):
        assert a.keys() == b.keys() == {"field", "inputs", "index"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
    batch = lazy_batches[0]
    assert batch["field"].dtype == torch.float32 and batch["index"].dtype == torch.int64
    assert batch["field"].abs().max() <= 0.7 + 1e-6  # training cases scaled to [-0.7, 0.7]
    assert batch["inputs"].shape[1:] == ((5,) if which == "params" else (1, 16, 16))


def test_item_is_the_scaled_case_channel_first(synthetic) -> None:
    (lazy,) = _datasets(synthetic, synthetic.params_csv, preload_flags=(False,))
    item = lazy[2]
    i = int(item["index"])
    raw = np.load(synthetic.fields)[i]  # [T, M, V]
    expected = lazy.field_scaler.transform(raw).transpose(2, 0, 1)
    np.testing.assert_allclose(item["field"].numpy(), expected, atol=1e-7)


def test_lazy_dataset_works_in_dataloader_workers(synthetic) -> None:
    lazy, pre = _datasets(synthetic, synthetic.params_csv)
    lazy.source.get(0)  # the parent has the file open; workers reopen their own
    got = list(DataLoader(lazy, batch_size=5, num_workers=2))
    want = list(DataLoader(pre, batch_size=5))
    for a, b in zip(got, want):
        assert torch.equal(a["field"], b["field"]) and torch.equal(a["index"], b["index"])


def test_decide_preload(synthetic) -> None:
    source = open_fields(SurrogateDataConfig(fields=str(synthetic.fields)))
    nbytes = source.nbytes  # 20 * 6 * 16 * 2 * 4
    assert nbytes == 15360
    for value, budget, want in [("auto", 1.0, True), ("auto", nbytes / 1e9 * 0.5, False), ("true", 0.0, True),
                                ("false", 100.0, False), ("True", 0.0, True)]:
        assert decide_preload(SurrogateDataConfig(load_all=value, memory_budget_gb=budget), source) is want
    with pytest.raises(ConfigError, match="data.load_all"):
        decide_preload(SurrogateDataConfig(load_all="sometimes"), source)


def test_latent_dataset_items_and_inputs_array(synthetic) -> None:
    cfg = SurrogateDataConfig(fields=str(synthetic.fields), inputs=str(synthetic.images_dir))
    source, inputs = open_fields(cfg), read_inputs(cfg)
    rows = match_cases(source, inputs)
    z = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)
    xs = np.arange(20 * 3 * 2, dtype=np.float32).reshape(20, 3, 2)
    data = LatentDataset(inputs, rows, [5, 7], z, xs, None, 16, 1)
    item = data[1]
    assert int(item["index"]) == 7
    assert torch.equal(item["z"], torch.from_numpy(z[7])) and torch.equal(item["xs"], torch.from_numpy(xs[7]))
    assert item["inputs"].shape == (1, 16, 16)
    arr = inputs_array(inputs, None, 16, 1, rows=[rows[7]])
    assert torch.equal(item["inputs"], torch.from_numpy(arr[0]))
    with pytest.raises(DataError, match="saved latents"):
        LatentDataset(inputs, rows, [0], z[:5], xs, None, 16, 1)
