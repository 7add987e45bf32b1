"""Collect finished run directories into one comparison table (Markdown + JSON).

Reads only what runs wrote (model.json, metrics.jsonl, eval.json, masks in best.pt), and
checks the sparsity invariants on the saved artifacts: active weights == round(d·N), masked
weights exactly zero in model.safetensors.

    python benchmarks/summarize_runs.py runs/c10_vgg16_dnr runs/c10_resnet18_dnr \
        --name reduced_scale_cifar10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dnr.checkpoints import load_checkpoint
from dnr.fileio import read_jsonl
from dnr.markdown import markdown_table
from dnr.modelfile import read_model_meta
from dnr.rundir import RunDir

RESULTS = Path(__file__).resolve().parent / "results"


def summarize(path: Path) -> dict:
    """One finished run's row, its sparsity invariants re-checked on the saved artifacts."""
    run = RunDir(path)
    meta = read_model_meta(path)
    sparsity = meta.get("sparsity", {})
    row: dict = {
        "run": str(path),
        "arch": meta["architecture"]["name"],
        "width": meta["architecture"]["width"],
        "method": sparsity.get("method"),
        "target_density": sparsity.get("target_density"),
        "selected_epoch": meta.get("selection", {}).get("epoch"),
    }
    best = load_checkpoint(run.best_checkpoint)
    masking = best.get("sparsity", best.get("masking"))  # checkpoint format 2, or 1
    if masking and "masks" in masking:
        masks = masking["masks"]
        weights = load_file(str(run.model_weights))
        total = sum(m.numel() for m in masks.values())
        active = sum(int(m.sum()) for m in masks.values())
        row.update(
            prunable=total,
            active=active,
            budget_exact=active == round(row["target_density"] * total),
            nonzero_outside_mask=sum(
                int(torch.count_nonzero(weights[k][~m])) for k, m in masks.items()
            ),
            layer_density_min=min(float(m.float().mean()) for m in masks.values()),
            layer_density_max=max(float(m.float().mean()) for m in masks.values()),
        )
    history = read_jsonl(run.metrics)
    if history:
        row["epochs"] = len(history)
        row["images_per_sec_last_epoch"] = round(history[-1]["images_per_sec"], 1)
        row["val_clean_acc"] = history[-1].get("val_clean_acc")
        row["val_pgd_acc"] = history[-1].get("val_pgd_acc")
    if run.eval_json.exists():
        document = json.loads(run.eval_json.read_text())
        row["test_examples"] = document.get("num_examples")
        row.update({f"test_{r['name']}": r["accuracy"] for r in document["results"]})
    return row


def main() -> None:
    """Summarise the runs given; write JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="runs_summary")
    args = parser.parse_args()
    rows = [summarize(p) for p in args.runs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    table = markdown_table(
        keys,
        [
            [f"{v:.4f}" if isinstance(v, float) else v for v in (r.get(k, "") for k in keys)]
            for r in rows
        ],
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
