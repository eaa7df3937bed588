"""Config: YAML + overrides -> nested dataclasses, type coercion, clear errors, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fabml.config import apply_overrides, from_dict, load_config, parse_override, save_config, to_dict
from fabml.engine.trainer import TrainConfig
from fabml.errors import ConfigError
from fabml.registry import Registry


@dataclass
class ModelCfg:
    width: int = 64
    dropout: float = 0.1
    name: str = "resnet18"
    stages: tuple[int, ...] = (2, 2, 2, 2)
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5])
    head: int | None = None


@dataclass
class JobCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_dir: Path = Path("data")
    outline_channel: bool = False


def test_defaults_without_file_or_overrides() -> None:
    assert load_config(JobCfg) == JobCfg()


def test_yaml_file_then_overrides_with_yaml_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  width: 32\n  stages: [1, 1]\ntrain:\n  lr: 3.0e-4\n  epochs: 5\n")
    cfg = load_config(
        JobCfg,
        path,
        [
            "train.epochs=7",  # override beats the file
            "train.lr=1e-4",  # YAML 1.1 reads this as a string; coerced to float
            "train.eta_max=null",
            "train.channels_last=true",
            "model.head=3",
            "model.scales=[2, 3]",  # ints in a list[float] become floats
            "model.dropout=0",
            "outline_channel=true",
            "data_dir=/tmp/maps",
        ],
    )
    assert cfg.model.width == 32
    assert cfg.model.stages == (1, 1)
    assert cfg.train.epochs == 7
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.eta_max is None
    assert cfg.train.channels_last is True
    assert cfg.model.head == 3
    assert cfg.model.scales == [2.0, 3.0] and all(isinstance(v, float) for v in cfg.model.scales)
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.outline_channel is True
    assert cfg.data_dir == Path("/tmp/maps")
    assert cfg.train.batch_size == 256  # untouched default


def test_round_trip_save_then_load_equals_original(tmp_path: Path) -> None:
    cfg = JobCfg(
        model=ModelCfg(width=48, stages=(3, 4), scales=[0.25], head=7),
        train=TrainConfig(lr=2.5e-5, eta_max=1e-3, channels_last=False, epochs=3),
        data_dir=Path("/x/y"),
        outline_channel=True,
    )
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(JobCfg, path) == cfg
    assert to_dict(cfg)["model"]["stages"] == [3, 4]  # tuples are written as YAML lists


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(JobCfg, overrides=["train.lrr=0.1"])
    msg = str(err.value)
    assert "'train.lrr'" in msg and "lr" in msg and "weight_decay" in msg
    path = tmp_path / "bad.yaml"
    path.write_text("modle:\n  width: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'modle'.*model.*bad.yaml"):
        load_config(JobCfg, path)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.epochs", "key=value"),
        ("train..epochs=3", "empty key"),
        ("=3", "empty key"),
        ("train.epochs=[1", "not valid YAML"),
        ("train.epochs=abc", r"'train.epochs' must be int"),
        ("train.epochs=1.5", r"'train.epochs' must be int"),
        ("train.lr=true", r"'train.lr' must be float"),
        ("train.epochs.x=1", r"'train.epochs' must be int, got \{'x': 1\}"),
        ("model.stages=3", "must be a list"),
        ("model.width=null", "cannot be null"),
        ("train=3", "must be a mapping"),
    ],
)
def test_bad_overrides_raise_config_error(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(JobCfg, overrides=[override])


def test_parse_and_apply_overrides_create_nested_levels() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=") == (["a"], "")
    data = apply_overrides({"a": {"x": 1}}, ["a.b.c=1e-3", "a.x=2", "top=null"])
    assert data == {"a": {"x": 2, "b": {"c": "1e-3"}}, "top": None}
    with pytest.raises(ConfigError, match="'a.x' is a value, not a group"):
        apply_overrides(data, ["a.x.y=1"])


def test_missing_or_non_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(JobCfg, tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of settings"):
        load_config(JobCfg, path)
    path.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(JobCfg, path)


def test_from_dict_accepts_string_booleans_and_int_for_float() -> None:
    cfg = from_dict(TrainConfig, {"tensorboard": "yes", "lr": 1, "channels_last": "auto"})
    assert cfg.tensorboard is True and cfg.lr == 1.0 and cfg.channels_last == "auto"


def test_registry_register_get_names() -> None:
    reg: Registry[type] = Registry("backbone")

    @reg.register("Small")
    class Small:
        pass

    @reg.register("big")
    class Big:
        pass

    assert reg.get("small") is Small and reg.get("BIG") is Big
    assert reg.names() == ["big", "small"]
    assert "small" in reg and len(reg) == 2
    with pytest.raises(ConfigError, match="unknown backbone 'tiny'; choose one of: big, small"):
        reg.get("tiny")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("big")(Small)
