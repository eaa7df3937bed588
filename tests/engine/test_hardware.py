"""Device / precision / workers / channels_last resolution and the start-of-run line."""

from __future__ import annotations

import pytest
import torch

from fabml.engine import hardware
from fabml.engine.hardware import (
    HardwareInfo,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
    use_channels_last,
)
from fabml.errors import ConfigError

CPU = torch.device("cpu")
GPU = torch.device("cuda:0")


def test_resolve_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="'tpu' is not valid"):
        resolve_device("tpu")


def test_resolve_device_auto_uses_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda:1")


def test_precision_on_cpu_is_fp32_with_warning_when_asked_otherwise() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.warns(UserWarning, match="precision bf16 asked for on cpu; training in fp32"):
        assert resolve_precision("bf16", CPU) == "fp32"
    with pytest.raises(ConfigError, match="precision 'fp8' is not valid"):
        resolve_precision("fp8", CPU)


@pytest.mark.parametrize(
    ("capability", "setting", "expected"),
    [((8, 0), "auto", "bf16"), ((9, 0), "auto", "bf16"), ((7, 5), "auto", "fp16"), ((7, 0), "fp16", "fp16"),
     ((8, 6), "fp32", "fp32")],
)
def test_precision_auto_on_gpus(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], setting: str, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision(setting, GPU) == expected


def test_bf16_on_old_gpu_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ConfigError, match="bf16 needs a GPU of compute capability >= 8.0"):
        resolve_precision("bf16", GPU)


@pytest.mark.parametrize(("cpus", "world", "expected"), [(1, 1, 0), (2, 1, 0), (3, 1, 2), (8, 1, 4), (16, 4, 3), (8, 4, 0)])
def test_num_workers_auto(monkeypatch: pytest.MonkeyPatch, cpus: int, world: int, expected: int) -> None:
    monkeypatch.setattr(hardware, "_usable_cpus", lambda: cpus)
    assert resolve_num_workers(-1, world) == expected
    assert resolve_num_workers(5, world) == 5
    with pytest.raises(ConfigError, match="num_workers -2"):
        resolve_num_workers(-2)


def test_channels_last() -> None:
    assert use_channels_last("auto", GPU) is True
    assert use_channels_last("auto", CPU) is False
    assert use_channels_last(True, CPU) is True
    assert use_channels_last("off", GPU) is False
    with pytest.raises(ConfigError, match="channels_last 'maybe'"):
        use_channels_last("maybe", CPU)


def test_describe_line() -> None:
    info = HardwareInfo(
        device="cuda:0", device_name="NVIDIA H100", precision="bf16", world_size=2, per_rank_batch=128,
        num_workers=4, threads=8, channels_last=True, tf32=True,
    )
    assert info.describe() == (
        "device cuda:0 (NVIDIA H100) | precision bf16 | world size 2 | batch 128/rank (global 256) | "
        "workers 4 | threads 8 | channels_last, tf32"
    )
    assert "CPU" in hardware.device_name(CPU)


def test_peak_rss_is_a_plausible_number_of_mib():
    import numpy as np

    from fabml.engine.hardware import peak_rss_mb

    before = peak_rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched: the peak can only grow
    assert 10 < before <= peak_rss_mb()
    assert peak_rss_mb() >= 64
    del block
