"""Tiny surrogate settings and generated data shared by the job's method, pipeline, CLI and DDP tests.

24 generated advection-diffusion cases (T = 8, M = 32, V = 1), a two-stage VAE with narrow filters, a small
MLP / CNN conditioner, batch 8, two epochs per mode: each mode trains in about a second on one core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fabml.config import load_config
from fabml.data.synthetic_simulation import SyntheticSimulation, make_synthetic_simulation
from fabml.surrogate.config import SurrogateConfig

N_CASES, TIME_STEPS, NODES = 24, 8, 32
TINY = [
    "vae.filters=[16,8]", "conditioner.hidden=16", "conditioner.blocks=1", "conditioner.patch_size=8",
    "data.image_size=16", "data.val_fraction=0.25", "data.test_fraction=0.25",
    *(f"train_{mode}.{key}" for mode in ("vae", "conditioner", "e2e")
      for key in ("epochs=2", "batch_size=4", "lr=2e-3", "device=cpu", "num_workers=0", "precision=fp32")),
]


def make_tiny_data(folder: Path) -> SyntheticSimulation:
    """The generated cases (fields.npy, params.csv, images/) in ``folder``."""
    return make_synthetic_simulation(folder, n_cases=N_CASES, time_steps=TIME_STEPS, nodes=NODES, image_size=16,
                                     seed=0)


def tiny_config(data: SyntheticSimulation, images: bool = False, extra: list[str] | None = None) -> SurrogateConfig:
    """The tiny settings on ``data`` (parameter CSV, or the image folder when ``images``)."""
    inputs = data.images_dir if images else data.params_csv
    return load_config(SurrogateConfig, None, [*TINY, f"data.fields={data.fields}", f"data.inputs={inputs}",
                                               *(extra or [])])


def crash_at_step(n: int) -> Callable[..., dict]:
    """A ``SurrogateMethod.training_step`` that raises ``RuntimeError("simulated crash")`` at its ``n``-th call
    (a killed run: patch it in, train, patch the real one back and train again to resume)."""
    from fabml.surrogate.method import SurrogateMethod

    real = SurrogateMethod.training_step
    calls = {"n": 0}

    def step(self: SurrogateMethod, batch: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return real(self, batch)

    return step
