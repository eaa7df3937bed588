"""Trainer(batch_sampler=...): the loader takes the sampler's batches, epoch by epoch, and a run
stopped inside an epoch resumes exactly where it stopped (the same model as a straight run)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.data.pk_sampler import PKBatchSampler  # noqa: E402
from fabml.engine.trainer import MEASURED_KEYS, Trainer  # noqa: E402
from fabml.errors import ConfigError  # noqa: E402

LABELS = np.arange(64) % 4  # four classes of 16 toy samples
COMMON = dict(epochs=3, t0_epochs=1, warmup_epochs=0.5, grad_clip=1.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread


def _method(seed: int = 0) -> ToyMethod:
    torch.manual_seed(seed)
    return ToyMethod()


def _sampler() -> PKBatchSampler:
    return PKBatchSampler(LABELS, P=2, K=4, seed=0)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in history]


def test_the_loader_yields_the_samplers_batches_of_each_epoch(tmp_path: Path) -> None:
    method = _method()
    sampler = _sampler()
    trainer = Trainer(method, toy_config(**COMMON), tmp_path, toy_dataset(), batch_sampler=sampler)
    assert trainer.batches_per_epoch == 8 and trainer.hardware.per_rank_batch == 8  # 64 / (P*K), not batch_size 16
    result = trainer.fit()
    assert result.epochs_completed == 3 and result.global_step == 24
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected += list(sampler)
    assert method.seen_indices == expected  # set_epoch was called before each epoch
    for batch in method.seen_indices:
        assert sorted(np.bincount(LABELS[batch], minlength=4).tolist()) == [0, 0, 4, 4]  # P=2 classes x K=4


def test_resume_inside_an_epoch_equals_a_straight_run(tmp_path: Path) -> None:
    straight = Trainer(_method(), toy_config(**COMMON), tmp_path / "a", toy_dataset(), batch_sampler=_sampler())
    straight_result = straight.fit()

    first = _method()
    stopped = Trainer(first, toy_config(max_steps=11, **COMMON), tmp_path / "b", toy_dataset(),
                      batch_sampler=_sampler()).fit()
    assert stopped.stopped_reason == "max_steps" and stopped.epochs_completed == 1 and stopped.batches_into_epoch == 3

    method = _method(seed=9)  # everything must come from the checkpoint
    resumed = Trainer(method, toy_config(**COMMON), tmp_path / "b", toy_dataset(), batch_sampler=_sampler())
    result = resumed.fit(resume=True)
    assert first.seen_indices + method.seen_indices == straight.method.seen_indices
    for key, value in straight.method.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key
    assert _strip(result.history) == _strip(straight_result.history)


def test_a_sampler_built_for_another_world_size_is_refused(tmp_path: Path) -> None:
    sampler = PKBatchSampler(LABELS, P=2, K=4, seed=0, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="world size 2, the job runs 1"):
        Trainer(_method(), toy_config(), tmp_path, toy_dataset(), batch_sampler=sampler)
    with pytest.raises(ConfigError, match="needs __iter__, __len__ and set_epoch"):
        Trainer(_method(), toy_config(), tmp_path, toy_dataset(), batch_sampler=[[0, 1], [2, 3]])  # type: ignore[arg-type]


def test_ddp_ranks_train_on_their_own_pk_batches(tmp_path: Path) -> None:
    """Two gloo processes: each trains on its rank's P×K batches (disjoint images), in lockstep."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).resolve().parent / "_ddp_pk_script.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(tmp_path / "run"), str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["steps"] == 2 * 4  # ceil(64 / (P*K * 2 ranks)) = 4 batches per rank and epoch
    for epoch in range(2):
        sampler = PKBatchSampler(LABELS, P=2, K=4, seed=0, world_size=2)
        sampler.set_epoch(epoch)
        everything = sampler.epoch_batches()
        mine = [r["seen"][4 * epoch: 4 * epoch + 4] for r in ranks]
        assert mine[0] == everything[0::2] and mine[1] == everything[1::2]
        images = [{i for b in batches for i in b} for batches in mine]
        assert images[0].isdisjoint(images[1]) and images[0] | images[1] == set(range(64))
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_a_sampler_factory_gets_this_process_rank_and_world_size(tmp_path: Path) -> None:
    calls = []

    def factory(rank: int, world_size: int) -> PKBatchSampler:
        calls.append((rank, world_size))
        return PKBatchSampler(LABELS, P=2, K=4, seed=0, rank=rank, world_size=world_size)

    trainer = Trainer(_method(), toy_config(**COMMON), tmp_path, toy_dataset(), batch_sampler=factory)
    assert calls == [(0, 1)] and isinstance(trainer.batch_sampler, PKBatchSampler)
    assert trainer.batches_per_epoch == 8
