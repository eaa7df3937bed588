"""A parametric physics family for the surrogate job's demo and tests: 1-D advection–diffusion in a rod.

Each case solves, on x in [0, 1] and t in (0, t_end], for each variable v = 0..V-1,

    du/dt + c du/dx = d/dx( k_v(x) du/dx ),   u(x, 0) = 0,   u(0, t) = T_L,   u(1, t) = 0,

with a conductivity that has a bump (a thicker section of the rod):

    k_v(x) = 2**v * k0 * (1 + contrast * exp(-((x - x_b) / 0.08)**2)).

The five parameters per case are drawn uniformly: boundary temperature T_L in [0.5, 1.5],
velocity c in [0, 1], base conductivity k0 in [0.01, 0.04], bump position x_b in [0.3, 0.7]
and bump contrast in [0, 3]. Variable v > 0 is the same problem with a 2**v times more
conductive material (a second "species"), so V variables share the parameters.

Scheme: finite volumes on M cells (cell centres x_j = (j + 1/2) / M), upwind advection, central
diffusion with harmonic-mean face conductivities, boundary values imposed at the faces, implicit
Euler in time (unconditionally stable and monotone: u stays within [0, T_L]). Four sub-steps per
output step; the T outputs are at t_k = t_end (k + 1) / T with t_end = 1. One sparse LU per case
and variable.

Each case also gets a rendered geometry / boundary image (grey PNG, ``image_size`` square): the
rod drawn as a horizontal band whose thickness follows k(x) / max k (so it shows k0, x_b and the
contrast), whose brightness is T_L / 1.5, and below it a bar whose length is c (in [0, 1]) times the
width (the flow). The image determines the parameters, so a CNN/ViT conditioner can learn the
field from it.

Outputs in ``out_dir``: ``fields.npy`` float32 ``[N, T, M, V]`` (written case by case),
``params.csv`` (``case_id`` + the five parameters), ``images/param_000.png`` ... (case id = the
number in the name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image
from scipy.sparse.linalg import splu

from fabml.data.simulation_io import NpyCaseWriter
from fabml.errors import ConfigError

PARAMETERS = {  # name: (low, high)
    "boundary_temperature": (0.5, 1.5),
    "velocity": (0.0, 1.0),
    "conductivity": (0.01, 0.04),
    "bump_position": (0.3, 0.7),
    "bump_contrast": (0.0, 3.0),
}
BUMP_WIDTH = 0.08
T_END = 1.0
SUBSTEPS = 4


@dataclass
class SyntheticSimulation:
    """Paths of a generated dataset: ``fields`` (.npy [N, T, M, V]), ``params_csv`` (case_id +
    parameters), ``images_dir`` (param_000.png ...), ``n_cases``."""

    fields: Path
    params_csv: Path
    images_dir: Path
    n_cases: int


def conductivity(x: np.ndarray, k0: float, position: float, contrast: float) -> np.ndarray:
    """k(x) = k0 (1 + contrast exp(-((x - position) / 0.08)^2)) at the points ``x``."""
    return k0 * (1.0 + contrast * np.exp(-(((x - position) / BUMP_WIDTH) ** 2)))


def solve_case(params: dict[str, float], time_steps: int, nodes: int, scale: float = 1.0) -> np.ndarray:
    """float64 ``[time_steps, nodes]``: u at the output times for one case (``scale`` multiplies k)."""
    m = nodes
    dx = 1.0 / m
    t_left, c = params["boundary_temperature"], params["velocity"]
    faces = np.arange(m + 1) * dx
    k_face = scale * conductivity(faces, params["conductivity"], params["bump_position"], params["bump_contrast"])
    # Diffusive conductances (per unit volume): interior faces between cells j-1 and j use dx; the
    # boundary faces are half a cell away from the nearest centre.
    g = k_face / dx**2
    g[0] *= 2.0
    g[-1] *= 2.0
    a_adv = c / dx
    # dU/dt = A U + b, with flux balance on every cell (upwind advection, c >= 0).
    main = -(g[:-1] + g[1:]) - a_adv
    lower = g[1:-1] + a_adv  # coefficient of u_{j-1} in row j
    upper = g[1:-1].copy()  # coefficient of u_{j+1} in row j
    b = np.zeros(m)
    b[0] = (g[0] + a_adv) * t_left  # inflow of the boundary value through the left face
    dt = T_END / (time_steps * SUBSTEPS)
    matrix = sp.diags([-dt * lower, 1.0 - dt * main, -dt * upper], [-1, 0, 1], format="csc")
    lu = splu(matrix)
    u = np.zeros(m)
    out = np.empty((time_steps, m))
    for k in range(time_steps):
        for _ in range(SUBSTEPS):
            u = lu.solve(u + dt * b)
        out[k] = u
    return out


def render_image(params: dict[str, float], size: int) -> np.ndarray:
    """uint8 ``[size, size]`` geometry / boundary image of one case (see the module doc)."""
    cols = (np.arange(size) + 0.5) / size
    rows = np.arange(size)[:, None] + 0.5
    k = conductivity(cols, params["conductivity"], params["bump_position"], params["bump_contrast"])
    k_max = PARAMETERS["conductivity"][1] * (1.0 + PARAMETERS["bump_contrast"][1])
    band_top, band_bottom = 0.05 * size, 0.70 * size
    centre, span = (band_top + band_bottom) / 2.0, band_bottom - band_top
    half = 0.5 * span * (0.1 + 0.9 * k / k_max)  # half thickness in pixels, at least 5% of the span
    coverage = np.clip(half[None, :] - np.abs(rows - centre) + 0.5, 0.0, 1.0)
    brightness = params["boundary_temperature"] / PARAMETERS["boundary_temperature"][1]
    img = coverage * brightness
    bar_top, bar_bottom = int(round(0.80 * size)), max(int(round(0.92 * size)), int(round(0.80 * size)) + 1)
    length = params["velocity"] / PARAMETERS["velocity"][1] * size
    bar = np.clip(length - np.arange(size), 0.0, 1.0)  # soft right end
    img[bar_top:bar_bottom, :] = np.maximum(img[bar_top:bar_bottom, :], bar[None, :])
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def make_synthetic_simulation(
    out_dir: Path,
    n_cases: int = 64,
    time_steps: int = 16,
    nodes: int = 64,
    variables: int = 1,
    image_size: int = 32,
    seed: int = 0,
) -> SyntheticSimulation:
    """Generate ``n_cases`` cases of the advection–diffusion family into ``out_dir`` (see the module doc).

    Deterministic for a seed. About 0.2 s for the default size on one core.
    """
    for name, value in (("n_cases", n_cases), ("time_steps", time_steps), ("nodes", nodes),
                        ("variables", variables), ("image_size", image_size)):
        if int(value) < 1:
            raise ConfigError(f"synthetic simulation: {name} = {value} must be a positive integer")
    if nodes < 3:
        raise ConfigError(f"synthetic simulation: nodes = {nodes} must be at least 3")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = {name: np.round(rng.uniform(lo, hi, size=n_cases), 6) for name, (lo, hi) in PARAMETERS.items()}
    width = max(3, len(str(n_cases - 1)))
    fields_path = out_dir / "fields.npy"
    with NpyCaseWriter(fields_path, (n_cases, time_steps, nodes, variables)) as writer:
        for i in range(n_cases):
            params = {name: float(values[i]) for name, values in table.items()}
            case = np.stack([solve_case(params, time_steps, nodes, scale=2.0**v) for v in range(variables)], axis=-1)
            writer.write(case.astype(np.float32))
            Image.fromarray(render_image(params, image_size)).save(images_dir / f"param_{i:0{width}d}.png")
    params_csv = out_dir / "params.csv"
    frame = pd.DataFrame({"case_id": np.arange(n_cases), **table})
    frame.to_csv(params_csv, index=False)
    return SyntheticSimulation(fields=fields_path, params_csv=params_csv, images_dir=images_dir, n_cases=n_cases)
