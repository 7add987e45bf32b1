"""Does our AutoAttack path give exactly the reference package's robust accuracy?

Runs ``dnr.robustness.evaluate_model(protocol="autoattack")`` and, on the same model, the same
seeded subset, the same seed and batch size, pyautoattack's own
``AutoAttack(...).run_standard_evaluation``; reports both accuracies, whether they (and the
per-example verdicts) are identical, and the time each took. Writes
``benchmarks/results/autoattack_parity.json`` (or ``--out``).

Without ``--run`` the model is a random-init VGG16 (``--width``, default 0.125) trained for
``--train-steps`` SGD steps on synthetic class-pattern images (an untrained deep net's
output barely depends on its input, so nothing would be attacked). Usage::

    python benchmarks/autoattack_parity.py                         # tiny VGG16, CPU
    python benchmarks/autoattack_parity.py --run runs/vgg16_d005 --subset 200 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.fileio import atomic_write_json
from dnr.robustness import EvalReport, evaluate_model, select_subset

RESULTS = Path(__file__).resolve().parent / "results" / "autoattack_parity.json"


def synthetic_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 32x32 images: one of 10 smooth random colour patterns per class, plus noise."""
    patterns = torch.nn.functional.interpolate(
        torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(1234)),
        size=32,
        mode="bilinear",
        align_corners=False,
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.25 + 0.5 * patterns[y] + 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def small_model(
    width: float, steps: int, n: int, seed: int
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """VGG16 (random init) trained for ``steps`` SGD steps on synthetic data.

    A purely random deep net's output hardly depends on its input (every example is
    "robust" because nothing moves the logits), which makes a degenerate comparison; a
    few training steps give real margins, so the attacks have work to do.
    """
    from dnr.models import create_model

    torch.manual_seed(seed)
    model = create_model("vgg16", num_classes=10, input_size=32, width=width)
    x_train, y_train = synthetic_data(64 * max(1, steps), seed + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(steps):
        xb = x_train[64 * i : 64 * (i + 1)].float() / 255
        loss = nn.functional.cross_entropy(model(xb), y_train[64 * i : 64 * (i + 1)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = synthetic_data(n, seed + 2)
    return (
        model,
        x,
        y,
        (f"vgg16 width={width}, random init + {steps} SGD steps on synthetic class patterns"),
    )


def run_model(path: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """A trained model and its test split."""
    from dnr.data import load_dataset
    from dnr.modelfile import load_model, read_model_meta
    from dnr.runner import data_config_from_meta

    model = load_model(path)
    data = load_dataset(replace(data_config_from_meta(read_model_meta(path), []), subset=None))
    return model, data.test.x, data.test.y, f"{path} ({data.meta.name} test split)"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--run", help="run directory or model.json (default: random tiny VGG16)")
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="seeded random subset (default: 32 for the random model, 200 for --run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument(
        "--train-steps", type=int, default=40, help="SGD steps for the model built without --run"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest for tiny models)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def run_reference(
    auto_attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    subset: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """pyautoattack's own standard evaluation on the same seeded subset as ours."""
    indices = select_subset(len(y), subset, args.seed)
    rows = torch.arange(len(y)) if indices is None else torch.tensor(indices)
    x_ref = x[rows]
    x_ref = x_ref.float().div(255) if x_ref.dtype == torch.uint8 else x_ref.float()
    y_ref = y[rows].long()
    for p_ in model.parameters():
        p_.requires_grad_(False)
    started = time.perf_counter()
    adversary = auto_attack(
        model, norm=args.norm, eps=args.eps, version="standard", device=device, seed=args.seed
    )
    _, y_adv = adversary.run_standard_evaluation(x_ref, y_ref, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    correct = y_adv.cpu() == y_ref
    return {
        "indices": indices,
        "n": int(len(y_ref)),
        "correct": correct,
        "accuracy": float(correct.float().mean()),
        "seconds": seconds,
    }


def result_record(
    description: str,
    device: torch.device,
    args: argparse.Namespace,
    report: EvalReport,
    ours_seconds: float,
    ref: dict[str, Any],
) -> dict[str, Any]:
    """Both robust accuracies, whether they agree per example, settings and versions."""
    ours = report.result("autoattack")
    return {
        "model": description,
        "device": str(device),
        "num_examples": ref["n"],
        "subset_indices": ref["indices"],
        "seed": args.seed,
        "eps": args.eps,
        "norm": args.norm,
        "batch_size": args.batch_size,
        "clean_accuracy": report.result("clean").accuracy,
        "ours": {
            "robust_accuracy": ours.accuracy,
            "seconds": round(ours_seconds, 2),
            "settings": ours.settings,
            "details": ours.details,
        },
        "reference": {
            "robust_accuracy": ref["accuracy"],
            "seconds": round(ref["seconds"], 2),
            "call": "AutoAttack(model, norm, eps, version='standard', device, seed)"
            ".run_standard_evaluation(x, y, batch_size)",
        },
        "identical_accuracy": ours.accuracy == ref["accuracy"],
        "identical_per_example": bool(torch.equal(ours.correct, ref["correct"])),
        "versions": report.versions | {"platform": platform.platform()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Our AutoAttack and pyautoattack's on one model and subset; write the comparison."""
    args = parse(argv)

    from pyautoattack import AutoAttack

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.run:
        model, x, y, description = run_model(args.run)
        subset = args.subset or 200
    else:
        subset = args.subset or 32
        model, x, y, description = small_model(args.width, args.train_steps, 4 * subset, args.seed)
    model = model.to(device).float().eval()

    started = time.perf_counter()
    report = evaluate_model(
        model,
        x,
        y,
        protocol="autoattack",
        eps=args.eps,
        norm=args.norm,
        subset=subset,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        sanity=False,
        progress=False,
    )
    ours_seconds = time.perf_counter() - started
    ref = run_reference(AutoAttack, model, x, y, subset, args, device)
    result = result_record(description, device, args, report, ours_seconds, ref)
    atomic_write_json(args.out, result)
    print(
        f"ours {100 * report.result('autoattack').accuracy:.2f}%  "
        f"reference {100 * ref['accuracy']:.2f}%  "
        f"identical={result['identical_accuracy']} per-example={result['identical_per_example']}"
        f"  ({ours_seconds:.1f}s / {ref['seconds']:.1f}s) -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
