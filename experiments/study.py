"""``python -m experiments.study``: the study's command line — one command per table.

    python -m experiments.study plan main                # the queue and what is done
    python -m experiments.study run main                 # train + measure (resumable)
    python -m experiments.study run main --workers 2     # split the queue (GPU: share it)
    python -m experiments.study report main              # tables, intervals, figures
    python -m experiments.study pack --scale paper --out .pack   # data for a device

``--scale`` picks the setting (``cpu`` by default; ``tiny`` for mechanics, ``paper`` on a
GPU). Results land in ``experiments/results/<scale>/`` (small JSON: commit them), runs
with their weights in ``experiments/runs/<scale>/`` (ignored by git). Stop it at any point
(Ctrl-C, SIGTERM, a time limit): the next ``run`` continues from the files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dnr.data import DataError
from dnr.errors import ConfigError
from dnr.rundir import ArtifactError
from dnr.training.guards import TrainingStopped
from experiments.pack import pack
from experiments.protocol import SCALES, TABLES, Run, runs_of
from experiments.report import write_report
from experiments.runner import Study

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.study",
        description=(__doc__ or "").split("\n")[0],
        allow_abbrev=False,  # --workers is rewritten for the workers, so spelled out
    )
    p.add_argument("command", choices=("plan", "run", "report", "pack"))
    p.add_argument(
        "table", nargs="?", choices=sorted(TABLES), help="the question (experiments/README.md)"
    )
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    p.add_argument("--seeds", help="comma-separated seeds (default: the scale's)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="where the npz files are")
    p.add_argument("--runs", type=Path, default=HERE / "runs", help="run directories (weights)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="result files")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the queue")
    p.add_argument("--limit", type=int, help="stop after this many runs are brought up to date")
    p.add_argument(
        "--minutes", type=float, help="start no run after this many minutes (a session's end)"
    )
    p.add_argument(
        "--autoattack", type=int, help="AutoAttack images (default: the scale's; 0 skips it)"
    )
    p.add_argument("--out", type=Path, help="pack: where the chunks and manifest go")
    p.add_argument("--chunk-mib", type=float, default=60.0, help="pack: largest chunk (MiB)")
    return p


def _seeds(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: distinct non-negative integers, got {text!r}")
    return seeds


def _study(args: argparse.Namespace) -> tuple[Study, list[Run]]:
    scale = SCALES[args.scale]
    if scale.data is not None and not args.data_dir.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such directory (the CIFAR-10 npz files)")
    study = Study(scale, args.runs, args.results, args.data_dir, autoattack=args.autoattack)
    return study, runs_of(TABLES[args.table], _seeds(args.seeds, scale.seeds))


def _plan(study: Study, runs: list[Run]) -> int:
    for run in runs:
        missing = study.missing(run)
        state = "done" if not missing else "todo" if "train" in missing else "measuring"
        print(
            f"{state:9} {run.table}/{run.key}"
            + (f"  (missing: {', '.join(missing)})" if missing else "")
        )
    return 0


def _run(study: Study, runs: list[Run], args: argparse.Namespace) -> int:
    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    done = 0
    for i, run in enumerate(runs, 1):
        if not study.missing(run):
            continue
        if deadline is not None and time.monotonic() > deadline:
            print(f"--minutes {args.minutes}: stopping before {run.key}; rerun to continue")
            break
        if args.limit is not None and done >= args.limit:
            break
        print(f"[{i}/{len(runs)}] {run.table}/{run.key}", flush=True)
        if study.process(run):
            done += 1
    left = sum(1 for r in runs if study.missing(r))
    print(f"{done} runs brought up to date; {left} of {len(runs)} not finished")
    return 0


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line without its ``--workers N`` / ``--workers=N``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--workers":
            skip = True
        elif not token.startswith("--workers="):
            out.append(token)
    return out


def _spawn_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """``--workers N``: N copies of this command, the machine's threads split among them."""
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "experiments.study", *_worker_argv(argv)]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(args.workers)]
    return max(p.wait() for p in procs)


def _threads() -> int:
    """OMP_NUM_THREADS when it is a positive integer, else torch's own choice."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else torch.get_num_threads()


def _pack(args: argparse.Namespace) -> int:
    scale = SCALES[args.scale]
    if scale.data is None:
        raise ConfigError(f"--scale {scale.name} reads no data files: nothing to pack")
    if args.out is None or args.chunk_mib <= 0:
        raise ConfigError("pack: give --out DIR (and a --chunk-mib above 0)")
    train, test = [args.data_dir / f for f in scale.data[0]], args.data_dir / scale.data[1]
    missing = [str(f) for f in (*train, test) if not f.is_file()]
    if missing:
        raise ConfigError(f"pack: no such data file {missing[0]} (see --data-dir)")
    manifest = pack(train, test, args.out, args.chunk_mib)
    print(f"wrote {manifest}; carry {args.out} (one chunk per call if over 64 MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers: at least 1, got {args.workers}")
        if args.command == "pack":
            return _pack(args)
        if args.table is None:
            raise ConfigError(f"{args.command}: name a table ({', '.join(sorted(TABLES))})")
        if args.command == "run" and args.workers > 1:
            return _spawn_workers(args, argv)
        study, runs = _study(args)
        if args.command == "plan":
            return _plan(study, runs)
        if args.command == "report":
            path = write_report(study, TABLES[args.table], runs)
            print(f"wrote {path}")
            return 0
        torch.set_num_threads(_threads())
        return _run(study, runs, args)
    except TrainingStopped as stopped:  # SIGTERM/SIGINT in training: its state is saved
        print(f"{stopped}\nrerun the same study command to continue", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:  # between saves: every finished part is on disk
        print("interrupted; rerun the same study command to continue", file=sys.stderr)
        return 130
    except (ConfigError, DataError, ArtifactError, OSError, json.JSONDecodeError) as err:
        where = f"{err.filename}: " if isinstance(err, OSError) and err.filename else ""
        print(f"study {args.command}: error: {where}{' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
