"""What several test files need: a tiny run's overrides, a quiet ``train``, a run's records.

Kept apart from conftest.py (fixtures only) so that a test imports a helper by name.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dnr.rundir import RunDir

# Keyword arguments of ``train`` for a test: no progress bar, no log lines.
QUIET: dict[str, Any] = {"show_progress": False, "log": lambda _msg: None}

# The reference DNR run (keywords of tiny_overrides): 10 % density, full redistribution,
# 3 epochs. conftest's session fixture ``reference_dnr_run`` trains it once per session.
REFERENCE_DNR: dict[str, object] = {
    "sparsity__method": "dnr",
    "sparsity__density": 0.1,
    "sparsity__redistribution": 1.0,
}

# The record fields that measure time: they differ between two runs of the same bits.
TIMING_KEYS = ("wall_seconds", "train_seconds", "images_per_sec")


def optional_import(name: str) -> ModuleType:
    """Import an optional extra (torchvision, timm), or skip the test saying why.

    Any exception counts, not only ImportError: the index's torchvision wheels link CUDA
    torch, so beside a CPU-only torch build ``import torchvision`` raises a RuntimeError.
    Every such test has a twin on a project model that runs everywhere.
    """
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any failure means the extra is not usable here
        pytest.skip(f"{name} does not import here ({type(err).__name__}: {err})")


def tiny_overrides(**extra: object) -> list[str]:
    """A run small enough for a unit test: tiny VGG16 on a digits subset, 2-step PGD.

    ``extra`` adds or replaces keys, written with ``__`` for the dot (``train__epochs=1``).
    """
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


def metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's per-epoch records, as ``metrics.jsonl`` holds them."""
    lines = RunDir(Path(run_dir)).metrics.read_text().splitlines()
    return [json.loads(line) for line in lines]


def strip_timing(records: Iterable[dict[str, Any]], *extra: str) -> list[dict[str, Any]]:
    """The records without their timings (and the ``extra`` keys): what must match bitwise."""
    drop = {*TIMING_KEYS, *extra}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def assert_same_weights(a: str | Path, b: str | Path) -> None:
    """The two runs' deployed weights are the same bits, tensor by tensor."""
    wa = load_file(str(RunDir(Path(a)).model_weights))
    wb = load_file(str(RunDir(Path(b)).model_weights))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# ------------------------------------------------------------ dataset files on disk
# (test_data and test_reliability_inputs build the formats the loaders read)

WNIDS = ["n01443537", "n01629819", "n01641577"]
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander",
    "n01641577": "bullfrog, Rana catesbeiana",
}
COLORS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}


def save_jpeg(
    path: Path, color: tuple[int, int, int] | int, mode: str = "RGB", size: int = 64
) -> None:
    """A one-colour JPEG, as Tiny ImageNet stores its images (``mode="L"``: grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color).save(path, "JPEG", quality=95)


def make_tiny(folder: Path) -> Path:
    """3 classes x 3 train images, 4 val images (one grayscale each), the original formats."""
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("".join(w + "\n" for w in WNIDS))
    lines = ["n00001740\tentity", *(f"{w}\t{WORDS[w]}" for w in WNIDS), "n15299783\tlast one"]
    (folder / "words.txt").write_text("\n".join(lines))  # no newline after the last line
    for c, wnid in enumerate(WNIDS):
        for name in ("0", "1", "10"):  # lexicographic, not numeric, order
            save_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{name}.JPEG", COLORS[c])
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{n}.JPEG\t0\t0\t63\t63\n" for n in ("0", "1", "10"))
        )
        (folder / "train" / wnid / "images" / ".DS_Store").write_bytes(b"\0junk")
    save_jpeg(folder / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG", 90, mode="L")
    val = [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1), ("val_3.JPEG", 0)]
    for name, c in val:
        save_jpeg(folder / "val" / "images" / name, COLORS[c])
    save_jpeg(folder / "val" / "images" / "val_3.JPEG", 170, mode="L")
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{WNIDS[c]}\t1\t2\t60\t61\n" for name, c in val)
    )
    save_jpeg(folder / "test" / "images" / "test_0.JPEG", (1, 2, 3))  # unlabelled: ignored
    return folder


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """An npz data file holding ``arrays`` (x, y, classes), for the ``npz`` dataset."""
    np.savez(path, **arrays)
    return path


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """``n`` seeded random HWC uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
