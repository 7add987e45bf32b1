"""The config's sections: one dataclass each, every field with its default and allowed values.

Every field a user may set lives here, so that a typo on the command line is a one-line error
naming the key instead of a silent no-op. Numeric fields declare their range beside their
default (:func:`~dnr.config.fields.checked`); rules that join several fields live in
:mod:`dnr.config.checks`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from dnr.config.fields import Range, checked, named, named_list
from dnr.registry import (
    DATASETS,
    GRANULARITIES,
    LOGGERS,
    MODELS,
    OBJECTIVES,
    OPTIMIZERS,
    PROTOCOLS,
    SPARSITY_METHODS,
    Registry,
)

__all__ = [
    "AttackConfig",
    "ChannelBudget",
    "Config",
    "DataConfig",
    "Compute",
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
    "config_keys",
    "config_keys_of",
    "name_fields",
    "range_fields",
    "section_fields",
]

SparsityInit = Literal["uniform", "erk"]
GrowMomentum = Literal["keep", "zero"]
ChannelBudget = Literal["weights", "macs"]
WeightInit = Literal["pytorch", "xavier"]
Schedule = Literal["multistep", "cosine"]
Norm = Literal["Linf", "L2"]
DistBackend = Literal["auto", "nccl", "gloo"]
#: ``attack.train_mode``'s values (the modes themselves: ``dnr.training.step.TrainMode``).
TrainModeName = Literal["pgd", "fgsm_rs", "free"]

#: ``data.mean``/``data.std``: computed from the training split.
Compute = Literal["compute"]

#: A seed numpy and torch both accept.
_SEED = "[0, 2**63)"


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how much of it to use."""

    name: str = named("digits", DATASETS)
    root: str = "data"
    train: list[str] = field(default_factory=list)  # npz: training files
    test: list[str] = field(default_factory=list)  # npz: test files
    download: bool = False  # opt-in: fetch cifar10/cifar100/tiny-imagenet when missing
    val_size: int = checked(1000, ">= 0")  # held out of train, seeded, for checkpoint selection
    # seeded cap on train and test sizes for quick runs
    subset: int | None = checked(None, "> 0", null=True)
    seed: int = checked(0, _SEED)  # seeds the validation split and subsets
    augment: bool = True  # random crop (4-px pad) + horizontal flip
    # folder: resize (shorter side) + center-crop every image to this square size; null: the
    # images' own size, which must then be one square size for all of them
    image_size: int | None = checked(None, ">= 8", null=True)
    # per-channel statistics the model normalises with, [0, 1] units, 3 values (R, G, B);
    # null: the dataset's own (cifar*, tiny-imagenet, digits), else computed; compute: from
    # the training split after the validation hold-out
    mean: list[float] | Compute | None = None
    std: list[float] | Compute | None = None
    # the uint8 training set on the device (true: fastest) or in host memory, each batch
    # moved (false: data larger than the device); auto: on the device when it takes at most
    # half of the device's free memory
    resident: bool | Literal["auto"] = "auto"


@dataclass
class ModelConfig:
    """Which architecture, how wide, and how its weights start."""

    name: str = named("vgg16", MODELS)
    width: float = checked(1.0, "(0, 4]")  # channel multiplier; 1.0 is the paper's size
    init: WeightInit = "pytorch"  # weight initialisation (docs/method.md: why pytorch)
    # extra keyword arguments for the architecture's constructor (timm-style)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """The PGD attack used to craft training examples (and validation PGD accuracy)."""

    eps: float = checked(8 / 255, "[0, 1]", note=" (pixel scale)")
    step_size: float = checked(2 / 255, ">= 0")
    steps: int = checked(7, ">= 0")
    random_start: bool = True
    # how training examples are made (validation always uses the PGD above): pgd; fgsm_rs
    # (Wong et al. 2020: one 1.25*eps step from a random start); free (Shafahi et al. 2019:
    # each batch replayed `replays` times, each replay one weight step and one eps-sign step
    # of a perturbation carried over between batches; train.epochs counts passes over the
    # data, so divide the PGD recipe's epochs by `replays`)
    train_mode: TrainModeName = "pgd"
    replays: int = checked(4, ">= 1")
    # fgsm_rs: the step, in multiples of eps (paper: 1.25)
    fgsm_step: float = checked(1.25, "(0, 4]", note=" x eps")
    # validation PGD (picks the best epoch): null = the training PGD above; N = PGD-N with
    # steps of 2.5*eps/N (Madry et al.), stronger than a cheap training attack, so that
    # validation ranks robustness as the test attacks do
    val_steps: int | None = checked(None, ">= 1", null=True)


@dataclass
class TrainConfig:
    """The optimiser, its schedule, the loss mix, and where and how the run executes."""

    epochs: int = checked(200, ">= 1")
    batch_size: int = checked(128, ">= 1")
    # sgd (momentum, nesterov below) or adamw (betas 0.9/0.999; usual lr ~1e-3, wd ~0.05);
    # DNR grows by its first moment: SGD's momentum buffer, AdamW's exp_avg
    optimizer: str = named("sgd", OPTIMIZERS)
    lr: float = checked(0.1, "> 0")
    momentum: float = checked(0.9, "[0, 1)")  # sgd only
    weight_decay: float = checked(5e-4, ">= 0")  # sgd: L2 in the gradient; adamw: decoupled
    nesterov: bool = False  # sgd only
    schedule: Schedule = "multistep"
    # LR x gamma at each milestone: a fraction of the run (< 1) or an absolute epoch (>= 1).
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = checked(0.1, "(0, 1]")
    warmup_epochs: float = 1.0  # linear LR warm-up from ~0 (fractional epochs allowed)
    # the training objective: hybrid (the paper's), trades or mart (docs/method.md)
    loss: str = named("hybrid", OBJECTIVES)
    # hybrid loss: beta * CE(clean) + (1 - beta) * CE(adversarial)
    beta: float = checked(0.5, "[0, 1]")
    trades_beta: float = checked(6.0, ">= 0")  # trades: CE(clean) + trades_beta * KL
    mart_beta: float = checked(6.0, ">= 0")  # mart: boosted CE(adv) + mart_beta * weighted KL
    bf16: bool = False  # bf16 autocast for training passes and training attacks (eval: fp32)
    channels_last: bool = False  # NHWC memory format for the model and its inputs
    compile: bool = False  # torch.compile the model for training (masks never recompile it)
    seed: int = checked(0, _SEED)
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    eval_batch_size: int = checked(256, ">= 1")
    val_every: int = checked(1, ">= 1")  # validate every N epochs (and always on the last)
    init_from: str | None = None  # a finished run directory whose weights this run starts from
    init_masks: bool = False  # ... and whose masks (at the same sparsity.density)
    # also save resume state every N optimizer steps inside an epoch (0: at epoch ends only);
    # a pre-empted run then loses at most N steps
    checkpoint_every: int = checked(0, ">= 0", note=" steps (0: at epoch ends)")
    # under torchrun (see docs/distributed.md); batch_size is then the global batch
    dist_backend: DistBackend = "auto"  # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only); else per-rank BN batches
    check_ranks: bool = True  # checksum masks and weights across ranks after every epoch
    # where each epoch's record also goes, besides metrics.jsonl (always written): csv
    # (metrics.csv), tensorboard (tensorboard/, extra `track`); see `dnr list`
    loggers: list[str] = named_list(LOGGERS)


@dataclass
class SparsityConfig:
    """Which sparsity method, at what density and granularity, and how its masks evolve."""

    method: str = named("dense", SPARSITY_METHODS)
    density: float = checked(0.05, "(0, 1]")  # fraction of prunable weights kept (0.05 = 20x)
    # what a mask removes: single weights, or whole output channels (density then counts
    # the weights of the compacted, narrower network)
    granularity: str = named("weight", GRANULARITIES)
    # channel mode: what density counts — the compacted network's weights, or its MACs per
    # image (a user who prunes channels for speed)
    budget: ChannelBudget = "weights"
    init: SparsityInit = "uniform"
    prune_rate: float = checked(0.2, "[0, 1)")  # p0 of the cosine prune-rate schedule (paper: 0.5)
    prune_rate_min: float = 0.005  # floor the schedule anneals to
    # rewire every N optimizer steps; 0 = at the end of each epoch
    rewire_every: int = checked(0, ">= 0")
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns of tensors kept dense
    regrow_pruned: bool = True  # weights pruned in a rewiring may regrow in the same one
    keep_regrown_values: bool = True  # ... and keep their value (sparse_learning's; else 0)
    protect_channels: bool = True  # no output channel starts or becomes all-zero
    # share of the pruned budget moved between layers (1 = paper)
    redistribution: float = checked(0.3, "[0, 1]")
    grow_momentum: GrowMomentum = "zero"  # momentum of newly grown weights (paper: keep)
    # fraction of the run after which the masks stay fixed (paper: 1)
    rewire_until: float = checked(0.75, "(0, 1]", note=" (a fraction of the run)")
    # re-estimate BN statistics on N batches after a rewiring
    bn_refresh_batches: int = checked(8, ">= 0")
    # method-specific settings, one entry per method (so one config serves `dnr compare`),
    # e.g. {lwm: {pretrain_epochs: 3}, admm: {rho: 0.01}}; unknown keys are refused
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """The final test-set evaluation: protocol, threat model, subset."""

    protocol: str = named("dnr", PROTOCOLS)  # see `dnr list`
    # seeded random test subset; None = whole test set
    subset: int | None = checked(None, "> 0", null=True)
    seed: int = checked(0, _SEED)
    sanity: bool = True  # gradient-masking sanity checks next to the robust numbers
    eps: float | None = checked(None, "(0, 1]", null=True)  # None: each attack's protocol default
    norm: Norm = "Linf"  # L2: AutoAttack only
    batch_size: int | None = checked(None, "> 0", null=True)  # None: chosen to fit memory


@dataclass
class Config:
    """A whole run: one instance of each section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested plain mapping config.yaml holds."""
        return dataclasses.asdict(self)


def section_fields(section_cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of a dataclass (a section, or :class:`Config`)."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _declared(key: str) -> dict[str, Any]:
    """``{"SECTION.FIELD": metadata[key]}`` for every field that declares ``key``."""
    return {
        f"{section}.{f.name}": f.metadata[key]
        for section, section_cls in section_fields(Config).items()
        for f in dataclasses.fields(section_cls)
        if key in f.metadata
    }


def name_fields() -> dict[str, Registry]:
    """``{"model.name": MODELS, ...}``: every config key whose values a registry defines."""
    return _declared("registry")


def range_fields() -> dict[str, Range]:
    """``{"train.lr": Range("> 0"), ...}``: every config key with a declared range."""
    return _declared("range")


def config_keys() -> list[str]:
    """Every ``SECTION.FIELD`` key of a :class:`Config`."""
    return [
        f"{section}.{name}"
        for section, section_cls in section_fields(Config).items()
        for name in section_fields(section_cls)
    ]


def config_keys_of(section: str) -> list[str]:
    """The ``SECTION.FIELD`` keys of one section."""
    return [k for k in config_keys() if k.startswith(f"{section}.")]
