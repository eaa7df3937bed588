"""A random generator per training step whose state lives in the model, so that ``--resume`` is exact.

Methods that draw random numbers inside a training step (synthetic anomalies, teacher sampling,
augmentations done on the batch) own one :class:`StepGenerator`: its seed and step counter are
buffers, saved in every checkpoint with the method's ``state_dict``, so a resumed run draws the
same numbers at step ``n`` as a straight run would.
"""

from __future__ import annotations

import torch
from torch import nn

from fabml.engine.distributed import get_rank


class StepGenerator(nn.Module):
    """A ``torch.Generator`` per training step, seeded from buffers so that resume is exact.

    ``seed`` (-1 until the first step, then ``torch.initial_seed()``, i.e. the trainer's
    ``seed + rank``) and ``step`` are part of the owning method's ``state_dict``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seed", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))

    def next(self) -> torch.Generator:
        """The (CPU) generator of the current step; advances the step counter."""
        if int(self.seed) < 0:
            self.seed.fill_(torch.initial_seed() % 2**62)
        rank = get_rank()  # each torchrun rank draws its own numbers
        mixed = (int(self.seed) * 1_000_003 + int(self.step)) * 1_000_003 + rank
        self.step += 1
        return torch.Generator().manual_seed(mixed % 2**63)
