"""Which device a run uses, what it is, and a loud warning when a GPU machine runs on CPU.

Importing this module does not import torch (``dnr --help`` and config parsing stay fast);
the functions import it when called.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TYPE_CHECKING

from dnr.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_NAMES",
    "is_device_name",
    "resolve_device",
    "describe_device",
    "nvidia_gpu_hint",
    "cpu_fallback_warning",
]

#: What ``train.device`` and ``dnr eval --device`` accept (besides ``cuda:N``).
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
_CUDA_INDEX = re.compile(r"cuda:\d+")
#: Present when an NVIDIA kernel driver is loaded (Linux).
NVIDIA_PROC = "/proc/driver/nvidia"


def is_device_name(name: str) -> bool:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (the syntax; not availability)."""
    return name in DEVICE_NAMES or bool(_CUDA_INDEX.fullmatch(name))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    import torch

    if not is_device_name(name):
        raise ConfigError(f"device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
            raise ConfigError(f"device: {name} requested but CUDA is not available ({build})")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name} requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if name == "mps" and not mps_ok:
        raise ConfigError("device: mps requested but MPS is not available")
    return torch.device(name)


def _torch_build() -> str:
    """``torch 2.5.1+cu124, CUDA 12.4`` / ``torch 2.13.0+cpu`` / ``..., ROCm 6.1``."""
    import torch

    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda is not None:
        parts.append(f"CUDA {torch.version.cuda}")
    hip = getattr(torch.version, "hip", None)
    if hip:
        parts.append(f"ROCm {hip}")
    return ", ".join(parts)


def describe_device(device: torch.device | str) -> str:
    """One line for the start of a run: the device, its name, the torch and CUDA builds.

    ``device cuda:0 (NVIDIA H100 80GB HBM3), torch 2.5.1+cu124, CUDA 12.4`` or
    ``device cpu (2 threads), torch 2.13.0+cpu``.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        label, detail = f"cuda:{index}", torch.cuda.get_device_name(index)
    elif device.type == "cpu":
        label, detail = "cpu", f"{torch.get_num_threads()} threads"
    elif device.type == "mps":
        label, detail = "mps", "Apple GPU"
    else:
        label, detail = str(device), ""
    head = f"device {label} ({detail})" if detail else f"device {label}"
    return f"{head}, {_torch_build()}"


def nvidia_gpu_hint() -> str | None:
    """Evidence that this machine has an NVIDIA GPU (whatever torch thinks), or None."""
    if shutil.which("nvidia-smi"):
        return "nvidia-smi is installed"
    if os.path.exists(NVIDIA_PROC):
        return f"{NVIDIA_PROC} exists"
    return None


def cpu_fallback_warning(requested: str, device: torch.device | str) -> str | None:
    """A loud warning when ``requested`` (e.g. ``auto``) fell back to CPU on a GPU machine.

    None when the run is not on the CPU, when the CPU was asked for explicitly, or when
    nothing suggests an NVIDIA GPU. A CPU-only torch build on a GPU machine would otherwise
    turn a GPU run into a silent, hundred-times-slower CPU run.
    """
    import torch

    if str(requested) == "cpu" or torch.device(device).type != "cpu":
        return None
    hint = nvidia_gpu_hint()
    if hint is None:
        return None
    if torch.version.cuda is None:
        cause = (
            f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build "
            "(https://pytorch.org/get-started/locally/)"
        )
    else:
        cause = (
            f"this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no GPU; "
            "check the driver and CUDA_VISIBLE_DEVICES"
        )
    return (
        f"WARNING: running on CPU although this machine seems to have an NVIDIA GPU "
        f"({hint}): {cause}, or set train.device=cpu if CPU is intended"
    )
