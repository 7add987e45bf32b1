"""The study's fixed protocol: scales (data, model, recipe, evaluation), variants (a method
as the study runs it) and tables (the runs that answer one question).

Everything here is data: a run is ``(table, variant, seed)`` plus the overrides that make
its config, so the same command always builds the same run, and a row in a results file
names everything that made it. Every variant of a table shares the scale's recipe; only
the overrides a table's question varies differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dnr.constants import CIFAR_MEAN, CIFAR_STD
from experiments.pack import read_manifest

__all__ = [
    "NOISE",
    "NOISE_OFFSET",
    "SCALES",
    "TABLES",
    "VARIANTS",
    "Run",
    "Scale",
    "Table",
    "runs_of",
]

#: PGD steps of training at the reduced scales; the attack step is 2.5·eps/steps
_EPS = 8 / 255


def _attack(steps: int) -> list[str]:
    return [f"attack.steps={steps}", f"attack.step_size={2.5 * _EPS / steps!r}"]


@dataclass(frozen=True)
class Scale:
    """A setting every table of the study runs in: its config and its evaluation."""

    name: str
    description: str
    config: str  # a preset name or a config file
    overrides: tuple[str, ...]
    #: test images for clean / PGD-20 / the paper protocol (None: the whole test set)
    test_subset: int | None
    #: seeded test images for AutoAttack on the selected weights (0: not run)
    autoattack: int
    #: test images for clean / PGD-20 on the final (last-epoch) weights
    final_subset: int | None
    #: PGD-20 restarts (RobustBench-style single start unless said otherwise)
    pgd20_restarts: int = 1
    #: data files, relative to --data-dir: (train files, test file); None: the preset's
    data: tuple[tuple[str, ...], str] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)

    def data_overrides(self, data_dir: Path) -> list[str]:
        """The data files under ``data_dir`` — as packed there for a device, if they were."""
        if self.data is None:
            return []
        packed = read_manifest(data_dir)
        train, test = packed if packed is not None else (self.data[0], [self.data[1]])
        files = ",".join(str(data_dir / f) for f in train)
        tests = ",".join(str(data_dir / f) for f in test)
        # CIFAR's published statistics, as every committed run was normalised (before
        # data.mean/std existed npz data always used them; now npz computes its own)
        stats = [f"data.mean=[{', '.join(map(repr, CIFAR_MEAN))}]"]
        stats.append(f"data.std=[{', '.join(map(repr, CIFAR_STD))}]")
        return ["data.name=npz", f"data.train=[{files}]", f"data.test=[{tests}]", *stats]


_CIFAR10 = (("cifar10_train_part0.npz", "cifar10_train_part1.npz"), "cifar10_test.npz")

SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale(
            "tiny",
            "mechanics only: VGG16 at width 1/16 on the bundled digits, 4 epochs",
            "vgg16_cifar10",
            (
                "data.name=digits",
                "data.subset=192",
                "data.val_size=64",
                "model.width=0.0625",
                *_attack(2),
                "attack.val_steps=2",
                "train.epochs=4",
                "train.batch_size=32",
                "train.lr=0.05",
                "train.schedule=cosine",
                "train.warmup_epochs=1",
                "train.device=cpu",
                "eval.sanity=false",
            ),
            test_subset=64,
            autoattack=0,
            final_subset=32,
            seeds=(0, 1),
        ),
        Scale(
            "cpu",
            "2-core CPU: VGG16 at width 1/4, 10,000 CIFAR-10 images (+1,000 validation), "
            "10 epochs of PGD-3 hybrid training, cosine LR 0.05",
            "vgg16_cifar10",
            (
                "data.subset=10000",
                "data.val_size=1000",
                "model.width=0.25",
                *_attack(3),
                "attack.val_steps=10",
                "train.epochs=10",
                "train.schedule=cosine",
                "train.lr=0.05",
                "train.warmup_epochs=1",
                "train.device=cpu",
                "eval.sanity=false",
            ),
            test_subset=None,
            autoattack=1000,
            final_subset=2000,
            data=_CIFAR10,
        ),
        Scale(
            "paper",
            "the paper's setting on one GPU: width 1.0, all 49,000 training images, "
            "PGD-7 training, the presets' 200-epoch multistep recipe, bf16 + channels_last",
            "vgg16_cifar10",
            ("train.device=cuda", "train.bf16=true", "train.channels_last=true"),
            test_subset=None,
            autoattack=1000,
            final_subset=None,
            data=_CIFAR10,
        ),
    )
}


#: A method as the study runs it: the overrides that make it (on top of the scale's).
VARIANTS: dict[str, tuple[str, ...]] = {
    "dense": ("sparsity.method=dense",),
    "static-uniform": ("sparsity.method=static", "sparsity.init=uniform"),
    "static-erk": ("sparsity.method=static", "sparsity.init=erk"),
    "dnr-paper": ("sparsity.method=dnr-paper",),
    "dnr": ("sparsity.method=dnr",),
    "flyingbird": ("sparsity.method=flyingbird",),
    "hydra": ("sparsity.method=hydra",),
    "lwm": ("sparsity.method=lwm",),
    "admm": ("sparsity.method=admm",),
    # channel mode: whole channels, budget in weights of the compacted network
    "dnr-channel": ("sparsity.method=dnr", "sparsity.granularity=channel"),
    "static-channel": ("sparsity.method=static", "sparsity.granularity=channel"),
    "lasso": ("sparsity.method=lasso", "sparsity.granularity=channel"),
    "admm-channel": ("sparsity.method=admm", "sparsity.granularity=channel"),
    # ... and at a budget of MACs per image instead of weights (for speed)
    "dnr-channel-macs": (
        "sparsity.method=dnr",
        "sparsity.granularity=channel",
        "sparsity.budget=macs",
    ),
    "static-channel-macs": (
        "sparsity.method=static",
        "sparsity.granularity=channel",
        "sparsity.budget=macs",
    ),
}


@dataclass(frozen=True)
class Run:
    """One training run of the study: its table, its id in the table, seed and overrides."""

    table: str
    variant: str
    setting: str  # what the table varies, e.g. "d=0.02" ("" for the main table)
    seed: int
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        """``<setting>/<variant>/seed<k>``: its place under runs/ and results/."""
        parts = [self.setting] if self.setting else []
        return "/".join([*parts, self.variant, f"seed{self.seed}"])


@dataclass(frozen=True)
class Table:
    """A question: the variants it compares, in each setting it varies."""

    name: str
    question: str
    variants: tuple[str, ...]
    #: setting label → overrides (one entry with label "" for a table that varies nothing)
    settings: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"": ()})
    reference: str = "dnr"
    #: also train the reference with every seed + NOISE_OFFSET: how far identical
    #: configurations differ (the noise floor every difference is read against)
    noise_floor: bool = False
    #: more paired differences to report, (a, b) for a − b: e.g. the two variants of a
    #: budget the reference does not share
    pairs: tuple[tuple[str, str], ...] = ()


#: seed offset of the noise-floor runs, and their setting label
NOISE_OFFSET, NOISE = 1000, "noise"

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "main",
            "at d = 0.05, what does each method give, and is DNR ahead of it?",
            (
                "dnr",
                "static-erk",
                "dnr-paper",
                "flyingbird",
                "static-uniform",
                "dense",
                "hydra",
                "lwm",
                "admm",
            ),
            {"": ("sparsity.density=0.05",)},
            noise_floor=True,
        ),
        Table(
            "compression",
            "how does accuracy fall with density, and where does allocation matter?",
            ("dnr", "static-erk", "flyingbird", "lwm"),
            {f"d={d}": (f"sparsity.density={d}",) for d in ("0.1", "0.05", "0.02", "0.01")},
        ),
        Table(
            "length",
            "does DNR's lead over its controls grow with the run's length?",
            ("dnr", "static-erk", "flyingbird"),
            {f"e={e}": (f"train.epochs={e}",) for e in (5, 10, 40)},
        ),
        Table(
            "beta",
            "what does the hybrid loss buy? (beta = share of the clean loss)",
            ("dnr",),
            {f"beta={b}": (f"train.beta={b}",) for b in ("0", "0.5", "1")},
        ),
        Table(
            "channel",
            "whole channels at d = 0.1: DNR vs static vs lasso vs ADMM, with MACs and latency;"
            " and DNR vs static at d = 0.1 of the MACs",
            (
                "dnr-channel",
                "static-channel",
                "lasso",
                "admm-channel",
                "dnr-channel-macs",
                "static-channel-macs",
            ),
            {"": ("sparsity.density=0.1",)},
            reference="dnr-channel",
            noise_floor=True,
            pairs=(("static-channel-macs", "dnr-channel-macs"),),
        ),
    )
}


def runs_of(table: Table, seeds: tuple[int, ...]) -> list[Run]:
    """The table's runs in queue order: seed by seed, so a study cut short still has every
    variant of its first seeds (the paired intervals need whole seeds)."""
    runs = [
        Run(table.name, variant, setting, seed, (*overrides, *VARIANTS[variant]))
        for seed in seeds
        for setting, overrides in table.settings.items()
        for variant in table.variants
    ]
    if table.noise_floor:
        (overrides,) = table.settings.values()
        ref = table.reference
        runs += [
            Run(table.name, ref, NOISE, seed + NOISE_OFFSET, (*overrides, *VARIANTS[ref]))
            for seed in seeds
        ]
    return runs
