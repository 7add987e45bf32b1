"""The ``dnr`` command. Parses arguments, calls the library, maps user errors to exit codes.

Exit codes: 0 success, 2 a user mistake (bad config, missing data, bad artifact; printed as
one line, no traceback), 130 interrupted (resume with ``dnr train --resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from dnr.config import ConfigError, EvalConfig, Norm, load_config

EPILOG_TRAIN = """\
overrides are dotted KEY=VALUE pairs parsed as YAML, applied after --config:
  train.epochs=2  model.width=0.25  data.name=npz  data.train=[a.npz,b.npz]
  sparsity.method=dnr  sparsity.density=0.05  attack.steps=7  train.device=cuda
sections: data, model, attack, train, sparsity, eval; every key with its default is in
the bundled presets (vgg16_cifar10, resnet18_cifar10, vgg16_cifar100, resnet18_cifar100,
vgg16_tiny-imagenet, demo), e.g. configs/vgg16_cifar10.yaml in the repository
"""


PROTOCOL_NAMES = ["dnr", "pgd20", "pgd50", "cw", "autoattack", "full"]  # interim


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (dense, DNR or static-sparse) and evaluate it",
        description="Train with the DNR hybrid loss into one run directory, then evaluate "
        "on the test set. Interrupt at any time; --resume continues from the last epoch.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file or bundled preset name (e.g. vgg16_cifar10); default: built-in defaults")
    p.add_argument("--out", type=Path, required=True, help="run directory for every artifact")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate clean / FGSM / PGD / AutoAttack accuracy",
        description="Evaluate a run directory, a model.json/model.safetensors pair, or a plain "
        "state dict of a registry architecture (--arch/--num-classes/--weights).",
        epilog="protocols: dnr (FGSM + PGD-7, eps 0.031, step 0.01: the released code's), "
        "pgd20, pgd50, cw, autoattack, full (all, with the per-example worst case).\n"
        "data.* overrides select the test data, e.g. data.name=npz data.test=test.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="?", help="run directory, model.json or model.safetensors")
    p.add_argument("--protocol", default="dnr", choices=PROTOCOL_NAMES,
                   help="evaluation protocol (default: dnr)")
    p.add_argument("--subset", type=_positive_int, help="seeded random test subset of N examples")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset and random starts")
    p.add_argument("--eps", type=_positive_float, help="attack radius in [0,1] pixel units (default: the protocol's)")
    p.add_argument("--norm", default="Linf", choices=list(get_args(Norm)),
                   help="threat model (L2: AutoAttack only)")
    p.add_argument("--batch-size", type=_positive_int, help="evaluation batch size (default: chosen to fit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", type=Path, help="write eval.json/eval.md here (default: the run directory)")
    p.add_argument("--json", action="store_true", help="print the machine-readable result")
    p.add_argument("--no-sanity", action="store_true", help="skip the gradient-masking sanity checks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--arch", help="registry architecture of --weights (vgg16, resnet18)")
    p.add_argument("--weights", help="plain state dict (.pt/.pth/.safetensors) to evaluate")
    p.add_argument("--num-classes", type=_positive_int, help="output classes of --weights")
    p.add_argument("--width", type=_positive_float, default=1.0, help="width multiplier of --weights")
    p.add_argument("--input-size", type=int, default=32, choices=[32, 64])
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a run: per-layer density, compression, evaluation",
        description="Print (and write RUN_DIR/report.md) the compression table counted over "
        "prunable weights and the latest evaluation.",
    )
    p.add_argument("run_dir", type=Path)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="dense vs. static mask vs. DNR at 20x on the embedded digits data "
        "(CPU, about two minutes)",
        description="Train a dense model, a fixed random mask (static, the control) and DNR "
        "with one recipe on the bundled digits, evaluate all three and print "
        "clean / FGSM / PGD accuracy and the compression.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
    from dnr import __version__

    parser = argparse.ArgumentParser(
        prog="dnr",
        description="torch-dnr: train compressed, adversarially robust networks in one run "
        "(Dynamic Network Rewiring), evaluate them honestly, report what they keep.",
    )
    parser.add_argument("--version", action="version", version=f"torch-dnr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_demo(sub)
    return parser


def _log_for(quiet: bool):
    return (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))


def _cmd_train(args: argparse.Namespace) -> int:
    from dnr.artifacts import RunDir
    from dnr.runner import run_train

    config_path = args.config
    if config_path is None and args.resume and RunDir(args.out).config.exists():
        config_path = RunDir(args.out).config  # resume with the run's own config
    cfg = load_config(config_path, args.overrides)
    log = _log_for(args.quiet)
    progress = False if args.quiet else None
    try:
        result, report = run_train(
            cfg, args.out, resume=args.resume, progress=progress, evaluate=not args.no_eval, log=log
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue with: dnr train --resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    if report is not None:
        print(report.to_markdown())
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dnr.runner import EvalTarget, run_eval

    if args.target and "=" in args.target and not Path(args.target).exists():
        args.overrides.insert(0, args.target)  # argparse took the first override as target
        args.target = None
    target = EvalTarget(
        path=args.target,
        arch=args.arch,
        weights=args.weights,
        num_classes=args.num_classes,
        width=args.width,
        input_size=args.input_size,
    )
    if args.target and args.weights:
        raise ConfigError("give either a run directory/model file or --weights, not both")
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
        data_overrides=args.overrides,
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
    from dnr.report import plot_layer_density, write_report

    plot_layer_density(args.run_dir)
    path = write_report(args.run_dir)
    print(path.read_text(), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dnr.runner import format_demo, run_demo

    summary = run_demo(
        args.out,
        progress=False if args.quiet else None,
        overrides=args.overrides,
        log=_log_for(args.quiet),
    )
    print()
    print(format_demo(summary, args.out))
    return 0


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "report": _cmd_report, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    from dnr.artifacts import ArtifactError
    from dnr.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, ArtifactError) as err:
        print(f"dnr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
