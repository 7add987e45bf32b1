"""Checking a whole :class:`~dnr.config.Config` before any data is read.

Single-field ranges are declared on the fields (:mod:`dnr.config.sections`); here are the
registry names, the free-form mappings, and the rules that join several fields, each a small
named function so that one failing rule reads as one sentence.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from dnr.config.sections import Config, name_fields, range_fields
from dnr.devices import is_device_name
from dnr.errors import ConfigError, did_you_mean
from dnr.registry import (
    GRANULARITIES,
    MODELS,
    OBJECTIVES,
    OPTIMIZERS,
    SPARSITY_METHODS,
    UnknownNameError,
    UnresolvableNameError,
)

__all__ = ["check", "validate"]


def check(ok: bool, message: str) -> None:
    """:class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _check_names(cfg: Config) -> None:
    """Every name field holds a name its registry knows (in any case)."""
    for key, registry in name_fields().items():
        value = _value(cfg, key)
        for item in value if isinstance(value, list) else [value]:
            try:
                registry.get(item)
            except UnresolvableNameError as err:  # e.g. a model factory that does not import
                raise ConfigError(f"{key}: {err}") from None
            except UnknownNameError:
                names = registry.names()
                raise ConfigError(
                    f"{key}: {item!r} is not allowed{did_you_mean(str(item).lower(), names)}; "
                    f"choose one of {registry.choices()}"
                ) from None


def _check_finite(key: str, value: Any) -> None:
    """No NaN or infinity hides in a free-form mapping (typed fields are checked by coerce)."""
    if isinstance(value, float):
        check(math.isfinite(value), f"{key}: must be a finite number, got {value}")
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_finite(f"{key}.{name}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(f"{key}[{i}]", item)


#: Set from the dataset and model.width, never through model.kwargs.
_MODEL_ARGUMENTS = ("num_classes", "input_size", "width", "mean", "std")


def _check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """model.kwargs against the architecture's constructor, before any data is read."""
    for key in kwargs:
        check(
            key not in _MODEL_ARGUMENTS,
            f"model.kwargs.{key}: set by the dataset or model.width, not through model.kwargs",
        )
    try:
        parameters = inspect.signature(MODELS.get(name)).parameters
    except (TypeError, ValueError):  # a constructor without a signature: it decides
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in _MODEL_ARGUMENTS]
    for key in kwargs:
        check(
            key in parameters,
            f"model.kwargs.{key}: model {name} has no such argument{did_you_mean(key, accepted)}"
            + (f"; it takes {', '.join(accepted)}" if accepted else "; it takes none"),
        )


def _npz_needs_test_files(cfg: Config) -> None:
    d = cfg.data
    if d.name == "npz":
        check(bool(d.test), "data.test: the npz dataset needs at least one test file")


def _image_size_only_for_folders(cfg: Config) -> None:
    """Only the folder reader resizes; elsewhere the setting would be silently ignored."""
    check(
        cfg.data.image_size is None or cfg.data.name == "folder",
        f"data.image_size: only data.name=folder resizes its images; {cfg.data.name} "
        "images keep their own size (drop data.image_size)",
    )


def _data_stats_are_rgb(cfg: Config) -> None:
    """data.mean / data.std: three values (R, G, B) in pixel units [0, 1], std above 0."""
    d = cfg.data
    for key, values, low in (("data.mean", d.mean, 0.0), ("data.std", d.std, None)):
        if not isinstance(values, list):
            continue
        check(
            len(values) == 3,
            f"{key}: give 3 values (R, G, B) in [0, 1] or compute, got {len(values)}",
        )
        ok = all((0 <= v <= 1) if low is not None else (0 < v <= 1) for v in values)
        rule = "in [0, 1]" if low is not None else "in (0, 1]"
        check(ok, f"{key}: values must be {rule} (pixel scale, not 0..255), got {values}")


def _milestones_fit_the_run(cfg: Config) -> None:
    """Milestones are positive; under multistep each is a fraction or an epoch of the run."""
    t = cfg.train
    check(all(x > 0 for x in t.milestones), "train.milestones: must be positive")
    for x in t.milestones if t.schedule == "multistep" else []:
        check(
            x < 1 or (float(x).is_integer() and x < t.epochs),
            f"train.milestones: {x:g} is not a fraction of the run (< 1) nor an epoch inside "
            f"this {t.epochs}-epoch run (values >= 1 are epochs); write fractions such as "
            "[0.5, 0.75]",
        )


def _warmup_within_the_run(cfg: Config) -> None:
    t = cfg.train
    check(
        0 <= t.warmup_epochs <= t.epochs,
        f"train.warmup_epochs: must be in [0, train.epochs={t.epochs}], got {t.warmup_epochs}",
    )


def _init_masks_need_a_run(cfg: Config) -> None:
    t = cfg.train
    check(
        not t.init_masks or bool(t.init_from),
        "train.init_masks: needs train.init_from=RUN_DIR to take the masks from",
    )


def _prune_rate_floor_below_start(cfg: Config) -> None:
    s = cfg.sparsity
    check(
        0 <= s.prune_rate_min <= s.prune_rate,
        f"sparsity.prune_rate_min: must be in [0, sparsity.prune_rate], got {s.prune_rate_min}",
    )


def _room_to_regrow(cfg: Config) -> None:
    """Without regrowing pruned weights, a rewiring grows only outside the kept ones."""
    s = cfg.sparsity
    check(
        s.regrow_pruned or s.prune_rate * s.density <= 1 - s.density,
        "sparsity.regrow_pruned=false needs room to regrow outside the kept weights: "
        f"prune_rate * density ({s.prune_rate * s.density:.3f}) must be <= 1 - density",
    )


def _macs_budget_needs_channels(cfg: Config) -> None:
    s = cfg.sparsity
    check(
        s.budget == "weights" or s.granularity == "channel",
        f"sparsity.budget={s.budget} counts what whole channels cost: set "
        "sparsity.granularity=channel (irregular zeros leave a dense kernel's MACs as they are)",
    )


def _granularity_accepts_the_settings(cfg: Config) -> None:
    """The mask class of ``sparsity.granularity`` owns its rules (channel mode: uniform
    init); asked here so that a config that cannot run fails before anything is built."""
    GRANULARITIES.get(cfg.sparsity.granularity).check_config(cfg)


def _method_options_and_granularity(cfg: Config) -> None:
    """Each ``sparsity.options`` entry parses for its method; the method accepts the config."""
    s = cfg.sparsity
    method = SPARSITY_METHODS.get(s.method)
    for name, entry in s.options.items():  # one entry per method: {lwm: {scope: layer}}
        check(
            name in SPARSITY_METHODS and isinstance(entry, dict),
            f"sparsity.options: keys are method names with their settings, e.g. "
            f"{{lwm: {{pretrain_epochs: 2}}}}; got {name!r}: {entry!r}",
        )
        SPARSITY_METHODS.get(name).parse_options(entry, f"sparsity.options.{name}")
    method.check_config(cfg)
    check(
        not method.granularities or s.granularity in method.granularities,
        f"sparsity.method={s.method} runs at sparsity.granularity "
        f"{' or '.join(method.granularities)}, not {s.granularity}",
    )


def _objective_accepts_the_settings(cfg: Config) -> None:
    """``train.loss``'s objective owns its rules (TRADES and MART: PGD examples only)."""
    OBJECTIVES.get(cfg.train.loss).check(cfg)


def _optimizer_accepts_the_settings(cfg: Config) -> None:
    """``train.optimizer``'s own rules (nesterov is SGD's). DNR's need for a first moment
    (train.momentum > 0) is the method's rule, in its ``check_config``."""
    OPTIMIZERS.get(cfg.train.optimizer).check(cfg)


#: The rules that join several fields, in the order they are checked.
CROSS_FIELD_RULES: tuple[Callable[[Config], None], ...] = (
    _npz_needs_test_files,
    _image_size_only_for_folders,
    _data_stats_are_rgb,
    _milestones_fit_the_run,
    _warmup_within_the_run,
    _init_masks_need_a_run,
    _prune_rate_floor_below_start,
    _room_to_regrow,
    _macs_budget_needs_channels,
    _granularity_accepts_the_settings,
    _method_options_and_granularity,
    _objective_accepts_the_settings,
    _optimizer_accepts_the_settings,
)


def validate(cfg: Config) -> None:
    """Names, free-form mappings, declared ranges, then cross-field rules; never edits ``cfg``."""
    _check_names(cfg)
    _check_finite("model.kwargs", cfg.model.kwargs)
    _check_finite("sparsity.options", cfg.sparsity.options)
    _check_model_kwargs(cfg.model.name, cfg.model.kwargs)
    device = cfg.train.device
    check(
        is_device_name(device),
        f"train.device: {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps",
    )
    for key, allowed in range_fields().items():
        allowed.check(key, _value(cfg, key))
    for rule in CROSS_FIELD_RULES:
        rule(cfg)
