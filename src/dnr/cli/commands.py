"""The ``dnr`` subcommands: each turns parsed arguments into library calls and prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dnr.cli.listing import LIST_KINDS, format_entries
from dnr.config import ConfigError, EvalConfig, load_config


def _log_for(quiet: bool) -> Callable[[str], None]:
    """Where a command's log lines go: nowhere with --quiet, else stdout, flushed."""
    return (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))


def _cmd_train(args: argparse.Namespace) -> int:
    from dnr.rundir import RunDir
    from dnr.runner import run_train
    from dnr.training.guards import TrainingStopped

    if args.out is None and not args.print_config:
        args.parser.error("the following arguments are required: --out")
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts afresh and --resume continues: give one of them")
    config_path = args.config
    if config_path is None and args.resume and args.out:
        config_path = RunDir(args.out).config  # resume with the run's own config
        if not config_path.exists():  # a mistyped --out must not start a default run
            raise ConfigError(
                f"--resume: {args.out} holds no run to resume (no config.yaml); give --config "
                "to start the run there"
            )
    cfg = load_config(config_path, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    log = _log_for(args.quiet)
    progress = False if args.quiet else None
    if args.overwrite:
        _clear_run(args.out)
    try:
        result, report = run_train(
            cfg, args.out, resume=args.resume, progress=progress, evaluate=not args.no_eval, log=log
        )
    except TrainingStopped as stopped:  # SIGINT/SIGTERM: the state was saved first
        print(f"\n{stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint is the resume point
        print(
            f"\ninterrupted; continue with: dnr train --resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    if report is not None:
        print(report.to_markdown())
    if result.is_main:  # under torchrun, one line from rank 0
        print(f"run directory: {result.run_dir}")
    return 0


def _clear_run(out: Path) -> None:
    """``--overwrite``: remove the earlier run's files before training starts (said on
    stderr even with --quiet: it deletes files).

    Under torchrun only rank 0 deletes. It does so before it joins the process group, and
    the other ranks look at the directory only after the group has formed, so none of
    them sees a half-cleared run.
    """
    from dnr.training.writer import RunWriter

    removed = RunWriter(out, enabled=os.environ.get("RANK", "0") == "0").clear()
    if removed:
        names = ", ".join(p.relative_to(out).as_posix() for p in removed)
        print(f"--overwrite: removed the earlier run's {names} in {out}", file=sys.stderr)


def _cmd_eval(args: argparse.Namespace) -> int:
    from dnr.devices import resolve_device
    from dnr.runner import EvalTarget, run_eval

    # The optional positional TARGET takes the first positional word, which may be an
    # override (`dnr eval --weights w.pt data.name=npz ...`): sort them by their shape.
    words = ([args.target] if args.target else []) + list(args.overrides)
    targets = [w for w in words if "=" not in w or Path(w).exists()]
    overrides = [w for w in words if w not in targets]
    if len(targets) > 1:
        raise ConfigError(f"give one run directory or model file, got {', '.join(targets)}")
    path = targets[0] if targets else None
    if args.arch is not None:
        print("dnr eval: --arch is deprecated; use --model", file=sys.stderr)
        if args.model is not None and args.model != args.arch:
            raise ConfigError("--arch is the old name of --model; give only --model")
    model = args.model or args.arch
    if path and args.weights:
        raise ConfigError("give either a run directory/model file or --weights, not both")
    resolve_device(args.device)  # an unavailable device fails before anything is loaded
    target = EvalTarget(
        path=path,
        model=model,
        weights=args.weights,
        num_classes=args.num_classes,
        width=args.width,
        input_size=args.input_size,
    )
    options = EvalConfig(
        protocol=args.protocol,
        subset=args.subset,
        seed=args.seed,
        sanity=not args.no_sanity,
        eps=args.eps,
        norm=args.norm,
        batch_size=args.batch_size,
    )
    report = run_eval(
        target,
        options,
        data_overrides=overrides,
        device=args.device,
        out_dir=args.out,
        progress=False if (args.quiet or args.json) else None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_markdown())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dnr.report import plot_layer_density, write_report, write_training_curves

    plot_layer_density(args.run_dir)
    curves = write_training_curves(args.run_dir)
    path = write_report(args.run_dir, latency=not args.no_latency)
    print(path.read_text(), end="")
    if curves is not None:
        print(f"training curves: {curves}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dnr.export import export_run

    result = export_run(args.run_dir, args.format, args.out)
    for path in result.files:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    for note in result.notes:
        print(note)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dnr.compare import parse_seeds
    from dnr.demo import format_demo, run_demo

    summary = run_demo(
        args.out,
        seeds=parse_seeds(args.seeds),
        progress=False if args.quiet else None,
        overrides=args.overrides,
        log=_log_for(args.quiet),
    )
    print()
    print(format_demo(summary, args.out))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from dnr.compare import parse_seeds, run_compare

    methods = None if args.methods is None else args.methods.split(",")
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    try:
        path = run_compare(
            args.config,
            args.out,
            methods,
            args.overrides,
            seeds=seeds,
            reference=args.reference,
            noise_floor=args.noise_floor,
            progress=False if args.quiet else None,
            log=_log_for(args.quiet),
        )
    except KeyboardInterrupt:
        print(
            "\ninterrupted; run the same dnr compare command again to continue "
            "(finished runs are reused, the interrupted one resumes)",
            file=sys.stderr,
        )
        return 130
    print()
    print(path.read_text(), end="")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.kind is not None:
        for name, _ in LIST_KINDS[args.kind]():
            print(name)
        return 0
    for kind, rows in LIST_KINDS.items():
        print(f"{kind}:")
        print(format_entries(rows()))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "report": _cmd_report,
    "export": _cmd_export,
    "demo": _cmd_demo,
    "compare": _cmd_compare,
    "list": _cmd_list,
}
