"""Shared fixtures: tiny configurations that train in seconds on two CPU cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnr.config import Config, load_config
from helpers import QUIET, REFERENCE_DNR, tiny_overrides

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models in a thread pool that shares its cores with other
    jobs spend most of each small op waiting at barriers (timings, exports)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference_dnr_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference DNR run, trained once for every file that reads it (read-only: a test
    that changes a run trains or copies its own). One thread, as each torchrun rank."""
    from dnr.training import train

    out = tmp_path_factory.mktemp("reference") / "dnr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, tiny_overrides(**REFERENCE_DNR)), out, **QUIET)
    finally:
        torch.set_num_threads(threads)
    return out


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
