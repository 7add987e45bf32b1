"""Bitwise fingerprints of short training runs: every method, both granularities.

A refactor that claims "behaviour unchanged" runs this before and after, on the same machine,
torch and thread count, and compares the two files: each run's final-weights digest and its
test accuracies must be identical. Not a test: the digests depend on the torch build and CPU.

    OMP_NUM_THREADS=1 python benchmarks/fingerprint.py --out runs/fingerprint --json before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

import dnr
from dnr.config import load_config
from dnr.runner import run_train

#: (label, overrides) of each run: three epochs of the demo preset, 100 test digits
CASES: list[tuple[str, list[str]]] = [
    ("dense", ["sparsity.method=dense"]),
    ("static", ["sparsity.method=static"]),
    ("dnr", ["sparsity.method=dnr"]),
    ("dnr-paper", ["sparsity.method=dnr-paper"]),
    ("flyingbird", ["sparsity.method=flyingbird"]),
    (
        "hydra",
        [
            "sparsity.method=hydra",
            "sparsity.options={hydra: {pretrain_epochs: 1, prune_epochs: 1}}",
        ],
    ),
    ("lwm", ["sparsity.method=lwm", "sparsity.options={lwm: {pretrain_epochs: 1}}"]),
    (
        "admm",
        ["sparsity.method=admm", "sparsity.options={admm: {pretrain_epochs: 1, admm_epochs: 1}}"],
    ),
    ("dnr-channel", ["sparsity.method=dnr", "sparsity.granularity=channel"]),
    (
        "dnr-channel-macs",
        ["sparsity.method=dnr", "sparsity.granularity=channel", "sparsity.budget=macs"],
    ),
    ("static-channel", ["sparsity.method=static", "sparsity.granularity=channel"]),
    (
        "lasso-channel",
        [
            "sparsity.method=lasso",
            "sparsity.granularity=channel",
            "sparsity.options={lasso: {sparsify_epochs: 1}}",
        ],
    ),
    (
        "admm-channel",
        [
            "sparsity.method=admm",
            "sparsity.granularity=channel",
            "sparsity.options={admm: {pretrain_epochs: 1, admm_epochs: 1}}",
        ],
    ),
]
COMMON = ["train.epochs=3", "eval.subset=100", "sparsity.density=0.1"]


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor (in name order):
    written here, not imported, so the digest means the same before and after a refactor."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(label: str, overrides: list[str], out: Path) -> dict[str, object]:
    """Train one case afresh and return its digests and accuracies."""
    run_dir = out / label
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config("demo", [*COMMON, *overrides])
    result, report = run_train(cfg, run_dir, progress=False, log=lambda _msg: None)
    assert report is not None
    return {
        "weights_sha256": weights_digest(result.model.state_dict()),
        "accuracy": {r.name: r.accuracy for r in report.results},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fingerprint"))
    parser.add_argument("--json", type=Path, required=True, help="where to write the digests")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    args = parser.parse_args()
    found: dict[str, object] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "package": str(Path(dnr.__file__).parent),
    }
    for label, overrides in CASES:
        if args.only and label not in args.only:
            continue
        found[label] = fingerprint(label, overrides, args.out)
        print(label, json.dumps(found[label]), flush=True)
    args.json.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
