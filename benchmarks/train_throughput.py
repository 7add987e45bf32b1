"""Training throughput (images/s) of one DNR hybrid PGD-k step, dense and masked.

Measures the real training step, ``dnr.training.train_step`` (PGD on the current model,
hybrid loss, SGD step, the sparsity method's after-step hook), on random CIFAR-shaped data,
after warm-up.

    python benchmarks/train_throughput.py --model vgg16 --width 0.25 --steps 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dnr.config import load_config
from dnr.devices import resolve_device
from dnr.markdown import markdown_table
from dnr.models import create_model
from dnr.sparsity import Progress, build_sparsity
from dnr.training import build_optimizer, train_step

RESULTS = Path(__file__).resolve().parent / "results"


def measure(
    model_name: str, width: float, steps: int, batch: int, iters: int, method: str, device: str
) -> dict:
    cfg = load_config(
        None,
        [
            f"model.name={model_name}",
            f"model.width={width}",
            f"sparsity.method={method}",
            f"attack.steps={steps}",
            f"train.batch_size={batch}",
            f"train.device={device}",
        ],
    )
    dev = resolve_device(cfg.train.device)
    model = create_model(model_name, num_classes=10, width=width).to(dev)
    optimizer = build_optimizer(cfg, model)
    method_obj = build_sparsity(cfg, model, optimizer, torch.Generator().manual_seed(0))
    x = torch.rand(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    # rewiring happens at epoch ends, outside the measured step
    progress = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=iters + 2)
    times = []
    for i in range(iters + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        train_step(model, optimizer, x, y, cfg, method_obj, progress).loss.item()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "model": model_name,
        "width": width,
        "pgd_steps": steps,
        "batch_size": batch,
        "method": method,
        "device": str(dev),
        "median_step_seconds": median,
        "images_per_sec": batch / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = [
        measure(
            args.model, args.width, args.steps, args.batch_size, args.iters, method, args.device
        )
        for method in ("dense", "dnr")
    ]
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"train_throughput_{args.model}_w{args.width}_{args.device}"
    (RESULTS / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    table = markdown_table(
        ["model", "width", "PGD steps", "batch", "method", "device", "images/s"],
        [
            [
                r["model"],
                r["width"],
                r["pgd_steps"],
                r["batch_size"],
                r["method"],
                r["device"],
                f"{r['images_per_sec']:.1f}",
            ]
            for r in rows
        ],
    )
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
