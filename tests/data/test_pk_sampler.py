"""P×K batch sampler: P classes × K images per batch, every class reached, small classes with
replacement, DDP ranks get their own disjoint batches, deterministic in (seed, epoch, rank)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fabml.data.pk_sampler import PKBatchSampler
from fabml.errors import ConfigError, DataError


def _labels(sizes: list[int]) -> np.ndarray:
    """Class c has sizes[c] items; items of different classes interleaved (not sorted by class)."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    return np.random.default_rng(0).permutation(labels)


def _epoch(sampler: PKBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_batch_has_p_classes_times_k_images() -> None:
    labels = _labels([9, 12, 5, 8, 20, 7])
    sampler = PKBatchSampler(labels, P=3, K=4, seed=1)
    assert sampler.batch_size == 12
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 6  # ceil(61 / 12)
    for batch in batches:
        assert len(batch) == 12
        per_class = Counter(int(labels[i]) for i in batch)
        assert len(per_class) == 3 and set(per_class.values()) == {4}
        for c in per_class:  # classes with >= K images: K distinct images
            assert len({i for i in batch if labels[i] == c}) == 4


def test_p_none_is_every_class_and_small_classes_sample_with_replacement() -> None:
    labels = _labels([1, 2, 6, 10])
    sampler = PKBatchSampler(labels, P=None, K=4, seed=0)
    assert sampler.P == 4 and len(sampler) == 2  # ceil(19 / 16)
    for batch in _epoch(sampler, 0):
        counts = Counter(int(labels[i]) for i in batch)
        assert counts == {0: 4, 1: 4, 2: 4, 3: 4}
        assert {i for i in batch if labels[i] == 0} == set(np.flatnonzero(labels == 0))  # its one image, 4 times
        assert {i for i in batch if labels[i] == 1} == set(np.flatnonzero(labels == 1))  # both images, with repeats


def test_every_class_is_reached_each_epoch_and_images_before_repeats() -> None:
    # 40 classes of 1..9 images, 2 classes per batch: the epoch has at least ceil(40 / 2) batches.
    sizes = [1 + c % 9 for c in range(40)]
    labels = _labels(sizes)
    sampler = PKBatchSampler(labels, P=2, K=4, seed=3)
    assert len(sampler) == max(-(-len(labels) // 8), 20)
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        seen = {int(labels[i]) for b in batches for i in b}
        assert seen == set(range(40))
        # The first ceil(40 / P) batches already visit every class exactly once.
        first = [int(labels[b[0]]) for b in batches[:20]] + [int(labels[b[4]]) for b in batches[:20]]
        assert sorted(first) == list(range(40))
    # A class's images are all used before one repeats (the big classes over one epoch).
    big = PKBatchSampler(_labels([40, 40, 40]), P=1, K=4, seed=0)
    batches = _epoch(big, 0)
    for c in range(3):
        members = set(big.members[c].tolist())
        drawn = [i for b in batches for i in b if i in members]
        assert len(drawn) == len(set(drawn)) == 40  # 10 visits x K=4: each image once


def test_ddp_ranks_get_their_own_disjoint_batches() -> None:
    labels = _labels([16] * 6)
    world = 2
    ranks = [PKBatchSampler(labels, P=3, K=4, seed=7, rank=r, world_size=world) for r in range(world)]
    assert [len(s) for s in ranks] == [4, 4]  # ceil(96 / (12 * 2))
    per_rank = [_epoch(s, 2) for s in ranks]
    flat = [set(i for b in batches for i in b) for batches in per_rank]
    assert flat[0].isdisjoint(flat[1])  # no image on both ranks in an epoch
    assert flat[0] | flat[1] == set(range(96))  # together one pass over the data
    # Each rank's batches are the global epoch's batches b = rank, rank + W, ...
    everything = ranks[0].epoch_batches()
    assert per_rank[0] == everything[0::2] and per_rank[1] == everything[1::2]


def test_batches_are_a_function_of_seed_epoch_and_rank() -> None:
    labels = _labels([7, 9, 11, 4, 6])
    a = PKBatchSampler(labels, P=2, K=3, seed=5, rank=1, world_size=2)
    b = PKBatchSampler(labels, P=2, K=3, seed=5, rank=1, world_size=2)
    assert _epoch(a, 4) == _epoch(b, 4)
    assert _epoch(a, 4) == _epoch(a, 4)  # iterating twice gives the same epoch
    assert _epoch(a, 4) != _epoch(a, 5)
    assert _epoch(a, 4) != _epoch(PKBatchSampler(labels, P=2, K=3, seed=6, rank=1, world_size=2), 4)
    assert _epoch(a, 4) != _epoch(PKBatchSampler(labels, P=2, K=3, seed=5, rank=0, world_size=2), 4)


def test_negative_labels_are_never_sampled_and_settings_are_checked() -> None:
    labels = np.array([0, 0, -1, 1, 1, -1, 2, 2])
    sampler = PKBatchSampler(labels, P=None, K=2, seed=0)
    assert all(labels[i] >= 0 for b in _epoch(sampler, 0) for i in b)
    with pytest.raises(ConfigError, match=r"num_classes_per_batch.*= 4 must lie in 1\.\.3"):
        PKBatchSampler(labels, P=4, K=2)
    with pytest.raises(ConfigError, match="samples_per_class"):
        PKBatchSampler(labels, P=2, K=0)
    with pytest.raises(DataError, match="no labelled image"):
        PKBatchSampler(np.array([-1, -1]), P=None, K=2)
    alone = PKBatchSampler.for_this_process(labels, P=2, K=2, seed=4)  # no torchrun: rank 0 of 1
    assert (alone.rank, alone.world_size, alone.seed) == (0, 1, 4)
