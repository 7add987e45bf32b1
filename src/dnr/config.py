"""Typed run configuration: dataclasses per section, YAML presets, dotted overrides.

Every field a user may set lives here, with its default and its allowed values, so that a
typo on the command line is a one-line error naming the key instead of a silent no-op.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dnr.coerce import coerce
from dnr.devices import is_device_name
from dnr.errors import ConfigError, did_you_mean
from dnr.fileio import atomic_write_text
from dnr.registry import DATASETS, GRANULARITIES, MODELS, PROTOCOLS, SPARSITY_METHODS, Registry

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "as_current",
    "from_dict",
    "load_config",
    "validate",
]

SparsityInit = Literal["uniform", "erk"]
GrowMomentum = Literal["keep", "zero"]
ChannelBudget = Literal["weights", "macs"]
WeightInit = Literal["pytorch", "xavier"]
Schedule = Literal["multistep", "cosine"]
Norm = Literal["Linf", "L2"]
DistBackend = Literal["auto", "nccl", "gloo"]
TrainMode = Literal["pgd", "fgsm_rs", "free"]


def _named(default: str, registry: Registry) -> Any:
    """A name field whose allowed values are the registry's (checked by :func:`validate`)."""
    return field(default=default, metadata={"registry": registry})


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how much of it to use."""

    name: str = _named("digits", DATASETS)
    root: str = "data"
    train: list[str] = field(default_factory=list)  # npz: training files
    test: list[str] = field(default_factory=list)  # npz: test files
    download: bool = False  # opt-in: fetch cifar10/cifar100/tiny-imagenet when missing
    val_size: int = 1000  # held out of train, seeded, for checkpoint selection
    subset: int | None = None  # seeded cap on train and test sizes for quick runs
    seed: int = 0  # seeds the validation split and subsets
    augment: bool = True  # random crop (4-px pad) + horizontal flip


@dataclass
class ModelConfig:
    name: str = _named("vgg16", MODELS)
    width: float = 1.0  # channel multiplier; 1.0 is the paper's size
    init: WeightInit = "pytorch"  # weight initialisation (docs/method.md: why pytorch)
    # extra keyword arguments for the architecture's constructor (timm-style)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """The PGD attack used to craft training examples (and validation PGD accuracy)."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 7
    random_start: bool = True
    # how training examples are made (validation always uses the PGD above): pgd; fgsm_rs
    # (Wong et al. 2020: one 1.25*eps step from a random start); free (Shafahi et al. 2019:
    # each batch replayed `replays` times, each replay one weight step and one eps-sign step
    # of a perturbation carried over between batches; train.epochs counts passes over the
    # data, so divide the PGD recipe's epochs by `replays`)
    train_mode: TrainMode = "pgd"
    replays: int = 4
    fgsm_step: float = 1.25  # fgsm_rs: the step, in multiples of eps (paper: 1.25)
    # validation PGD (picks the best epoch): null = the training PGD above; N = PGD-N with
    # steps of 2.5*eps/N (Madry et al.), stronger than a cheap training attack, so that
    # validation ranks robustness as the test attacks do
    val_steps: int | None = None


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule = "multistep"
    # LR x gamma at each milestone: a fraction of the run (< 1) or an absolute epoch (>= 1).
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    warmup_epochs: float = 1.0  # linear LR warm-up from ~0 (fractional epochs allowed)
    beta: float = 0.5  # hybrid loss: beta * CE(clean) + (1 - beta) * CE(adversarial)
    bf16: bool = False  # bf16 autocast for training passes and training attacks (eval: fp32)
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    compile: bool = False  # torch.compile the model for training (masks never recompile it)
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    eval_batch_size: int = 256
    val_every: int = 1  # validate every N epochs (and always on the last)
    init_from: str | None = None  # a finished run directory whose weights this run starts from
    init_masks: bool = False  # ... and whose masks (at the same sparsity.density)
    # also save resume state every N optimizer steps inside an epoch (0: at epoch ends only);
    # a pre-empted run then loses at most N steps
    checkpoint_every: int = 0
    # under torchrun (see docs/distributed.md); batch_size is then the global batch
    dist_backend: DistBackend = "auto"  # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only); else per-rank BN batches
    check_ranks: bool = True  # checksum masks and weights across ranks after every epoch


@dataclass
class SparsityConfig:
    method: str = _named("dense", SPARSITY_METHODS)
    density: float = 0.05  # fraction of prunable weights kept (0.05 = 20x)
    # what a mask removes: single weights, or whole output channels (density then counts
    # the weights of the compacted, narrower network)
    granularity: str = _named("weight", GRANULARITIES)
    # channel mode: what density counts — the compacted network's weights, or its MACs per
    # image (a user who prunes channels for speed)
    budget: ChannelBudget = "weights"
    init: SparsityInit = "uniform"
    prune_rate: float = 0.2  # p0 of the cosine prune-rate schedule (paper: 0.5)
    prune_rate_min: float = 0.005  # floor the schedule anneals to
    rewire_every: int = 0  # rewire every N optimizer steps; 0 = at the end of each epoch
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns of tensors kept dense
    regrow_pruned: bool = True  # weights pruned in a rewiring may regrow in the same one
    keep_regrown_values: bool = True  # ... and keep their value (sparse_learning's; else 0)
    protect_channels: bool = True  # no output channel starts or becomes all-zero
    redistribution: float = 0.3  # share of the pruned budget moved between layers (1 = paper)
    grow_momentum: GrowMomentum = "zero"  # momentum of newly grown weights (paper: keep)
    rewire_until: float = 0.75  # fraction of the run after which the masks stay fixed (paper: 1)
    bn_refresh_batches: int = 8  # re-estimate BN statistics on N batches after a rewiring
    # method-specific settings, one entry per method (so one config serves `dnr compare`),
    # e.g. {lwm: {pretrain_epochs: 3}, admm: {rho: 0.01}}; unknown keys are refused
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    protocol: str = _named("dnr", PROTOCOLS)  # see `dnr list`
    subset: int | None = None  # seeded random test subset; None = whole test set
    seed: int = 0
    sanity: bool = True  # gradient-masking sanity checks next to the robust numbers
    eps: float | None = None  # None: each attack's protocol default
    norm: Norm = "Linf"  # L2: AutoAttack only
    batch_size: int | None = None  # None: chosen to fit memory


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section_fields(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def name_fields() -> dict[str, Registry]:
    """``{"model.name": MODELS, ...}``: every config key whose values a registry defines."""
    return {
        f"{section}.{f.name}": f.metadata["registry"]
        for section, section_cls in _section_fields(Config).items()
        for f in dataclasses.fields(section_cls)
        if "registry" in f.metadata
    }


def config_keys() -> list[str]:
    """Every ``SECTION.FIELD`` key of a :class:`Config`."""
    return [
        f"{section}.{name}"
        for section, section_cls in _section_fields(Config).items()
        for name in _section_fields(section_cls)
    ]


def config_keys_of(section: str) -> list[str]:
    return [k for k in config_keys() if k.startswith(f"{section}.")]


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
    parts = dotted.split(".")
    sections = _section_fields(Config)
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
    fields = _section_fields(type(section))
    if field_name not in fields:
        raise ConfigError(
            f"unknown key {dotted!r}{_unknown_key_hint(dotted)}; {section_name} has "
            f"{', '.join(sorted(fields))}"
        )
    setattr(section, field_name, coerce(dotted, value, fields[field_name]))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
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
NEUTRAL_NEW_KEYS: tuple[str, ...] = ("sparsity.budget",)


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
    """Apply ``key=value`` overrides in place (optionally only to some sections), validate."""
    for text in overrides:
        key, value = parse_override(text)
        if sections is not None and key.split(".")[0] not in sections:
            allowed = ", ".join(f"{s}.*" for s in sections)
            raise ConfigError(f"{key}: only {allowed} overrides are accepted here")
        _set(cfg, key, value)
    validate(cfg)
    return cfg


PRESET_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
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


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Names against their registries, then range checks that types alone cannot express."""
    d, m, a, t, s, e = cfg.data, cfg.model, cfg.attack, cfg.train, cfg.sparsity, cfg.eval
    for key, registry in name_fields().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in registry:
            names = registry.names()
            raise ConfigError(
                f"{key}: {value!r} is not allowed{did_you_mean(str(value).lower(), names)}; "
                f"choose one of {', '.join(names)}"
            )
        setattr(getattr(cfg, section), name, value.lower())
    for key in ("data.seed", "train.seed", "eval.seed"):
        section, name = key.split(".")
        seed = getattr(getattr(cfg, section), name)
        _check(0 <= seed < 2**63, f"{key}: must be in [0, 2**63), got {seed}")
    _check_finite("model.kwargs", m.kwargs)
    _check_finite("sparsity.options", s.options)
    _check_model_kwargs(m.name, m.kwargs)
    _check(
        is_device_name(t.device),
        f"train.device: {t.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps",
    )
    if d.name == "npz":
        _check(bool(d.test), "data.test: the npz dataset needs at least one test file")
    _check(d.val_size >= 0, f"data.val_size: must be >= 0, got {d.val_size}")
    _check(d.subset is None or d.subset > 0, f"data.subset: must be > 0 or null, got {d.subset}")
    _check(0 < m.width <= 4, f"model.width: must be in (0, 4], got {m.width}")
    _check(0 <= a.eps <= 1, f"attack.eps: must be in [0, 1] (pixel scale), got {a.eps}")
    _check(a.step_size >= 0, f"attack.step_size: must be >= 0, got {a.step_size}")
    _check(a.steps >= 0, f"attack.steps: must be >= 0, got {a.steps}")
    _check(
        a.val_steps is None or a.val_steps >= 1,
        f"attack.val_steps: must be >= 1 or null, got {a.val_steps}",
    )
    _check(a.replays >= 1, f"attack.replays: must be >= 1, got {a.replays}")
    _check(0 < a.fgsm_step <= 4, f"attack.fgsm_step: must be in (0, 4] x eps, got {a.fgsm_step}")
    _check(t.epochs >= 1, f"train.epochs: must be >= 1, got {t.epochs}")
    _check(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    _check(t.eval_batch_size >= 1, f"train.eval_batch_size: must be >= 1, got {t.eval_batch_size}")
    _check(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    _check(0 <= t.momentum < 1, f"train.momentum: must be in [0, 1), got {t.momentum}")
    _check(t.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    _check(0 <= t.beta <= 1, f"train.beta: must be in [0, 1], got {t.beta}")
    _check(0 < t.gamma <= 1, f"train.gamma: must be in (0, 1], got {t.gamma}")
    _check(all(x > 0 for x in t.milestones), "train.milestones: must be positive")
    for x in t.milestones if t.schedule == "multistep" else []:
        _check(
            x < 1 or (float(x).is_integer() and x < t.epochs),
            f"train.milestones: {x:g} is not a fraction of the run (< 1) nor an epoch inside "
            f"this {t.epochs}-epoch run (values >= 1 are epochs); write fractions such as "
            "[0.5, 0.75]",
        )
    _check(
        0 <= t.warmup_epochs <= t.epochs,
        f"train.warmup_epochs: must be in [0, train.epochs={t.epochs}], got {t.warmup_epochs}",
    )
    _check(t.val_every >= 1, f"train.val_every: must be >= 1, got {t.val_every}")
    _check(
        t.checkpoint_every >= 0,
        f"train.checkpoint_every: must be >= 0 steps (0: at epoch ends), got {t.checkpoint_every}",
    )
    _check(
        not t.init_masks or bool(t.init_from),
        "train.init_masks: needs train.init_from=RUN_DIR to take the masks from",
    )
    _check(0 < s.density <= 1, f"sparsity.density: must be in (0, 1], got {s.density}")
    _check(0 <= s.prune_rate < 1, f"sparsity.prune_rate: must be in [0, 1), got {s.prune_rate}")
    _check(
        0 <= s.prune_rate_min <= s.prune_rate,
        f"sparsity.prune_rate_min: must be in [0, sparsity.prune_rate], got {s.prune_rate_min}",
    )
    _check(
        s.regrow_pruned or s.prune_rate * s.density <= 1 - s.density,
        "sparsity.regrow_pruned=false needs room to regrow outside the kept weights: "
        f"prune_rate * density ({s.prune_rate * s.density:.3f}) must be <= 1 - density",
    )
    _check(s.rewire_every >= 0, f"sparsity.rewire_every: must be >= 0, got {s.rewire_every}")
    _check(
        0 <= s.redistribution <= 1,
        f"sparsity.redistribution: must be in [0, 1], got {s.redistribution}",
    )
    _check(
        0 < s.rewire_until <= 1,
        f"sparsity.rewire_until: must be in (0, 1] (a fraction of the run), got {s.rewire_until}",
    )
    _check(
        s.bn_refresh_batches >= 0,
        f"sparsity.bn_refresh_batches: must be >= 0, got {s.bn_refresh_batches}",
    )
    _check(e.subset is None or e.subset > 0, f"eval.subset: must be > 0 or null, got {e.subset}")
    _check(e.eps is None or 0 < e.eps <= 1, f"eval.eps: must be in (0, 1] or null, got {e.eps}")
    _check(
        e.batch_size is None or e.batch_size > 0,
        f"eval.batch_size: must be > 0 or null, got {e.batch_size}",
    )
    _check(
        s.budget == "weights" or s.granularity == "channel",
        f"sparsity.budget={s.budget} counts what whole channels cost: set "
        "sparsity.granularity=channel (irregular zeros leave a dense kernel's MACs as they are)",
    )
    _check(
        s.granularity != "channel" or s.init == "uniform",
        "sparsity.init: channel mode starts from a uniform channel fraction; set init=uniform "
        "(ERK is a per-weight rule)",
    )
    method = SPARSITY_METHODS.get(s.method)
    for name, entry in s.options.items():  # one entry per method: {lwm: {scope: layer}}
        _check(
            name in SPARSITY_METHODS and isinstance(entry, dict),
            f"sparsity.options: keys are method names with their settings, e.g. "
            f"{{lwm: {{pretrain_epochs: 2}}}}; got {name!r}: {entry!r}",
        )
        SPARSITY_METHODS.get(name).parse_options(entry, f"sparsity.options.{name}")
    method.check_config(cfg)
    _check(
        not method.granularities or s.granularity in method.granularities,
        f"sparsity.method={s.method} runs at sparsity.granularity "
        f"{' or '.join(method.granularities)}, not {s.granularity}",
    )


def _check_finite(key: str, value: Any) -> None:
    """No NaN or infinity hides in a free-form mapping (typed fields are checked by coerce)."""
    if isinstance(value, float):
        _check(math.isfinite(value), f"{key}: must be a finite number, got {value}")
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
        _check(
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
        _check(
            key in parameters,
            f"model.kwargs.{key}: model {name} has no such argument{did_you_mean(key, accepted)}"
            + (f"; it takes {', '.join(accepted)}" if accepted else "; it takes none"),
        )


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
