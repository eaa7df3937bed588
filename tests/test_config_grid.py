"""The shared settings grid of the ablation commands: value splitting, parsing, combinations and labels."""

from __future__ import annotations

import pytest

from fabml.config_grid import grid_configs, parse_grid, settings_label, split_values
from fabml.errors import ConfigError
from fabml.wafer.config import WaferConfig


def test_split_values_keeps_brackets_whole() -> None:
    assert split_values("32, [64, 64] ,{a: 1, b: 2}") == ["32", "[64, 64]", "{a: 1, b: 2}"]


def test_parse_grid_reads_yaml_values_and_names_bad_axes() -> None:
    axes = parse_grid(["data.size=32,64", "model.attention=false,true", "model.widths=[8, 16],[16, 32]"])
    assert axes == [("data.size", [32, 64]), ("model.attention", [False, True]),
                    ("model.widths", [[8, 16], [16, 32]])]
    assert parse_grid([]) == []
    for bad in ("data.size", "data.size=", "=1,2", "data.size=32,"):
        with pytest.raises(ConfigError, match="KEY=V1,V2"):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="data.size twice"):
        parse_grid(["data.size=32", " data.size=64"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_grid(["model.widths=[1, 2"])


def test_grid_configs_first_axis_slowest_and_checked() -> None:
    combos = grid_configs(WaferConfig, WaferConfig(), parse_grid(["data.size=32,64", "model.attention=false,true"]))
    assert [(s["data.size"], s["model.attention"]) for s, _ in combos] == [
        (32, False), (32, True), (64, False), (64, True)]
    assert [(c.data.size, c.model.attention) for _, c in combos] == [(32, False), (32, True), (64, False), (64, True)]
    assert grid_configs(WaferConfig, WaferConfig(), []) == [({}, WaferConfig())]
    with pytest.raises(ConfigError, match="data.nope"):  # an unknown setting fails before anything is trained
        grid_configs(WaferConfig, WaferConfig(), parse_grid(["data.nope=1,2"]))


def test_settings_label() -> None:
    assert settings_label({"data.size": 64, "model.attention": True, "augment.preset": "d4"}) == (
        "data.size=64 model.attention=true augment.preset=d4")
    assert settings_label({"model.widths": [8, 16]}) == "model.widths=[8, 16]"
    assert settings_label({}) == "base"
