"""What the figures were measured on, and clocks that wait for the device.

The header of every speed benchmark's results names the machine, the software and the
exact command, so a figure can be measured again and compared.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU), so a clock reading is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def now(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done."""
    sync(device)
    return time.perf_counter()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on, and how to measure them again."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_conv"] = torch.backends.cudnn.allow_tf32
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """The header of a results Markdown file."""
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores"
    return [
        f"- machine: {where}; device `{info['device']}`; torch {info['torch']}, "
        f"{info['threads']} CPU threads; Python {info['python']}",
        f"- measured {info['date']} with `{info['command']}`",
    ]
