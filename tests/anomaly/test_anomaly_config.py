"""Config assembly for ``fabml anomaly fit`` and ``compare`` (plain functions the CLI calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.anomaly.config import anomaly_config, compare_configs, parse_models
from fabml.errors import ConfigError


def test_command_line_options_then_overrides(tmp_path: Path) -> None:
    cfg = anomaly_config(None, ["data.image_size=[48,48]"], "padim", data=str(tmp_path), image_size=32)
    assert cfg.data.root == str(tmp_path) and tuple(cfg.data.image_size) == (48, 48)  # --set wins over --image-size
    assert cfg.model == {"name": "padim"}


def test_file_model_settings_kept_only_for_the_same_model(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: patchcore, coreset_ratio: 0.05}\ndevice: cpu\n")
    same = anomaly_config(config, [], "patchcore")
    assert same.model == {"name": "patchcore", "coreset_ratio": 0.05} and same.device == "cpu"
    other = anomaly_config(config, [], "padim")  # PaDiM has no coreset_ratio: it must not carry over
    assert other.model == {"name": "padim"} and other.device == "cpu"
    unnamed = anomaly_config(None, ["model.n_features=16"], "padim")
    assert unnamed.model == {"name": "padim", "n_features": 16}


def test_parse_models() -> None:
    assert parse_models(" patchcore, padim ,,") == ["patchcore", "padim"]
    with pytest.raises(ConfigError, match="names no model"):
        parse_models(" , ")


def test_compare_configs_split_the_per_model_block(tmp_path: Path) -> None:
    config = tmp_path / "cmp.yaml"
    config.write_text(
        "data: {image_size: [32, 32]}\ndevice: cpu\n"
        "per_model:\n  padim: {model: {n_features: 16}}\n  autoencoder: {train: {epochs: 1}}\n"
    )
    base, per_model = compare_configs(["autoencoder", "padim", "stfpm"], config, ["seed=3"], data="/data")
    assert base.device == "cpu" and base.seed == 3 and base.data.root == "/data" and tuple(base.data.image_size) == (32, 32)
    assert list(per_model) == ["autoencoder", "padim", "stfpm"]
    assert per_model == {"autoencoder": {"train": {"epochs": 1}}, "padim": {"model": {"n_features": 16}}, "stfpm": {}}


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "mapping"),
    ("per_model: [padim]\n", "per_model"),
    ("per_model: {padim: {device: cpu}}\n", "only model and train"),
    ("data: {nosuch: 1}\n", "nosuch"),
])
def test_compare_configs_refuse_bad_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        compare_configs(["padim"], config)


def test_compare_configs_without_a_file() -> None:
    base, per_model = compare_configs(["padim"], None, None, image_size=64)
    assert tuple(base.data.image_size) == (64, 64) and per_model == {"padim": {}}
    with pytest.raises(ConfigError, match="not found"):
        compare_configs(["padim"], "/no/such.yaml")


@pytest.mark.parametrize("name", ["anomaly_magnetic_tile.yaml", "anomaly_cpu_recipes.yaml"])
def test_the_shipped_compare_configs_load_and_give_each_gradient_recipe_a_step_budget(name: str) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / name
    models = ["fastflow", "stfpm"] if name == "anomaly_cpu_recipes.yaml" else ["padim", "fastflow"]
    base, per_model = compare_configs(models, config, data="/data")
    assert tuple(base.data.image_size) == (256, 256) and base.data.channels == 1
    assert per_model["fastflow"]["train"]["max_steps"] > 0
    if name == "anomaly_cpu_recipes.yaml":  # the CPU recipes' promise: at most 15 minutes of training
        assert all(per_model[m]["train"]["max_minutes"] == 15 for m in models)
