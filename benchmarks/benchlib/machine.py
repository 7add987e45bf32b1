"""Shared helpers of the speed benchmarks (``train_throughput.py``, ``data_throughput.py``).

Machine description, the exact command, the images the benchmarks train on, device
synchronisation and writing JSON + Markdown results. Not a benchmark itself.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CIFAR_PART = ROOT.parent / "shared" / "data" / "cifar10_train_part0.npz"


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU), so a clock reading is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def cpu_name() -> str:
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


def load_images(n: int, source: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` CIFAR-shaped images: uint8 (N, 32, 32, 3) and int64 labels, and their origin.

    ``source``: ``cifar`` (the first ``n`` rows of ``../shared/data/cifar10_train_part0.npz``),
    ``random`` (seeded uniform uint8) or ``auto`` (CIFAR when the file is there).
    """
    if source == "auto":
        source = "cifar" if CIFAR_PART.is_file() else "random"
    if source == "cifar":
        with np.load(CIFAR_PART) as data:
            x, y = data["x"], data["y"]
        if len(y) < n:  # repeat rows to reach n (only for n beyond the file's 25,000)
            reps = -(-n // len(y))
            x, y = np.concatenate([x] * reps), np.concatenate([y] * reps)
        return (
            np.ascontiguousarray(x[:n]),
            y[:n].astype(np.int64),
            f"CIFAR-10 ({CIFAR_PART.name})",
        )
    if source != "random":
        raise ValueError(f"--data must be auto, cifar or random, got {source!r}")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n, dtype=np.int64)
    return x, y, "random uint8"


def spread(values: Sequence[float]) -> float:
    """Half the range relative to the median: how much the repeats disagree (0 for one)."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / 2 / statistics.median(values)


def write_results(out_dir: Path, name: str, info: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote {out_dir / name}.json and .md")
