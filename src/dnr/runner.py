"""End-to-end jobs behind the CLI: train-and-evaluate, evaluate a model, the demo.

Each job is a plain function a library user can call; the CLI only parses arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from dnr.config import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    apply_overrides,
    from_dict,
)
from dnr.data import DataError, DatasetSplits, load_dataset
from dnr.devices import resolve_device
from dnr.distributed import Distributed
from dnr.foreign import LoadedModel, foreign_kind, load_foreign
from dnr.modelfile import load_model, load_plain_weights, read_model_meta
from dnr.registry import DATASETS
from dnr.report import plot_layer_density, write_report
from dnr.robustness import EvalReport, EvaluationError, evaluate_model
from dnr.rundir import RunDir, write_eval
from dnr.training import TrainResult, train
from dnr.trust import trusted_model_code


def run_train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    evaluate: bool = True,
    log: Callable[[Any], None] = print,  # training's records (dnr.training.loggers.Event)
) -> tuple[TrainResult, EvalReport | None]:
    """Train, then evaluate on the test set under ``cfg.eval``, plot and write the report.

    The command named the model, so a factory-named one may be rebuilt from the run it
    writes (the report does) without ``DNR_TRUST_MODEL_CODE``.
    """
    with trusted_model_code():
        data = _load_for_training(cfg.data)
        result = train(cfg, out_dir, resume=resume, show_progress=progress, log=log, data=data)
        if not result.is_main:  # torchrun: rank 0 evaluates and writes the report
            return result, None
        report = None
        if evaluate:
            report = evaluate_loaded(
                result.model,
                data,
                cfg.eval,
                device=cfg.train.device,
                out_dir=result.run_dir,
                progress=progress,
            )
        plot_layer_density(result.run_dir)
        write_report(result.run_dir)
        return result, report


def _load_for_training(cfg: DataConfig) -> DatasetSplits:
    """The dataset; under torchrun it must be on disk already: every process downloading
    and extracting into the same files at once would corrupt them."""
    if not (cfg.download and Distributed.launched()):
        return load_dataset(cfg)
    try:
        return load_dataset(replace(cfg, download=False))
    except DataError as err:
        raise ConfigError(
            f"{err}. Under torchrun data.download=true would download once per process into "
            "the same files: download it first in one process (the same dnr train command "
            "without torchrun, stopped with Ctrl-C once training starts), then launch torchrun"
        ) from None


def evaluate_loaded(
    model: nn.Module,
    data: DatasetSplits,
    options: EvalConfig | None = None,
    *,
    device: str = "auto",
    out_dir: str | Path | None = None,
    progress: bool | None = None,
) -> EvalReport:
    """Evaluate ``model`` on the test split; write eval.json/eval.md into ``out_dir``."""
    options = options or EvalConfig()
    if progress is None:
        progress = sys.stderr.isatty()
    target_device = resolve_device(device)
    model = model.to(target_device).eval()
    try:
        report = evaluate_model(
            model,
            data.test.x,
            data.test.y,
            protocol=options.protocol,
            eps=options.eps,
            norm=options.norm,
            subset=options.subset,
            seed=options.seed,
            batch_size=options.batch_size,
            device=target_device,
            progress=progress,
            sanity=options.sanity,
            num_classes=data.meta.num_classes,
        )
    except EvaluationError as err:
        raise ConfigError(str(err)) from None
    # Record rows of the dataset's test file, not positions in a test split that
    # data.subset may have capped.
    source_rows = data.indices.get("test")
    if source_rows is not None and list(source_rows) != list(range(len(source_rows))):
        positions = report.subset_indices or range(len(data.test.y))
        report.subset_indices = [int(source_rows[i]) for i in positions]
    if out_dir is not None:
        write_eval(out_dir, report.to_dict(), report.to_markdown())
    return report


def data_config_from_meta(meta: dict[str, Any], overrides: list[str]) -> DataConfig:
    """The test data a saved model was trained for, with ``data.*`` overrides applied."""
    dataset = {k: v for k, v in meta.get("dataset", {}).items() if v not in (None, [])}
    if dataset.get("name", "digits") not in DATASETS:
        if not any(o.startswith("data.name=") for o in overrides):
            raise ConfigError(
                f"the model was trained on a dataset given from Python ({dataset['name']}), "
                "which no reader can find again: name its test data, e.g. data.name=npz "
                "data.test=test.npz"
            )
        dataset = {}
    cfg = from_dict({"data": dataset})
    return apply_overrides(cfg, overrides, sections=("data",)).data


@dataclass
class EvalTarget:
    """What to evaluate: a run directory / model file, or a plain state dict + architecture.

    ``model`` is a registered model name (as ``model.name`` in a config) for ``weights``.
    """

    path: str | None = None
    model: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    width: float = 1.0
    input_size: int = 32


def run_eval(
    target: EvalTarget,
    options: EvalConfig | None = None,
    *,
    data_overrides: list[str] | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    progress: bool | None = None,
) -> EvalReport:
    """``dnr eval``: load the model, its test data, run the protocol, write the results."""
    overrides = list(data_overrides or [])
    if target.weights is not None:
        if target.model is None or target.num_classes is None:
            raise ConfigError("--weights needs --model and --num-classes")
        model = load_plain_weights(
            target.model,
            target.weights,
            num_classes=target.num_classes,
            input_size=target.input_size,
            width=target.width,
        )
        data_cfg = data_config_from_meta({}, overrides)
    elif target.path is not None and foreign_kind(target.path):
        model = load_foreign(target.path)  # classes and input size: from the test data below
        data_cfg = data_config_from_meta({}, overrides)
    elif target.path is not None:
        model = load_model(target.path)
        data_cfg = data_config_from_meta(read_model_meta(target.path), overrides)
        if out_dir is None and Path(target.path).is_dir():
            out_dir = target.path
    else:
        raise ConfigError("nothing to evaluate: give a run directory, a model file or --weights")
    data = load_dataset(replace(data_cfg, subset=None), test_only=True)  # no train files
    if isinstance(model, LoadedModel):
        model.describe(data.test.x[:2])
    _fit_classes(data, getattr(model, "arch_config", {}).get("num_classes"), data_cfg.name)
    report = evaluate_loaded(
        model, data, options, device=device, out_dir=out_dir, progress=progress
    )
    if out_dir is not None and RunDir(Path(out_dir)).model_meta.exists():
        write_report(out_dir)
    return report


def _fit_classes(data: DatasetSplits, num_outputs: Any, name: str) -> None:
    """The model's outputs must be the dataset's classes; a test set whose classes were
    only inferred from its labels (max + 1) may lack the top ones, so a model with more
    outputs fits it, and is evaluated over all of them."""
    meta = data.meta
    if meta.num_classes == num_outputs:
        return
    if meta.classes_inferred and isinstance(num_outputs, int) and meta.num_classes < num_outputs:
        data.meta = replace(
            meta, num_classes=num_outputs, classes=[str(i) for i in range(num_outputs)]
        )
        return
    raise ConfigError(
        f"the model has {num_outputs} outputs but dataset {name} has {meta.num_classes} classes"
    )
