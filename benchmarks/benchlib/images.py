"""The CIFAR-shaped images the speed benchmarks train on (real ones when they are here)."""

from __future__ import annotations

import numpy as np

from benchlib.results import ROOT

CIFAR_PART = ROOT.parent / "shared" / "data" / "cifar10_train_part0.npz"


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
