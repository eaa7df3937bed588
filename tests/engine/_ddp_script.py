"""Run by test_ddp.py under ``torchrun --nproc_per_node=2``: trains the toy method with DDP on gloo.

Usage: ``_ddp_script.py RUN_BASE OUT_DIR``. Each rank trains into ``RUN_BASE/rank{r}``
(so a write by rank 1 would be visible) and saves what the test checks to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy import ToyMethod, toy_config, toy_dataset  # noqa: E402

from fabml.engine import distributed  # noqa: E402
from fabml.engine.trainer import Trainer  # noqa: E402


class FrozenFirstEpoch(ToyMethod):
    """The first layer is frozen in epoch 0 and trains from epoch 1 (DDP must be rebuilt then)."""

    def __init__(self) -> None:
        super().__init__()
        self.first_layer: list[torch.Tensor] = []

    def frozen_prefixes(self, epoch: int) -> set[str]:
        return {"net.0"} if epoch < 1 else set()

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.first_layer.append(self.net[0].weight.detach().clone())
        return super().on_epoch_end(epoch)


def main() -> None:
    run_base, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's weights
    method = FrozenFirstEpoch()
    init_first = method.net[0].weight.detach().clone()
    validate_calls = []

    def validate(m: ToyMethod) -> dict[str, float]:
        validate_calls.append(1)
        return {"val_loss": 1.0 / (len(validate_calls) + 1)}

    cfg = toy_config(epochs=2, batch_size=16, monitor="val_loss", warmup_epochs=0.5)
    trainer = Trainer(method, cfg, run_base / f"rank{rank}", toy_dataset(), validate=validate)
    result = trainer.fit()
    torch.save(
        {
            "state": method.state_dict(),
            "per_rank_batch": trainer.per_rank_batch_size,
            "world_size": trainer.dist.world_size,
            "total_steps": trainer.total_steps,
            "seen": method.seen_indices,
            "history": result.history,
            "validate_calls": len(validate_calls),
            "best_epoch": result.best_epoch,
            "init_first": init_first,
            "first_layer": method.first_layer,
        },
        out_dir / f"rank{rank}.pt",
    )
    distributed.cleanup()


if __name__ == "__main__":
    main()
