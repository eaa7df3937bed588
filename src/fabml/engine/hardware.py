"""Device, precision, data-loader workers and memory format, chosen once and reported at start."""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass

import torch

from fabml.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(setting: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.

    Also accepts ``"cpu"``, ``"cuda"`` (this rank's GPU) and ``"cuda:N"``.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    setting = str(setting).strip().lower()
    if setting == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda" or setting.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{setting}' asked for but CUDA is not available; set train.device=auto or cpu")
        if setting == "cuda":
            return torch.device(f"cuda:{local_rank}")
        try:
            index = int(setting.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"device '{setting}' is not valid; use auto, cpu, cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{setting}' does not exist: {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"device '{setting}' is not valid; use auto, cpu, cuda or cuda:N")


def resolve_precision(setting: str, device: torch.device) -> str:
    """Pick ``"bf16"``, ``"fp16"`` or ``"fp32"`` for autocast.

    ``auto``: bf16 on CUDA compute capability >= 8 (Ampere+), fp16 (with a GradScaler)
    on older GPUs, fp32 on CPU. Asking bf16/fp16 on CPU falls back to fp32 with a
    warning (so a GPU config still runs on a laptop); asking bf16 on a GPU without
    bf16 support is a ConfigError.
    """
    setting = str(setting).strip().lower()
    if setting not in PRECISIONS:
        raise ConfigError(f"precision '{setting}' is not valid; choose one of: {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            warnings.warn(
                f"precision {setting} asked for on {device.type}; training in fp32 instead", stacklevel=2
            )
        return "fp32"
    major, _minor = torch.cuda.get_device_capability(device)
    if setting == "auto":
        return "bf16" if major >= 8 else "fp16"
    if setting == "bf16" and major < 8:
        raise ConfigError(
            f"precision bf16 needs a GPU of compute capability >= 8.0, this one is {major}.x; "
            "set train.precision=fp16 or auto"
        )
    return setting


def enable_tf32() -> None:
    """Allow TF32 tensor cores for fp32 matmuls and convolutions (Ampere+; ignored elsewhere)."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def resolve_num_workers(setting: int, local_world_size: int = 1) -> int:
    """Data-loader workers per process: ``-1`` = auto, i.e. ``min(4, cpus - 1)``, 0 on <= 2 CPUs.

    ``cpus`` is the CPUs usable by this process divided among ``local_world_size``
    processes on the node.
    """
    setting = int(setting)
    if setting >= 0:
        return setting
    if setting != -1:
        raise ConfigError(f"num_workers {setting} is not valid; use -1 (auto) or a count >= 0")
    cpus = _usable_cpus() // max(1, local_world_size)
    if cpus <= 2:  # workers would only compete with the training process
        return 0
    return min(4, cpus - 1)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``"auto"`` -> True on CUDA only (tensor-core convolutions prefer NHWC); bools pass through."""
    if isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower()
    if text == "auto":
        return device.type == "cuda"
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ConfigError(f"channels_last '{setting}' is not valid; use auto, true or false")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ``VmHWM``; elsewhere ``ru_maxrss``).

    ``VmHWM`` belongs to the process's own address space, so unlike ``ru_maxrss`` it does not
    inherit the parent's peak across fork + exec (torchrun workers, subprocesses).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def device_name(device: torch.device) -> str:
    """Human name of a device, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"CPU x86_64 (16 cores)"``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine() or 'unknown'} ({_usable_cpus()} cores)"


@dataclass
class HardwareInfo:
    """What a run uses; :meth:`describe` is the line printed at the start of training."""

    device: str
    device_name: str
    precision: str
    world_size: int
    per_rank_batch: int
    num_workers: int
    threads: int
    channels_last: bool
    tf32: bool

    def describe(self) -> str:
        extras = []
        if self.channels_last:
            extras.append("channels_last")
        if self.tf32:
            extras.append("tf32")
        tail = f" | {', '.join(extras)}" if extras else ""
        return (
            f"device {self.device} ({self.device_name}) | precision {self.precision} | "
            f"world size {self.world_size} | batch {self.per_rank_batch}/rank "
            f"(global {self.per_rank_batch * self.world_size}) | workers {self.num_workers} | "
            f"threads {self.threads}{tail}"
        )
