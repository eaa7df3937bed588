"""P×K batches: each batch holds K images of each of P classes (what a metric-learning loss needs).

:class:`PKBatchSampler` yields lists of dataset indices for ``DataLoader(batch_sampler=...)``.

Epoch layout (``N`` labelled images, ``C`` classes, ``W`` ranks): an epoch has
``L = max(ceil(N / (P K W)), ceil(C / (P W)))`` batches per rank, i.e. about one pass over the
images and at least one visit of every class. One generator ``numpy.random.default_rng([seed,
epoch])``, the same on every rank, draws the ``L W`` batches of the whole epoch:

- **Classes**: the P classes of each batch are the next P distinct ones of a stream of random
  permutations of the C classes (a class repeated across a permutation boundary waits for the next
  batch). So the first ``ceil(C / P)`` batches visit every class, and class visits stay balanced.
- **Images**: each class keeps a stream of random permutations of its images and takes its next K
  distinct ones, so a class's images are all used before any repeats. A class with ``n < K``
  images contributes all n plus ``K - n`` drawn with replacement from them (shuffled).
- **Ranks**: global batch ``b`` goes to rank ``b mod W``: each rank gets its own batches, and
  images are distinct between ranks until a class's image stream wraps.

The batches are a function of ``(seed, epoch, rank, world_size)`` and the labels only, so a run
resumed inside an epoch replays the same order (the trainer calls :meth:`set_epoch`). Indices with
a negative label (a class outside the split's class list) are never sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Sequence

import numpy as np
from torch.utils.data import Sampler

from fabml.errors import ConfigError, DataError


def _take_distinct(queue: list[int], n: int, refill: Callable[[], Sequence[int]]) -> list[int]:
    """The first ``n`` distinct values of ``queue`` (refilled from ``refill()``, which gives at least
    ``n`` distinct values, while it holds fewer); they are removed from ``queue`` and the skipped
    duplicates keep their places."""
    if len(queue) < n:
        queue.extend(int(v) for v in refill())
    if len(set(queue[:n])) == n:  # the usual case: the head is distinct
        head = queue[:n]
        del queue[:n]
        return head
    while len(set(queue)) < n:
        queue.extend(int(v) for v in refill())
    chosen: list[int] = []
    rest: list[int] = []
    for value in queue:
        if len(chosen) < n and value not in chosen:
            chosen.append(value)
        else:
            rest.append(value)
    queue[:] = rest
    return chosen


class PKBatchSampler(Sampler[list[int]]):
    """Batches of P classes × K images (``P=None``: every class in every batch); see the module doc.

    ``labels``: int ``[N]`` class index per dataset item (negative = never sampled); ``seed``: the
    run's seed; ``rank`` / ``world_size``: this process's place in a DDP job (``len(self)`` is the
    number of batches of this rank per epoch; each holds ``batch_size = P * K`` indices).
    """

    def __init__(
        self, labels: np.ndarray | Sequence[int], P: int | None, K: int, seed: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = np.unique(labels[labels >= 0])
        if len(self.classes) == 0:
            raise DataError("the P×K sampler got no labelled image (every label is negative or the set is empty)")
        count = len(self.classes)
        if int(K) < 1:
            raise ConfigError(f"setting 'sampler.samples_per_class' (K) = {K} must be at least 1")
        P = count if P is None else int(P)
        if not 1 <= P <= count:
            raise ConfigError(
                f"setting 'sampler.num_classes_per_batch' (P) = {P} must lie in 1..{count} (the training set's "
                "classes); set it to null for all classes"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"PKBatchSampler: rank {rank} is not in 0..{world_size - 1}")
        self.P, self.K, self.seed, self.rank, self.world_size = P, int(K), int(seed), int(rank), int(world_size)
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        self.num_samples = int(sum(len(m) for m in self.members))
        per_rank = self.P * self.K * self.world_size
        self.batches_per_rank = max(math.ceil(self.num_samples / per_rank), math.ceil(count / (self.P * self.world_size)))
        self.epoch = 0

    @classmethod
    def for_this_process(
        cls, labels: np.ndarray | Sequence[int], P: int | None, K: int, seed: int = 0
    ) -> PKBatchSampler:
        """The sampler of this process: rank and world size from torchrun's process group
        (:func:`fabml.engine.distributed.init_distributed`, joined here if it is not yet; rank 0 of
        1 in a single process)."""
        from fabml.engine.distributed import init_distributed

        info = init_distributed()
        return cls(labels, P, K, seed, rank=info.rank, world_size=info.world_size)

    @property
    def batch_size(self) -> int:
        """Indices per batch on one rank: P × K."""
        return self.P * self.K

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_rank

    def epoch_batches(self) -> list[list[int]]:
        """All ``len(self) * world_size`` batches of the current epoch, every rank's (global order)."""
        rng = np.random.default_rng([self.seed % 2**63, self.epoch])
        count = len(self.classes)
        class_queue: list[int] = []
        image_queues: list[list[int]] = [[] for _ in range(count)]
        batches = []
        for _ in range(self.batches_per_rank * self.world_size):
            batch: list[int] = []
            for c in _take_distinct(class_queue, self.P, lambda: rng.permutation(count)):
                members = self.members[c]
                if len(members) >= self.K:
                    batch += _take_distinct(image_queues[c], self.K, lambda: rng.permutation(members))
                else:  # all of them, topped up with replacement
                    picks = np.concatenate([members, rng.choice(members, self.K - len(members))])
                    batch += [int(v) for v in rng.permutation(picks)]
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.rank::self.world_size]
