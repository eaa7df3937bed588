"""The surrogate pipeline on tiny generated cases: every mode trains and predicts, e2e leaves the decoder
bit-identical, a crashed run resumes to the same weights, predict's Monte-Carlo spread, the run's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_surrogate import (  # noqa: E402
    N_CASES, NODES, TIME_STEPS, crash_at_step, make_tiny_data, tiny_config,
)

from fabml.data.synthetic_simulation import SyntheticSimulation  # noqa: E402
from fabml.errors import DataError  # noqa: E402
from fabml.surrogate.method import SurrogateMethod  # noqa: E402
from fabml.surrogate.pipeline import load_surrogate, predict, predict_arrays, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSimulation:
    return make_tiny_data(tmp_path_factory.mktemp("surrogate_data"))


def _model(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=False)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_modes_vae_conditioner_e2e_train_in_sequence_and_predict(data: SyntheticSimulation, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = train(tiny_config(data), run, "vae")
    assert report.trained == ["vae"] and report.split_sizes == {"train": 12, "val": 6, "test": 6}
    stages = report.shapes.stages
    z, xs = np.load(run / "latent_vectors.npy"), np.load(run / "xs.npy")
    assert z.shape == (N_CASES, 32) and xs.shape == (N_CASES, stages, 8) and np.isfinite(z).all()
    rows = pd.read_csv(run / "train" / "vae" / "metrics.csv")
    assert len(rows) == 2 and {"recon", "kl", "beta", "val_loss", "val_recon"} <= set(rows.columns)
    scaler = json.loads((run / "scaler.json").read_text())
    assert scaler["fields"]["kind"] == "field_minmax" and scaler["params"]["kind"] == "param_standard"
    assert json.loads((run / "run.json").read_text())["job"] == "surrogate"
    with pytest.raises(DataError, match="no trained conditioner"):
        predict(run, data.params_csv)

    report = train(tiny_config(data), run, "conditioner")
    assert report.trained == ["vae", "conditioner"]
    rows = pd.read_csv(run / "train" / "conditioner" / "metrics.csv")
    assert {"z_mse", "xs_mse", "val_loss"} <= set(rows.columns) and "recon" not in rows.columns
    vae_before = _model(run)["vae"]
    report = train(tiny_config(data), run, "e2e")
    assert report.trained == ["vae", "conditioner", "e2e"]
    state = _model(run)
    assert _same_state(vae_before, state["vae"])  # the frozen decoder (and encoder) are bit-identical
    assert state["checkpoints"]["e2e"]["checkpoint"] in ("best", "latest")

    predicted = predict(run, data.params_csv)
    fields = np.load(predicted.fields_path)
    assert fields.shape == (N_CASES, TIME_STEPS, NODES, 1) and np.isfinite(fields).all()
    assert predicted.std_path is None and not (run / "predictions" / "fields_std.npy").exists()
    cases = pd.read_csv(run / "predictions" / "cases.csv")
    assert list(cases["case_id"]) == list(range(N_CASES))
    truth = np.load(data.fields)
    assert fields.min() >= truth.min() - 1.0 and fields.max() <= truth.max() + 1.0  # original units, not scaled

    table = pd.read_csv(data.params_csv)
    shuffled = tmp_path / "shuffled.csv"
    table[list(reversed(table.columns))].to_csv(shuffled, index=False)  # same parameters, other column order
    reordered = predict(run, shuffled, tmp_path / "shuffled")
    assert np.array_equal(np.load(reordered.fields_path), fields) and reordered.notes
    table.drop(columns=[table.columns[-1]]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="columns"):
        predict(run, tmp_path / "short.csv")

    # e2e.decoder_lr_scale > 0: e2e fine-tunes the decoder too; the encoder stays as the VAE mode left it
    train(tiny_config(data, extra=["e2e.decoder_lr_scale=0.1"]), run, "e2e", fresh=True)
    tuned = _model(run)["vae"]
    encoder = [k for k in tuned if k.startswith("encoder.")]
    decoder = [k for k in tuned if k.startswith("decoder.")]
    assert encoder and all(torch.equal(tuned[k], vae_before[k]) for k in encoder)
    assert decoder and not all(torch.equal(tuned[k], vae_before[k]) for k in decoder)


def test_mode_all_with_images_runs_the_three_stages_and_predict_spread(data: SyntheticSimulation,
                                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = train(tiny_config(data, images=True), run, "all")
    assert report.trained == ["vae", "conditioner", "e2e"] and report.shapes.input_kind == "image"
    rows = pd.read_csv(run / "train" / "all" / "metrics.csv")
    assert list(rows["stage"]) == ["vae"] * 2 + ["conditioner"] * 2 + ["e2e"] * 2
    assert np.load(run / "xs.npy").shape == (N_CASES, report.shapes.stages, 8)

    loaded = load_surrogate(run)
    assert loaded.shapes.input_shape == [1, 16, 16] and loaded.trained == ["vae", "conditioner", "e2e"]
    predicted = predict(run, data.images_dir, tmp_path / "pred", samples=6)
    mean, std = np.load(predicted.fields_path), np.load(predicted.std_path)
    assert mean.shape == std.shape == (N_CASES, TIME_STEPS, NODES, 1)
    assert (std >= 0).all() and std.mean() > 0  # Monte-Carlo dropout spreads the samples
    again = predict(run, data.images_dir, tmp_path / "pred2", samples=6)  # seeded: repeatable
    assert np.array_equal(np.load(again.fields_path), mean)
    single, none = predict_arrays(loaded, np.zeros((2, 1, 16, 16), np.float32), samples=1)
    assert single.shape == (2, TIME_STEPS, NODES, 1) and none is None
    with pytest.raises(DataError, match=r"\[1, 16, 16\]"):
        predict_arrays(loaded, np.zeros((2, 1, 8, 8), np.float32))


def test_a_crashed_run_resumes_to_the_same_weights(data: SyntheticSimulation, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ["train_vae.epochs=3"]
    train(tiny_config(data, extra=extra), tmp_path / "straight", "vae")

    real = SurrogateMethod.training_step
    # 3 batches per epoch: the second batch of epoch 3
    monkeypatch.setattr(SurrogateMethod, "training_step", crash_at_step(8))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(data, extra=extra), tmp_path / "resumed", "vae")
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(SurrogateMethod, "training_step", real)
    report = train(tiny_config(data, extra=extra), tmp_path / "resumed", "vae")  # same settings: auto-resume
    assert report.result.epochs_completed == 3
    a, b = _model(tmp_path / "straight"), _model(tmp_path / "resumed")
    assert _same_state(a["vae"], b["vae"])
    assert np.array_equal(np.load(tmp_path / "straight" / "latent_vectors.npy"),
                          np.load(tmp_path / "resumed" / "latent_vectors.npy"))
    metrics = [pd.read_csv(p / "train" / "vae" / "metrics.csv") for p in (tmp_path / "straight", tmp_path / "resumed")]
    assert np.allclose(metrics[0]["val_loss"], metrics[1]["val_loss"], rtol=0, atol=0)


def test_modes_that_need_a_trained_vae_say_so(data: SyntheticSimulation, tmp_path: Path) -> None:
    for mode in ("conditioner", "e2e"):
        with pytest.raises(DataError, match="--mode vae"):
            train(tiny_config(data), tmp_path / mode, mode)


def test_a_finished_mode_run_again_continues_without_training(data: SyntheticSimulation, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(data), run, "vae")
    before = _model(run)["vae"]
    report = train(tiny_config(data), run, "vae")
    assert report.result.epochs_completed == 2 and len(pd.read_csv(run / "train" / "vae" / "metrics.csv")) == 2
    assert _same_state(before, _model(run)["vae"])


def test_default_config_file_is_the_seed_defaults_and_mode_all_stages_come_from_each_section() -> None:
    from fabml.config import load_config, to_dict
    from fabml.surrogate.config import SurrogateConfig
    from fabml.surrogate.pipeline import mode_train_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    assert to_dict(load_config(SurrogateConfig, configs / "surrogate_default.yaml")) == to_dict(SurrogateConfig())
    cfg = load_config(SurrogateConfig, configs / "surrogate_cpu.yaml", ["train_vae.early_stop_patience=5",
                                                                         "eval.validate_every=3", "seed=7"])
    tcfg, notes = mode_train_config(cfg, "all")
    assert [(s.name, s.epochs, s.lr, s.trainable) for s in tcfg.stages] == [
        ("vae", 100, 0.002, ["vae"]), ("conditioner", 100, 0.002, ["conditioner"]), ("e2e", 50, 0.0005, ["conditioner"])]
    assert tcfg.early_stop_patience == 0 and any("early_stop_patience" in n for n in notes)
    assert tcfg.max_minutes == 60 and tcfg.validate_every == 3 and tcfg.seed == 7
    single, _ = mode_train_config(load_config(SurrogateConfig, None, ["train_e2e.validate_every=2"]), "e2e")
    assert single.validate_every == 2 and single.lr == 1e-4 and not single.stages


def test_the_job_tables_builder_reads_the_sizes_from_the_data(data: SyntheticSimulation) -> None:
    from fabml.jobs import get_job

    method = get_job("surrogate").part("build_method")(tiny_config(data, images=True))
    assert isinstance(method, SurrogateMethod) and method.train_all  # cfg.mode defaults to all
    z, xs = method.conditioner(torch.zeros(2, 1, 16, 16))
    assert z.shape == (2, 32) and xs.shape == (2, method.vae.stages, 8)
    assert method.vae.decode(z, xs).shape == (2, 1, TIME_STEPS, NODES)


def test_lazy_and_preloaded_data_and_gradient_checkpointing_train_the_same_vae(data: SyntheticSimulation,
                                                                               tmp_path: Path) -> None:
    runs = {"lazy": ["data.load_all=false"], "preloaded": ["data.load_all=true"],
            "checkpointed": ["data.load_all=false", "vae.gradient_checkpointing=true"]}
    reports = {name: train(tiny_config(data, extra=extra), tmp_path / name, "vae") for name, extra in runs.items()}
    assert not reports["lazy"].preload and reports["preloaded"].preload
    states = {name: _model(tmp_path / name)["vae"] for name in runs}
    assert _same_state(states["lazy"], states["preloaded"])
    for key, value in states["lazy"].items():
        assert torch.allclose(value, states["checkpointed"][key], atol=1e-5), key
