"""Building a :class:`~dnr.config.Config`: YAML files and presets, dotted overrides, saving.

Every path that turns user text into a config (``load_config``, ``from_dict``,
``apply_overrides``) ends in :func:`normalize_names` and then ``validate``, so what a run
holds is always checked and its registry names always in their canonical (lower) case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dnr.coerce import coerce
from dnr.config.checks import validate
from dnr.config.sections import Config, config_keys, config_keys_of, name_fields, section_fields
from dnr.constants import CIFAR_MEAN, CIFAR_STD
from dnr.errors import ConfigError, did_you_mean
from dnr.fileio import atomic_write_text

__all__ = [
    "NEUTRAL_NEW_KEYS",
    "PRESET_DIR",
    "apply_overrides",
    "as_current",
    "read_saved_config",
    "from_dict",
    "list_presets",
    "load_config",
    "normalize_names",
    "parse_override",
    "resolve_config_path",
    "save_config",
]


def _unknown_key_hint(dotted: str) -> str:
    """The closest real key: a misspelt field or section, or a field in another section."""
    keys = config_keys()
    # a right field in the wrong section (train.density) or without one (epochs)
    field_name = dotted.rsplit(".", 1)[-1]
    homes = [k for k in keys if k.endswith(f".{field_name}")]
    if len(homes) == 1:
        return f" (did you mean {homes[0]!r}?)"
    return did_you_mean(dotted, keys)


def _set(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``SECTION.FIELD`` to ``value`` checked against the field's type."""
    parts = dotted.split(".")
    sections = section_fields(Config)
    if len(parts) == 1 and parts[0] in sections:
        raise ConfigError(
            f"{dotted}: expected a mapping of {dotted}.* keys, got {value!r}; on the command "
            f"line set one key at a time, e.g. {next(iter(config_keys_of(dotted)))}=..."
        )
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(
            f"unknown key {dotted!r}{_unknown_key_hint(dotted)}; keys look like SECTION.FIELD "
            f"with SECTION one of {', '.join(sections)}"
        )
    section_name, field_name = parts
    section = getattr(cfg, section_name)
    fields = section_fields(type(section))
    if field_name not in fields:
        raise ConfigError(
            f"unknown key {dotted!r}{_unknown_key_hint(dotted)}; {section_name} has "
            f"{', '.join(sorted(fields))}"
        )
    setattr(section, field_name, coerce(dotted, value, fields[field_name]))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}`` (one level of sections)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {tree!r}")
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not prefix:
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def normalize_names(cfg: Config) -> None:
    """Lower-case every registry name the registry knows (``VGG16`` -> ``vgg16``), in place;
    a resolved name (``package.module:callable``) stays as written.

    A name no registry knows is left as written, so that ``validate`` quotes it verbatim.
    """
    for key, registry in name_fields().items():
        section_name, name = key.split(".")
        section = getattr(cfg, section_name)
        value = getattr(section, name)
        if isinstance(value, list):  # a list of names (train.loggers)
            setattr(section, name, [registry.canonical(v) if v in registry else v for v in value])
        elif value in registry:
            setattr(section, name, registry.canonical(value))


def from_dict(tree: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """A validated Config from a nested mapping (missing keys keep their defaults), with
    ``key=value`` overrides applied on top."""
    cfg = Config()
    for dotted, value in _flatten(tree).items():
        _set(cfg, dotted, value)
    return apply_overrides(cfg, overrides or [])


#: Keys added after runs were saved whose default is exactly what those runs did: a saved
#: config without one reads as holding its default, so such a run still resumes and is still
#: reused. Any other key missing from a saved config is a difference (its default may not be
#: what the older version did).
NEUTRAL_NEW_KEYS: tuple[str, ...] = (
    "sparsity.budget",
    "train.loggers",
    "train.loss",
    "train.optimizer",
    "train.trades_beta",
    "train.mart_beta",
    "data.image_size",
    "data.resident",
)


def as_current(tree: Any) -> Any:
    """A saved config tree with the :data:`NEUTRAL_NEW_KEYS` it lacks filled in."""
    if not isinstance(tree, dict):
        return tree
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    defaults = Config()
    for dotted in NEUTRAL_NEW_KEYS:
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section][key] = getattr(getattr(defaults, section), key)
    data = out.get("data")
    if isinstance(data, dict) and "mean" not in data:  # saved before per-dataset statistics:
        cifar = data.get("name") == "npz"  # npz data was normalised with CIFAR's then
        data["mean"] = list(CIFAR_MEAN) if cifar else None
        data["std"] = list(CIFAR_STD) if cifar else None
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=2'`` -> ``('train.epochs', 2)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    # PyYAML also raises ValueError (a date such as 2024-13-01), and deep nesting recurses
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"{key.strip()}: cannot parse value {raw!r}: {detail}") from None
    return key.strip(), value


def apply_overrides(
    cfg: Config, overrides: list[str], sections: tuple[str, ...] | None = None
) -> Config:
    """Apply ``key=value`` overrides in place (optionally only to some sections), normalise
    the registry names, validate."""
    for text in overrides:
        key, value = parse_override(text)
        if sections is not None and key.split(".")[0] not in sections:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise ConfigError(f"{key}: only {allowed} overrides are accepted here")
        _set(cfg, key, value)
    normalize_names(cfg)
    validate(cfg)
    return cfg


PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    """The names of the bundled presets (``dnr list presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file path, or the name of a bundled preset (``vgg16_cifar10``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    preset = PRESET_DIR / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if candidate.parent == Path(".") and preset.is_file():
        return preset
    raise ConfigError(
        f"config file not found: {path} (bundled presets: {', '.join(list_presets())})"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file or bundled preset (or the defaults), apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return from_dict(tree, overrides)


def read_saved_config(path: str | Path) -> Any:
    """The config a run saved (``config.yaml``) as a plain tree in today's keys
    (:func:`as_current`); ``None`` if the file is not YAML (an OSError propagates)."""
    try:
        return as_current(yaml.safe_load(Path(path).read_text()))
    except yaml.YAMLError:
        return None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
