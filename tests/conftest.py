"""Shared fixtures: tiny configurations that train in seconds on two CPU cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnr.config import Config, load_config

torch.set_num_threads(2)


def tiny_overrides(**extra: object) -> list[str]:
    """A run small enough for a unit test: tiny VGG16 on a digits subset, 2-step PGD."""
    values: dict[str, object] = {
        "data.name": "digits",
        "data.subset": 192,
        "data.val_size": 64,
        "model.name": "vgg16",
        "model.width": 0.0625,
        "attack.steps": 2,
        "attack.step_size": 0.02,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 0.05,
        "train.schedule": "cosine",
        "train.device": "cpu",
        "eval.subset": 64,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models in a thread pool that shares its cores with other
    jobs spend most of each small op waiting at barriers (timings, exports)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> Config:
    return load_config(None, tiny_overrides())


@pytest.fixture
def npz_files(tmp_path):
    """Two train shards and a test file in the shared-data npz format (class-dependent means)."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, size=n)
        base = (y[:, None, None, None] * 60 + 20).astype(np.int64)
        x = np.clip(base + rng.integers(-20, 20, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, y.astype(np.int64)

    paths = []
    for name, n in (("train0", 96), ("train1", 96), ("test", 64)):
        x, y = make(n)
        path = tmp_path / f"{name}.npz"
        np.savez_compressed(path, x=x, y=y)
        paths.append(path)
    return paths
