"""Auto-configuration by GPU: the seed's table on fake device properties; the user's settings win."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabml.retrieval.config import RetrievalTrainConfig
from fabml.retrieval.hardware import (
    DeviceProps,
    apply_auto_settings,
    auto_train_settings,
    describe_auto_settings,
    explicit_train_keys,
)


@pytest.mark.parametrize(
    "props, expected",
    [
        (DeviceProps("cuda", "NVIDIA A100-SXM4-80GB", 79.2, 8, 0), ("bf16", 16, 1, "A100 80 GB")),
        (DeviceProps("cuda", "NVIDIA A100-PCIE-40GB", 39.4, 8, 0), ("bf16", 8, 2, "A100 40 GB")),
        (DeviceProps("cuda", "NVIDIA GeForce RTX 3090", 23.7, 8, 6), ("fp16", 4, 4, "24 GB GPU")),
        (DeviceProps("cuda", "NVIDIA A10", 22.1, 8, 6), ("fp16", 4, 4, "24 GB GPU")),
        (DeviceProps("cuda", "NVIDIA H100 80GB HBM3", 79.1, 9, 0), ("bf16", -1, 1, "Ampere+ GPU")),
        (DeviceProps("cuda", "NVIDIA GeForce RTX 3060", 11.8, 8, 6), ("bf16", -1, 1, "Ampere+ GPU")),
        (DeviceProps("cuda", "Tesla V100-SXM2-16GB", 15.8, 7, 0), ("fp16", 4, 4, "pre-Ampere GPU")),
        (DeviceProps("cuda", "Tesla T4", 14.7, 7, 5), ("fp16", 4, 4, "pre-Ampere GPU")),
        (DeviceProps("cpu", "CPU"), ("fp32", -1, 1, "CPU")),
    ],
)
def test_auto_settings_follow_the_seed_table(props: DeviceProps, expected: tuple) -> None:
    settings = auto_train_settings(props)
    assert (settings["precision"], settings["num_workers"], settings["grad_accum_steps"], settings["rule"]) == expected


def test_only_settings_the_user_did_not_give_are_filled(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  precision: fp32\n  lr: 0.001\n", encoding="utf-8")
    explicit = explicit_train_keys(config, ["train.num_workers=2", "model.embedding_dim=128"])
    assert explicit == {"precision", "lr", "num_workers"}
    assert explicit_train_keys(None, ["train={grad_accum_steps: 3}"]) == {"grad_accum_steps"}

    props = DeviceProps("cuda", "NVIDIA A100-PCIE-40GB", 39.4, 8, 0)
    settings = auto_train_settings(props)
    train = RetrievalTrainConfig(precision="fp32", num_workers=2)
    applied = apply_auto_settings(train, settings, explicit)
    assert applied == {"grad_accum_steps": 2}
    assert (train.precision, train.num_workers, train.grad_accum_steps) == ("fp32", 2, 2)
    line = describe_auto_settings(props, settings, applied)
    assert "A100 40 GB" in line and "grad accumulation 2" in line and "kept from the config: precision, workers" in line

    cpu = RetrievalTrainConfig()
    assert apply_auto_settings(cpu, auto_train_settings(DeviceProps("cpu")), set()) == {
        "precision": "fp32", "num_workers": -1, "grad_accum_steps": 1}
