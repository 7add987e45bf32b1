"""A requeue loop under fire: `dnr train`, `dnr compare` and `dnr export` SIGKILLed at seeded
random moments, each time followed by the same command, until it finishes.

What a cluster does to a pre-empted job: kill it without warning (SIGKILL, no handler runs)
and start the same command line again. Each command is first run once uninterrupted. Then
episodes, each in a fresh directory: the command is killed after a delay drawn uniformly
from the uninterrupted run's wall time (so kills land in start-up, training, checkpoint
writes, validation, evaluation, a compare between its runs, an export's swap) and launched
again, until a launch finishes; episodes go on until the kill budget is spent. Every
episode must end in the same bits: final weights and masks, the metrics, the evaluation
(timings aside), every compared run's, the exported file. Writes ``results/chaos.json``
and ``results/chaos.md``.

    python benchmarks/chaos.py --kills 30 10 10 --seed 0 --out runs/chaos
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchlib.machine import machine_info, machine_lines
from benchlib.results import write_results
from dnr.fileio import read_jsonl
from dnr.markdown import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
#: A run that takes seconds: VGG16 at 1/16 width on 192 digits, 3 epochs of PGD-2, a step
#: checkpoint every 2 steps, DNR rewiring every epoch, a 64-image evaluation.
CONFIG = """\
data: {name: digits, subset: 192, val_size: 64}
model: {name: vgg16, width: 0.0625}
attack: {steps: 2, step_size: 0.02}
train: {epochs: 3, batch_size: 32, lr: 0.05, schedule: cosine, device: cpu, checkpoint_every: 2}
sparsity: {method: dnr, density: 0.3}
eval: {subset: 64}
"""
TIMING = {"seconds", "wall_seconds", "train_seconds", "images_per_sec"}


def commands(config: Path, root: Path) -> dict[str, list[str]]:
    """The three commands; export exports ``root/train`` (the caller may point it elsewhere)."""
    dnr = [sys.executable, "-m", "dnr"]
    return {
        "train": [*dnr, "train", "--config", str(config), "--resume", "--quiet", "--out"],
        "compare": [*dnr, "compare", "--config", str(config), "--methods", "static,dnr",
                    "--quiet", "--out"],
        "export": [*dnr, "export", str(root / "train"), "--format", "sparse", "--out"],
    }  # fmt: skip


def run_once(cmd: list[str], out: Path) -> float:
    """Run ``cmd`` to the end; its wall time (a failure stops the benchmark)."""
    started = time.perf_counter()
    proc = subprocess.run([*cmd, str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} {out} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def attempt(cmd: list[str], out: Path, delay: float | None) -> bool:
    """One launch of ``cmd``: True if SIGKILLed after ``delay`` seconds, False if it
    finished first (a failure stops the benchmark)."""
    proc = subprocess.Popen([*cmd, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return True
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} {out} failed: {err.decode()[-2000:]}")
    return False


def under_fire(
    name: str, cmd: list[str], root: Path, kills: int, span: float, rng: random.Random
) -> dict[str, Any]:
    """Episodes, each in a fresh directory: launch ``cmd``, SIGKILL it after a random delay,
    launch it again, ... until one launch finishes; then compare with the uninterrupted
    output. Episodes go on until ``kills`` kills have been dealt."""
    episodes: list[dict[str, Any]] = []
    dealt = 0
    reference = fingerprint(name, root.parent / "straight" / name)
    while dealt < kills:
        out = root / f"{name}{len(episodes)}"
        delays: list[float] = []
        while attempt(cmd, out, delay := rng.uniform(0.0, span) if dealt < kills else None):
            delays.append(round(delay or 0.0, 2))
            dealt += 1
        same = fingerprint(name, out) == reference
        episodes.append({"kills": len(delays), "kill_after_seconds": delays, "identical": same})
    return {
        "kills": dealt,
        "episodes": len(episodes),
        "identical": all(e["identical"] for e in episodes),
        "per_episode": episodes,
    }


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_timing(value: Any) -> Any:
    """``value`` with every wall-clock field dropped (they are the one thing a kill changes)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def run_fingerprint(run: Path) -> dict[str, Any]:
    """What must not change: the weights' bytes, metrics and evaluation without timings."""
    return {
        "weights": digest(run / "model.safetensors"),
        "metrics": without_timing(read_jsonl(run / "metrics.jsonl")),
        "eval": without_timing(json.loads((run / "eval.json").read_text())["results"]),
    }


def fingerprint(name: str, out: Path) -> dict[str, Any]:
    """The fingerprint of one command's output directory."""
    if name == "train":
        return run_fingerprint(out)
    if name == "compare":
        return {m: run_fingerprint(out / m) for m in ("static", "dnr")}
    return {"weights": digest(out / "model.safetensors")}


def render(record: dict[str, Any]) -> str:
    """The Markdown report: kills, attempts and the verdict per command."""
    rows = [
        [name, r["kills"], r["episodes"], f"{r['straight_seconds']:.1f}", r["identical"]]
        for name, r in record["commands"].items()
    ]
    table = markdown_table(
        ["command", "SIGKILLs", "episodes", "uninterrupted s", "same bits (every episode)"], rows
    )
    return "\n".join(
        [
            "# Chaos: SIGKILL at seeded random moments, the same command until it finishes",
            "",
            *machine_lines(record["machine"]),
            "",
            table,
            "",
            f"Total kills: {record['total_kills']}; the same bits as the uninterrupted runs: "
            f"{record['identical']} (weights, masks via the weights, metrics and evaluation "
            "without their timings; every compared run; the exported file).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, nargs=3, default=[30, 10, 10],
                        metavar=("TRAIN", "COMPARE", "EXPORT"))  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/chaos"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    config = args.out / "tiny.yaml"
    config.write_text(CONFIG)
    rng = random.Random(args.seed)
    straight, chaos = args.out / "straight", args.out / "chaos"
    record: dict[str, Any] = {"commands": {}}
    for (name, cmd), kills in zip(commands(config, straight).items(), args.kills):
        span = run_once(cmd, straight / name)
        fire_cmd = commands(config, chaos)[name]  # export: the chaos run's model
        if name == "export":  # the model the episodes export: the train episodes' first
            fire_cmd = [*fire_cmd[:4], str(chaos / "train0"), *fire_cmd[5:]]
        result = under_fire(name, fire_cmd, chaos, kills, span, rng)
        record["commands"][name] = {**result, "straight_seconds": span}
        print(name, json.dumps(record["commands"][name]), flush=True)
    record["total_kills"] = sum(r["kills"] for r in record["commands"].values())
    record["identical"] = all(r["identical"] for r in record["commands"].values())
    record["machine"] = machine_info(torch.device("cpu"))
    write_results(RESULTS, "chaos", record, render(record))


if __name__ == "__main__":
    main()
