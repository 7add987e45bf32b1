"""Typed run configuration: dataclasses per section, YAML presets, dotted overrides.

- :mod:`dnr.config.sections`: the sections, each field with its default and allowed values;
- :mod:`dnr.config.loading`: YAML files and presets, ``key=value`` overrides, saving;
- :mod:`dnr.config.checks`: ``validate`` and the rules that join several fields;
- :mod:`dnr.config.fields`: how a field declares its registry or range.

Everything is importable from here (``from dnr.config import Config, load_config``).
"""

from __future__ import annotations

from dnr.config.checks import validate
from dnr.config.loading import (
    NEUTRAL_NEW_KEYS,
    PRESET_DIR,
    apply_overrides,
    as_current,
    from_dict,
    list_presets,
    load_config,
    normalize_names,
    parse_override,
    read_saved_config,
    resolve_config_path,
    save_config,
)
from dnr.config.sections import (
    AttackConfig,
    ChannelBudget,
    Config,
    DataConfig,
    DistBackend,
    EvalConfig,
    GrowMomentum,
    ModelConfig,
    Norm,
    Schedule,
    SparsityConfig,
    SparsityInit,
    TrainConfig,
    TrainModeName,
    WeightInit,
    config_keys,
    config_keys_of,
    name_fields,
    range_fields,
)
from dnr.errors import ConfigError

__all__ = [
    "NEUTRAL_NEW_KEYS",
    "PRESET_DIR",
    "AttackConfig",
    "ChannelBudget",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistBackend",
    "EvalConfig",
    "GrowMomentum",
    "ModelConfig",
    "Norm",
    "Schedule",
    "SparsityConfig",
    "SparsityInit",
    "TrainConfig",
    "TrainModeName",
    "WeightInit",
    "apply_overrides",
    "as_current",
    "config_keys",
    "config_keys_of",
    "from_dict",
    "list_presets",
    "load_config",
    "name_fields",
    "normalize_names",
    "parse_override",
    "range_fields",
    "resolve_config_path",
    "read_saved_config",
    "save_config",
    "validate",
]
