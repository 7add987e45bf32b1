"""The ``dnr`` argument parser: subcommands, options, help text read from the registries."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, get_args

from dnr.cli.argtypes import device, positive_float, positive_int, registered
from dnr.cli.listing import LIST_KINDS, entries, format_entries, list_kind, names, preset_entries
from dnr.config import Config, Norm, name_fields

# Nothing here names a model, method, dataset or protocol: those come from dnr.registry.
# The registries import torch, so help text that lists them is built only when printed.


class Subcommands(Protocol):
    """What ``add_subparsers()`` returns, as far as the ``_add_*`` functions use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with two additions for the ``dnr`` subcommands.

    ``intermixed=True``: options and positionals (``KEY=VALUE`` overrides) in any order,
    through argparse's intermixed parsing. argparse refuses that on a parser that has
    subcommands, so the top-level parser parses normally and each subcommand's parser,
    handed the rest of the line, parses it intermixed.

    ``epilog_factory``: a function that builds the epilog when the help is printed, so that
    ``dnr --help`` does not import torch to list registry names.
    """

    def __init__(
        self,
        *args: Any,
        intermixed: bool = False,
        epilog_factory: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._intermixed = intermixed
        self._intermixing = False
        self._epilog_factory = epilog_factory

    def format_help(self) -> str:
        """The help, with the epilog built now (its registry names import torch)."""
        if self._epilog_factory is not None:
            self.epilog, self._epilog_factory = self._epilog_factory(), None
        return super().format_help()

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Intermixed parsing where asked (see the class docstring)."""
        if not self._intermixed or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back in here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _config_option(p: argparse.ArgumentParser) -> None:
    """``--config``, shared by the commands that read a training config."""
    p.add_argument(
        "--config",
        type=Path,
        help="YAML file or bundled preset name (dnr list presets); default: built-in defaults",
    )


def _train_epilog() -> str:
    """``dnr train --help``'s epilog: how overrides look, the registered names, the presets."""
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    rows = [(key, ", ".join(registry.names())) for key, registry in name_fields().items()]
    return f"""\
overrides are dotted KEY=VALUE pairs parsed as YAML, applied after --config, anywhere on
the line:
  train.epochs=2  model.width=0.25  data.name=npz  data.train=[a.npz,b.npz]
  sparsity.density=0.05  attack.steps=7  train.device=cuda:1
sections: {sections}
the bundled presets show the main keys (e.g. configs/vgg16_cifar10.yaml in the
repository); --print-config shows every key of the resolved config
registered names (dnr list):
{format_entries(rows)}
presets:
{format_entries(preset_entries())}
"""


def _eval_epilog() -> str:
    """``dnr eval --help``'s epilog: the protocols and models."""
    return f"""\
protocols (--protocol):
{format_entries(entries("PROTOCOLS"))}
models (--model): {names("MODELS")}
data.* overrides select the test data, e.g. data.name=npz data.test=test.npz
models from elsewhere: dnr eval model.onnx data.name=cifar10   (also .pt2, TorchScript .pt)
"""


def _add_train(sub: Subcommands) -> None:
    """``dnr train``: a config, overrides and one run directory."""
    p = sub.add_parser(
        "train",
        help="train a model with a sparsity method (dnr list methods) and evaluate it",
        description="Train with the DNR hybrid loss into one run directory, then evaluate "
        "on the test set. Interrupt at any time (Ctrl-C / SIGTERM save the state first); "
        "--resume continues from the last checkpoint (epoch ends, and every "
        "train.checkpoint_every steps). Several GPUs: torchrun --nproc_per_node N -m dnr "
        "train ... (train.batch_size is the global batch; docs/distributed.md).",
        epilog_factory=_train_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        intermixed=True,
    )
    _config_option(p)
    p.add_argument(
        "--out", type=Path, help="run directory for every artifact (required unless --print-config)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds an earlier run: delete its files (only those a run writes) and "
        "train afresh",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the final test-set evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (preset + overrides) as YAML and exit",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(parser=p)


def _add_eval(sub: Subcommands) -> None:
    """``dnr eval``: a run, an exported model or a plain state dict, under a protocol."""
    p = sub.add_parser(
        "eval",
        help="evaluate clean / FGSM / PGD / AutoAttack accuracy",
        description="Evaluate a run directory, a model.json/model.safetensors pair, a plain\n"
        "state dict of a registered model (--model/--num-classes/--weights), or a model from\n"
        "elsewhere that holds its own architecture: a torch.export program (.pt2), a\n"
        "TorchScript archive or an .onnx file, taking [0,1] images (data.* gives its test data).",
        epilog_factory=_eval_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        intermixed=True,
    )
    p.add_argument(
        "target",
        nargs="?",
        help="run directory, model.json, model.safetensors, or a .pt2/TorchScript/.onnx model",
    )
    p.add_argument(
        "--protocol",
        default="dnr",
        type=registered("PROTOCOLS"),
        help="evaluation protocol, listed below (default: dnr)",
    )
    p.add_argument("--subset", type=positive_int, help="seeded random test subset of N examples")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset and random starts")
    p.add_argument(
        "--eps",
        type=positive_float,
        help="attack radius in [0,1] pixel units (default: the protocol's)",
    )
    p.add_argument(
        "--norm",
        default="Linf",
        choices=list(get_args(Norm)),
        help="threat model (L2: AutoAttack only)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="evaluation batch size (default: chosen to fit)"
    )
    p.add_argument(
        "--device",
        default="auto",
        type=device,
        metavar="DEVICE",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )
    p.add_argument(
        "--out", type=Path, help="write eval.json/eval.md here (default: the run directory)"
    )
    p.add_argument("--json", action="store_true", help="print the machine-readable result")
    p.add_argument(
        "--no-sanity", action="store_true", help="skip the gradient-masking sanity checks"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _weights_options(p)
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE")


def _weights_options(p: argparse.ArgumentParser) -> None:
    """``dnr eval``'s options for a plain state dict: its file and how to rebuild its model."""
    p.add_argument(
        "--model",
        type=registered("MODELS"),
        help="registered model of --weights, as model.name in a config (listed below)",
    )
    p.add_argument("--arch", type=registered("MODELS"), help=argparse.SUPPRESS)  # old --model
    p.add_argument("--weights", help="plain state dict (.pt/.pth/.safetensors) to evaluate")
    p.add_argument("--num-classes", type=positive_int, help="output classes of --weights")
    p.add_argument(
        "--width", type=positive_float, default=1.0, help="width multiplier of --weights"
    )
    p.add_argument(
        "--input-size", type=positive_int, default=32, help="image size --weights expects"
    )


def _add_report(sub: Subcommands) -> None:
    """``dnr report``: a finished run's compression, cost and evaluation."""
    p = sub.add_parser(
        "report",
        help="summarise a run: per-layer density, compression, cost, evaluation",
        description="Print (and write RUN_DIR/report.md) the compression table counted over "
        "prunable weights, the model's cost (weights, MACs, CPU latency) and the latest "
        "evaluation.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the CPU latency measurement (batch 1 and 64; seconds for large models)",
    )


def _export_epilog() -> str:
    """``dnr export --help``'s epilog: the formats, with examples."""
    return f"""\
formats (--format):
{format_entries(entries("EXPORT_FORMATS"))}
examples:
  dnr export runs/x --format sparse --out runs/x-sparse    # then: dnr eval runs/x-sparse
  dnr export runs/x --format onnx --out runs/x.onnx
onnx needs: pip install 'torch-dnr[export]'
"""


def _add_export(sub: Subcommands) -> None:
    """``dnr export``: a finished run's model in a deployable format."""
    p = sub.add_parser(
        "export",
        help="write a run's model for deployment: sparse storage, compact model or ONNX",
        description="Export the model of a finished run directory. Directory formats write "
        "model.safetensors + model.json into --out (a run directory dnr.load_model and "
        "dnr eval read); onnx writes the .onnx file --out names.",
        epilog_factory=_export_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    p.add_argument(
        "--format",
        required=True,
        type=registered("EXPORT_FORMATS"),
        metavar="FORMAT",
        help="export format, listed below",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory (sparse, compact; replaced if an earlier export wrote it) "
        "or .onnx file",
    )


def _add_demo(sub: Subcommands) -> None:
    """``dnr demo``: the three-way comparison on the bundled digits."""
    p = sub.add_parser(
        "demo",
        help="dense vs. static mask vs. DNR at 20x on the embedded digits data, "
        "over three seeds (CPU, a few minutes)",
        description="Train a dense model, a fixed random mask (static, the control) and DNR "
        "with one recipe on the bundled digits, once per seed; print clean / FGSM / PGD "
        "accuracy as mean ± s.d. over the seeds, the compression, and DNR minus each other "
        "row paired by seed with its 95 % interval (dnr compare underneath).",
        intermixed=True,
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="comma-separated train.seed values, one run of each method per seed "
        "(default 0,1,2; one seed gives no interval)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _compare_epilog() -> str:
    """``dnr compare --help``'s epilog: the methods, the layout, seeds and the noise floor."""
    return f"""\
sparsity methods (--methods, comma-separated; default: all of them):
{format_entries(entries("SPARSITY_METHODS"))}
every method trains with the same config, seed, data and budget (only sparsity.method
differs) into OUT/<method>/; then OUT/comparison.json, .md and .png. Run the same command
again after an interruption: finished runs are reused, an interrupted one resumes.
seeds: one seed shows no difference as more than seed noise. --seeds 0,1,2 trains every
method once per seed into OUT/<method>/seed<k>/ and gives, per method and accuracy, the
mean over seeds and the paired difference (same seed) against --reference and against
static with its 95 % t interval; "X ahead" only where the interval excludes 0.
--noise-floor trains the reference again with seeds + 1000: the interval of the reference
against itself is what identical configurations differ by.
examples:
  dnr compare --config demo --out runs/cmp --methods dense,static,dnr train.epochs=5
  dnr compare --config demo --out runs/cmp3 --methods static,dnr --seeds 0,1,2 --noise-floor
"""


def _add_compare(sub: Subcommands) -> None:
    """``dnr compare``: several methods, one recipe, one table."""
    p = sub.add_parser(
        "compare",
        help="train and evaluate several sparsity methods with one recipe; one table",
        description="Train and evaluate each method (as dnr train would) with the same "
        "config, seed, data and budget, then tabulate densities, epochs, images seen and "
        "clean / attack / worst-case accuracy, and plot clean vs. worst-case accuracy. "
        "With --seeds: every difference with its paired 95 % interval over seeds.",
        epilog_factory=_compare_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        intermixed=True,
    )
    _config_option(p)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="directory for one run directory per method and the comparison files",
    )
    p.add_argument(
        "--methods",
        metavar="A,B,...",
        help="comma-separated sparsity methods, listed below (default: every registered one)",
    )
    p.add_argument(
        "--seeds",
        metavar="K,K,...",
        help="distinct non-negative train.seed values, each method trains once per seed into "
        "OUT/<method>/seed<k>/ (default: the config's train.seed alone, into OUT/<method>/)",
    )
    p.add_argument(
        "--reference",
        metavar="METHOD",
        help="the method every other is compared with (default: dnr if compared, else the "
        "first of --methods)",
    )
    p.add_argument(
        "--noise-floor",
        action="store_true",
        help="also train the reference with every seed + 1000 and report the reference "
        "against itself: what identical configurations differ by",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _add_list(sub: Subcommands) -> None:
    """``dnr list``: the registered names, for people and for scripts."""
    p = sub.add_parser(
        "list",
        help="list registered models, presets, sparsity methods, protocols, datasets, "
        "granularities, export formats, training objectives, optimizers and loggers",
        description="Without KIND: every kind, one section each, with descriptions. "
        "With KIND: its names only, one per line (for scripts).",
    )
    p.add_argument(
        "kind",
        nargs="?",
        type=list_kind,
        choices=list(LIST_KINDS),
        metavar="KIND",
        help=f"one of {', '.join(LIST_KINDS)}",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dnr`` parser; registry names are read only when help is printed."""
    from dnr import __version__

    parser = _Parser(
        prog="dnr",
        description="torch-dnr: train compressed, adversarially robust networks in one run "
        "(Dynamic Network Rewiring), evaluate them honestly, report what they keep.",
    )
    parser.add_argument("--version", action="version", version=f"torch-dnr {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_report, _add_export, _add_demo, _add_compare):
        add(sub)
    _add_list(sub)
    for command in sub.choices.values():  # also after the command: dnr train ... --debug
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
    return parser


_DEBUG_HELP = "on an error, also print the traceback (errors are otherwise one line)"
