"""data.symmetry (transpose, d4): the batch transform moves exactly the chosen cases, reflections follow
data.grid_nodes (hand-computed), the settings it needs are checked with one-line errors, the e2e stage trains
on it only in training steps, a killed e2e run with it resumes to the same weights, and predictions averaged
over the group obey the symmetry exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import crash_at_step, tiny_config  # noqa: E402

from fabml.data.synthetic_simulation import SyntheticSimulation, make_synthetic_simulation  # noqa: E402
from fabml.errors import ConfigError  # noqa: E402
from fabml.surrogate.config import SurrogateConfig  # noqa: E402
from fabml.surrogate.method import SurrogateMethod, build_method  # noqa: E402
from fabml.surrogate.pipeline import load_surrogate, predict_arrays, train  # noqa: E402
from fabml.surrogate.runs import SurrogateShapes, build_models  # noqa: E402
from fabml.surrogate.symmetry import (GridMotion, augment_cases, check_symmetry, map_field, map_image,  # noqa: E402
                                      motions, reflect)

SWAP = GridMotion(swap=True)


def transpose_grid(field: torch.Tensor, node_dim: int) -> torch.Tensor:
    return map_field(field, SWAP, "symmetric", node_dim)

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = ["data.layout=grid", "data.grid_shape=[4,4]", "data.symmetry=transpose"]


def transpose_cases(inputs: torch.Tensor, field: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return augment_cases(inputs, field, flip.long(), "transpose", "symmetric")


def test_transpose_cases_swaps_the_image_and_the_field_grid_of_the_flagged_cases_only() -> None:
    inputs = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    field = torch.arange(2 * 1 * 2 * 9, dtype=torch.float32).reshape(2, 1, 2, 9)  # T = 2, 3 x 3 grid
    new_inputs, new_field = transpose_cases(inputs, field, torch.tensor([True, False]))
    assert torch.equal(new_inputs[0, 0], inputs[0, 0].T) and torch.equal(new_inputs[1], inputs[1])
    # node (r, c) of the row-major grid is index 3 r + c; after the swap it holds the old node (c, r)
    expected = torch.tensor([0.0, 3, 6, 1, 4, 7, 2, 5, 8])
    assert torch.equal(new_field[0, 0, 0], expected) and torch.equal(new_field[0, 0, 1], expected + 9)
    assert torch.equal(new_field[1], field[1])
    assert torch.equal(transpose_grid(field, node_dim=-1)[0, 0, 0], expected)
    assert torch.equal(transpose_grid(field.permute(0, 2, 3, 1), node_dim=2)[0, 0, :, 0], expected)  # [B, T, M, V]
    twice = transpose_cases(*transpose_cases(inputs, field, torch.tensor([True, True])), torch.tensor([True, True]))
    assert torch.equal(twice[0], inputs) and torch.equal(twice[1], field)


def test_reflections_follow_where_the_grid_nodes_sit() -> None:
    row = torch.tensor([0.0, 1, 2, 3])
    assert reflect(row, 0, "symmetric", image=False).tolist() == [3, 2, 1, 0]
    # first_edge: nodes i h on [0, 4 h]; node 0 is the stored boundary and stays, the others reverse
    assert reflect(row, 0, "first_edge", image=False).tolist() == [0, 3, 2, 1]
    # an image's node 0 would need the unstored boundary: it takes its neighbour's value
    assert reflect(row, 0, "first_edge", image=True).tolist() == [3, 3, 2, 1]
    image = torch.arange(9.0).reshape(1, 3, 3)
    assert map_image(image, GridMotion(flip_rows=True), "first_edge")[0].tolist() == [[6, 7, 8], [6, 7, 8], [3, 4, 5]]
    assert map_image(image, GridMotion(flip_cols=True), "symmetric")[0].tolist() == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]


@pytest.mark.parametrize("grid_nodes", ["symmetric", "first_edge"])
def test_d4_has_eight_distinct_motions_and_each_field_motion_is_undone_by_its_inverse(grid_nodes: str) -> None:
    assert [len(motions(s)) for s in ("none", "transpose", "d4")] == [1, 2, 8]
    field = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))  # [B, T, M = 4 x 4]
    moved = [map_field(field, g, grid_nodes, node_dim=-1) for g in motions("d4")]
    assert all(not torch.equal(a, b) for i, a in enumerate(moved) for b in moved[i + 1:])
    for g, m in zip(motions("d4"), moved):
        assert torch.equal(map_field(m, g, grid_nodes, node_dim=-1, inverse=True), field)
    # a rotation by 90 degrees (swap, then reflect the rows) four times is the identity
    turn = GridMotion(swap=True, flip_rows=True)
    x = field
    for _ in range(4):
        x = map_field(x, turn, grid_nodes, node_dim=-1)
    assert torch.equal(x, field) and not torch.equal(map_field(field, turn, grid_nodes, node_dim=-1), field)


@pytest.mark.parametrize("symmetry, layout, grid, kind, message", [
    ("rotate", "grid", [4, 4], "image", "data.symmetry='rotate' is unknown"),
    ("transpose", "grid", [4, 4], "params", "needs image inputs"),
    ("transpose", "1d", [], "image", "layout=grid on a square grid_shape"),
    ("transpose", "grid", [4, 8], "image", r"grid_shape \[4, 8\]"),
    ("d4", "grid", [4, 4], "params", "symmetry=d4 needs image inputs"),
])
def test_settings_the_transpose_needs_are_one_line_errors(symmetry: str, layout: str, grid: list[int], kind: str,
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_symmetry(symmetry, layout, grid, kind)
    check_symmetry("none", layout, grid, kind)  # no symmetry: nothing to check
    with pytest.raises(ConfigError, match="data.grid_nodes='edges' is unknown"):
        check_symmetry("d4", "grid", [4, 4], "image", "edges")


def _e2e_method() -> SurrogateMethod:
    cfg = SurrogateConfig()
    cfg.vae.filters = [16, 8]
    cfg.conditioner.hidden, cfg.conditioner.blocks, cfg.conditioner.kind = 8, 1, "cnn"
    cfg.data.layout, cfg.data.grid_shape, cfg.data.symmetry = "grid", [4, 4], "transpose"
    torch.manual_seed(0)
    vae, cond = build_models(cfg, SurrogateShapes(12, 2, 16, 1, "image", [1, 8, 8]))
    return build_method(vae, cond, cfg, "e2e").eval()


def test_e2e_transposes_part_of_each_training_batch_and_never_the_validation_batch() -> None:
    method = _e2e_method()
    g = torch.Generator().manual_seed(1)
    batch = {"field": torch.randn(16, 1, 2, 16, generator=g), "inputs": torch.rand(16, 1, 8, 8, generator=g)}
    seen: list[torch.Tensor] = []
    method.conditioner.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    assert int(method.rng.step) == 0 and "rng.step" in method.state_dict()
    method.stage_losses(batch, train=False)
    assert torch.equal(seen[-1], batch["inputs"]) and int(method.rng.step) == 0
    method.stage_losses(batch, train=True)
    swapped = [not torch.equal(seen[-1][i], batch["inputs"][i]) for i in range(16)]
    assert torch.equal(seen[-1][~torch.tensor(swapped)], batch["inputs"][~torch.tensor(swapped)])
    assert 0 < sum(swapped) < 16 and int(method.rng.step) == 1
    assert all(torch.equal(seen[-1][i, 0], batch["inputs"][i, 0].T) for i in range(16) if swapped[i])


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSimulation:
    return make_synthetic_simulation(tmp_path_factory.mktemp("grid_data"), n_cases=24, time_steps=8, nodes=16,
                                     image_size=16, seed=0)


def test_parameter_inputs_with_the_transpose_are_refused_before_training(grid_data: SyntheticSimulation,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs image inputs"):
        train(tiny_config(grid_data, extra=GRID), tmp_path / "run", "vae")


@pytest.mark.parametrize("symmetry", ["data.symmetry=transpose", "data.symmetry=d4 data.grid_nodes=first_edge"])
def test_a_killed_e2e_run_with_a_symmetry_resumes_to_the_same_weights(grid_data: SyntheticSimulation,
                                                                      tmp_path: Path, symmetry: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    extra = [*GRID[:2], *symmetry.split(), "conditioner.kind=cnn", "train_e2e.epochs=3"]
    for name in ("straight", "resumed"):
        train(tiny_config(grid_data, images=True, extra=extra), tmp_path / name, "vae")
    train(tiny_config(grid_data, images=True, extra=extra), tmp_path / "straight", "e2e")

    real = SurrogateMethod.training_step
    # 3 batches per epoch: the second batch of epoch 3
    monkeypatch.setattr(SurrogateMethod, "training_step", crash_at_step(8))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(grid_data, images=True, extra=extra), tmp_path / "resumed", "e2e")
    monkeypatch.setattr(SurrogateMethod, "training_step", real)
    train(tiny_config(grid_data, images=True, extra=extra), tmp_path / "resumed", "e2e")
    a, b = (torch.load(tmp_path / n / "model.pt", weights_only=False)["conditioner"] for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_averaged_predictions_of_a_transposed_input_are_the_transposed_field(grid_data: SyntheticSimulation,
                                                                              tmp_path: Path) -> None:
    # grid_data's 16 nodes form a 4 x 4 grid; its images are 16 x 16
    train(tiny_config(grid_data, images=True, extra=[*GRID, "conditioner.kind=cnn"]), tmp_path / "run", "all")
    loaded = load_surrogate(tmp_path / "run")
    images = torch.rand(3, *loaded.shapes.input_shape, generator=torch.Generator().manual_seed(0))
    pred, _ = predict_arrays(loaded, images)  # [3, T, M, V]
    pred_t, _ = predict_arrays(loaded, images.transpose(-1, -2))
    assert torch.allclose(transpose_grid(torch.from_numpy(pred_t), node_dim=2), torch.from_numpy(pred), atol=1e-5)

    loaded.cfg.eval.symmetry_average = False  # one pass: the symmetry holds only as well as training taught it
    single, _ = predict_arrays(loaded, images)
    single_t, _ = predict_arrays(loaded, images.transpose(-1, -2))
    assert torch.allclose(torch.from_numpy(pred), 0.5 * (torch.from_numpy(single)
                                                         + transpose_grid(torch.from_numpy(single_t), node_dim=2)),
                          atol=1e-5)
    assert not torch.allclose(transpose_grid(torch.from_numpy(single_t), node_dim=2), torch.from_numpy(single),
                              atol=1e-5)


def test_d4_averaged_predictions_of_a_rotated_input_are_the_rotated_field(grid_data: SyntheticSimulation,
                                                                           tmp_path: Path) -> None:
    extra = ["data.layout=grid", "data.grid_shape=[4,4]", "data.symmetry=d4", "conditioner.kind=cnn"]
    train(tiny_config(grid_data, images=True, extra=extra), tmp_path / "run", "all")
    loaded = load_surrogate(tmp_path / "run")
    images = torch.rand(3, *loaded.shapes.input_shape, generator=torch.Generator().manual_seed(0))
    pred, _ = predict_arrays(loaded, images)  # [3, T, M, V]
    turn = GridMotion(swap=True, flip_rows=True)  # a quarter turn
    pred_turned, _ = predict_arrays(loaded, map_image(images, turn, "symmetric"))
    expected = map_field(torch.from_numpy(pred), turn, "symmetric", node_dim=2)
    assert torch.allclose(torch.from_numpy(pred_turned), expected, atol=1e-5)
    loaded.cfg.eval.symmetry_average = False  # one pass: the symmetry holds only as well as training taught it
    single, _ = predict_arrays(loaded, images)
    single_turned, _ = predict_arrays(loaded, map_image(images, turn, "symmetric"))
    assert not torch.allclose(torch.from_numpy(single_turned),
                              map_field(torch.from_numpy(single), turn, "symmetric", node_dim=2), atol=1e-5)
