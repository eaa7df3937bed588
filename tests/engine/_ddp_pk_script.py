"""Run by test_batch_sampler.py under ``torchrun --nproc_per_node=2``: the toy method on P×K batches.

Usage: ``_ddp_pk_script.py RUN_DIR OUT_DIR``; each rank saves what it trained on to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.data.pk_sampler import PKBatchSampler  # noqa: E402
from fabml.engine.trainer import Trainer  # noqa: E402


def main() -> None:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = ToyMethod()
    sampler = PKBatchSampler(np.arange(64) % 4, P=2, K=4, seed=0, rank=rank, world_size=world)
    trainer = Trainer(method, toy_config(epochs=2, warmup_epochs=0.5), run_dir, toy_dataset(), batch_sampler=sampler)
    trainer.fit()
    torch.save({"seen": method.seen_indices, "state": method.state_dict(), "steps": trainer.total_steps},
               out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
