"""What a ``dnr compare`` will do, decided before anything trains.

Every name, seed, config and existing directory that can be refused is checked here, so a
typo or a stale run directory costs no training: :func:`plan_compare` returns the runs in
order with the action each needs (train afresh, resume, reuse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dnr.compare.protocol import NOISE_SEED_OFFSET
from dnr.compare.rows import read_json_object
from dnr.config import Config, ConfigError, load_config, parse_override, read_saved_config
from dnr.registry import SPARSITY_METHODS, UnknownNameError
from dnr.rundir import RunDir
from dnr.training.writer import config_difference

__all__ = [
    "Action",
    "ComparePlan",
    "check_layout",
    "check_seeds",
    "choose_reference",
    "method_configs",
    "parse_seeds",
    "plan_compare",
    "plan_run",
    "seeded_configs",
    "select_methods",
]

#: The largest seed train.seed takes (config/sections.py checks the same bound).
_SEED_LIMIT = 2**63

#: What to do with a method's run directory: train afresh, resume it, or reuse it.
Action = Literal["train", "resume", "reuse"]


def select_methods(methods: Sequence[str] | None, log: Callable[[str], None] = print) -> list[str]:
    """Registered names (lower case) in the given order; all registered ones for None.

    Every name is checked before one is returned, so a typo costs no training. A name given
    twice runs once (with a note): two runs of one method with one seed would be identical.
    """
    if methods is None:
        return SPARSITY_METHODS.names()
    names: list[str] = []
    for raw in methods:
        name = raw.strip().lower()
        if name in names:
            log(f"note: sparsity method {name} is named twice; it runs once")
        elif name:
            names.append(name)
    if not names:
        raise ConfigError("no sparsity methods to compare (e.g. --methods dense,static,dnr)")
    unknown = [n for n in names if n not in SPARSITY_METHODS]
    if unknown:
        raise UnknownNameError(
            f"unknown sparsity method{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; choose from "
            f"{', '.join(SPARSITY_METHODS.names())}"
        )
    return names


def method_configs(
    cfg_path: str | Path | None, methods: Sequence[str], overrides: Sequence[str]
) -> dict[str, Config]:
    """The config of each method: the file + overrides + ``sparsity.method=<method>``."""
    for text in overrides:
        if parse_override(text)[0] == "sparsity.method":
            raise ConfigError(
                "compare sets sparsity.method for each run; name the methods with --methods"
            )
    configs = {}
    for method in methods:
        try:
            configs[method] = load_config(cfg_path, [*overrides, f"sparsity.method={method}"])
        except ConfigError as err:
            raise ConfigError(f"sparsity.method={method}: {err}") from None
    return configs


def plan_run(method: str, cfg: Config, run_dir: Path) -> Action:
    """Train, resume or reuse ``run_dir``; ConfigError when it cannot be part of the table.

    The config check is the one ``dnr train --resume`` makes (same difference message),
    made here for finished runs too and before any method trains.
    """
    run = RunDir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{method}: {run_dir} is not a directory; choose another --out")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "train"
    if not run.config.is_file():
        raise ConfigError(
            f"{method}: {run_dir} is not a run directory (no config.yaml); "
            "remove it or choose another --out"
        )
    saved = read_saved_config(run.config)
    if saved != cfg.to_dict():
        raise ConfigError(
            f"{method}: {run_dir} was trained with another configuration "
            f"({config_difference(saved, cfg.to_dict())}); remove it or choose another --out"
        )
    if run.eval_json.is_file() and run.model_meta.is_file():
        evaluation = read_json_object(run.eval_json, method)
        wanted = (cfg.eval.protocol, cfg.eval.norm)
        found = (evaluation.get("protocol"), evaluation.get("norm"))
        if found != wanted:  # e.g. a later `dnr eval RUN --protocol full` replaced it
            raise ConfigError(
                f"{method}: {run.eval_json} holds a {found[0]}/{found[1]} evaluation, not "
                f"eval.protocol={wanted[0]} eval.norm={wanted[1]}; move it away to have "
                "compare evaluate the run again"
            )
        return "reuse"
    if run.last_checkpoint.is_file():
        return "resume"  # interrupted in training or in its evaluation
    if run.model_weights.is_file():
        raise ConfigError(
            f"{method}: {run_dir} holds a model but no eval.json and no checkpoint to resume; "
            "remove it or choose another --out"
        )
    return "train"  # interrupted before its first epoch ended: nothing to resume


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers, in the given order."""
    words = [w.strip() for w in text.split(",")]
    if not any(words):
        raise ConfigError(f"--seeds: no seeds in {text!r} (e.g. --seeds 0,1,2)")
    seeds = []
    for word in words:
        try:
            seeds.append(int(word))
        except ValueError:
            raise ConfigError(
                f"--seeds: {word!r} is not an integer (comma-separated seeds, e.g. --seeds 0,1,2)"
            ) from None
    check_seeds(seeds)
    return seeds


def check_seeds(seeds: Sequence[int]) -> None:
    """ConfigError for no seeds, a negative or too large one, or one given twice (the runs of
    a seed would be identical, and a pair counted twice narrows the interval falsely)."""
    if not seeds:
        raise ConfigError("--seeds: no seeds (e.g. --seeds 0,1,2)")
    for seed in seeds:
        if not 0 <= seed < _SEED_LIMIT - NOISE_SEED_OFFSET:
            raise ConfigError(f"--seeds: a seed is a non-negative integer, got {seed}")
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise ConfigError(
            f"--seeds: seed {', '.join(map(str, twice))} given twice; each seed trains every "
            "method once"
        )


def choose_reference(names: Sequence[str], reference: str | None) -> str:
    """``--reference``: the given method, else dnr when it is compared, else the first."""
    if reference is None:
        return "dnr" if "dnr" in names else names[0]
    name = reference.strip().lower()
    if name not in names:
        raise ConfigError(
            f"--reference {name}: not among the compared methods ({', '.join(names)})"
        )
    return name


def seeded_configs(
    cfg_path: str | Path | None,
    methods: Sequence[str],
    overrides: Sequence[str],
    seeds: Sequence[int],
) -> dict[tuple[str, int], Config]:
    """The config of each (method, seed): method_configs + ``train.seed=<seed>`` (the last
    override, so it wins over a ``train.seed=`` the user gave)."""
    configs = {}
    for seed in seeds:
        per_method = method_configs(cfg_path, methods, [*overrides, f"train.seed={seed}"])
        configs.update({(m, seed): cfg for m, cfg in per_method.items()})
    return configs


def check_layout(out: Path, method: str, per_seed: bool) -> None:
    """Refuse a method directory laid out for the other mode (one seed vs. several)."""
    method_dir = out / method
    if not method_dir.is_dir():
        return
    if per_seed and RunDir(method_dir).config.is_file():
        raise ConfigError(
            f"{method}: {method_dir} holds a single-seed run; runs with several seeds (or "
            "--noise-floor) go to OUT/<method>/seed<k>/: choose another --out"
        )
    if not per_seed and any(p.name.startswith("seed") for p in method_dir.iterdir()):
        raise ConfigError(
            f"{method}: {method_dir} holds per-seed runs (seed<k>/); give their --seeds "
            "(and --noise-floor if it was given), or choose another --out"
        )


@dataclass(frozen=True)
class ComparePlan:
    """The runs of one comparison: their configs, directories and actions, all checked."""

    out: Path
    methods: list[str]
    reference: str
    seeds: list[int]
    #: The reference's extra seeds (seed + NOISE_SEED_OFFSET) for --noise-floor; else empty.
    noise_seeds: list[int]
    configs: dict[tuple[str, int], Config]
    #: Several seeds or --noise-floor: runs go to OUT/<method>/seed<k>/.
    per_seed: bool
    actions: dict[tuple[str, int], Action] = field(default_factory=dict)

    @property
    def runs(self) -> list[tuple[str, int]]:
        """(method, seed) in training order: seed by seed, then the noise-floor runs."""
        runs = [(m, k) for k in self.seeds for m in self.methods]
        return runs + [(self.reference, k) for k in self.noise_seeds]

    def label(self, method: str, seed: int) -> str:
        """How the log and error messages name one run."""
        return f"{method} seed {seed}" if self.per_seed else method

    def where(self, method: str, seed: int) -> Path:
        """The run directory of one run."""
        return self.out / method / f"seed{seed}" if self.per_seed else self.out / method


def plan_compare(
    cfg_path: str | Path | None,
    out_dir: str | Path,
    methods: Sequence[str] | None,
    overrides: Sequence[str],
    *,
    seeds: Sequence[int] | None,
    reference: str | None,
    noise_floor: bool,
    log: Callable[[str], None],
) -> ComparePlan:
    """Check everything a comparison could refuse and decide each run's action."""
    names = select_methods(methods, log)
    ref = choose_reference(names, reference)
    seed_list, configs, noise_seeds = _configs_by_seed(
        cfg_path, names, ref, overrides, seeds, noise_floor
    )
    per_seed = len(seed_list) > 1 or noise_floor
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is not a directory; choose another --out")
    for method in names:
        check_layout(out, method, per_seed)
    plan = ComparePlan(out, names, ref, seed_list, noise_seeds, configs, per_seed)
    actions = {
        (m, k): plan_run(plan.label(m, k), configs[m, k], plan.where(m, k)) for m, k in plan.runs
    }
    return replace(plan, actions=actions)


def _configs_by_seed(
    cfg_path: str | Path | None,
    names: list[str],
    ref: str,
    overrides: Sequence[str],
    seeds: Sequence[int] | None,
    noise_floor: bool,
) -> tuple[list[int], dict[tuple[str, int], Config], list[int]]:
    """The seeds, the config of every (method, seed) and the noise-floor seeds.

    ``seeds`` None: the config's train.seed alone; else each seed overrides train.seed, so
    a ``train.seed=`` override is refused.
    """
    if seeds is None:
        configs = method_configs(cfg_path, names, list(overrides))
        seed_list = [configs[names[0]].train.seed]
        seeded = {(m, seed_list[0]): configs[m] for m in names}
    else:
        seed_list = list(seeds)
        check_seeds(seed_list)
        if any(parse_override(text)[0] == "train.seed" for text in overrides):
            raise ConfigError(
                "compare sets train.seed for each run when --seeds is given; drop train.seed="
            )
        seeded = {}
    noise_seeds = [k + NOISE_SEED_OFFSET for k in seed_list] if noise_floor else []
    if set(noise_seeds) & set(seed_list):
        raise ConfigError(
            f"--noise-floor trains {ref} with seeds + {NOISE_SEED_OFFSET}, and seed "
            f"{sorted(set(noise_seeds) & set(seed_list))[0]} is in --seeds: give seeds below "
            f"{NOISE_SEED_OFFSET} or apart by more"
        )
    if seeds is not None:
        seeded = seeded_configs(cfg_path, names, list(overrides), seed_list)
    if noise_seeds:
        seeded.update(seeded_configs(cfg_path, [ref], list(overrides), noise_seeds))
    return seed_list, seeded, noise_seeds
