"""The runs of the controls benchmark: one shared recipe, each run a list of overrides.

A run is ``(group, name, seed, overrides, epochs multiplier)``; ``plan`` lists them in
priority order (an interrupted benchmark resumes where it stopped).
"""

from __future__ import annotations

import argparse

EPS = 8 / 255
Run = tuple[str, str, int, list[str], float]


#: The shared recipe: identical for every method, no method-specific tuning.
def base_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe every run shares (its width, epochs and device from the command line)."""
    return [
        "model.width=" + str(args.width),
        "attack.steps=3",
        f"attack.step_size={2.5 * EPS / 3}",
        f"train.epochs={args.epochs}",
        "train.schedule=cosine",
        "train.lr=0.05",
        "train.warmup_epochs=1",
        "train.batch_size=128",
        "train.beta=0.5",
        "sparsity.density=0.05",
        f"train.device={args.device}",
    ]


# The paper's rewiring as first implemented, and its recipe (no warm-up).
PAPER = [
    "train.warmup_epochs=0",
    "sparsity.keep_regrown_values=false",
    "sparsity.protect_channels=false",
    "sparsity.bn_refresh_batches=0",
    "sparsity.redistribution=1.0",
    "sparsity.grow_momentum=keep",
    "sparsity.rewire_until=1.0",
    "sparsity.prune_rate=0.5",
    "sparsity.rewire_every=0",
]
STATIC_U = ["sparsity.method=static", "sparsity.init=uniform"]
DNR_U = ["sparsity.method=dnr", "sparsity.init=uniform"]
FGSM_RS = "attack.train_mode=fgsm_rs"
CHANNEL = ["sparsity.granularity=channel", "sparsity.density=0.1"]
CHANNEL_RUNS = [
    ("dnr-channel d=0.1", [*DNR_U, *CHANNEL]),
    ("static-channel d=0.1", [*STATIC_U, *CHANNEL]),
    ("dnr-weight d=0.1", [*DNR_U, "sparsity.density=0.1"]),
    ("static-weight d=0.1", [*STATIC_U, "sparsity.density=0.1"]),
]
MAIN = [
    ("dense", ["sparsity.method=dense"]),
    ("static-uniform", STATIC_U),
    ("static-erk", ["sparsity.method=static", "sparsity.init=erk"]),
    ("dnr-uniform", DNR_U),
    ("dnr-erk", ["sparsity.method=dnr", "sparsity.init=erk"]),
]
PEERS = [  # the nearest alternatives, same recipe and total epochs
    # (FlyingBird as released starts from IGQ; this row keeps the uniform start it
    # was measured with)
    (
        "flyingbird-uniform",
        ["sparsity.method=flyingbird", "sparsity.options={flyingbird: {init: uniform}}"],
    ),
    ("lwm", ["sparsity.method=lwm"]),
]
FAST = [  # the same DNR run trained on PGD-3, FGSM-RS or free examples
    ("dnr-uniform pgd3", DNR_U, 1.0),
    ("dnr-uniform fgsm_rs", [*DNR_U, "attack.train_mode=fgsm_rs"], 1.0),
    # free replays each batch 3 times: a third of the epochs, the same optimizer steps
    ("dnr-uniform free m=3", [*DNR_U, "attack.train_mode=free", "attack.replays=3"], 1 / 3),
    # at about the training cost of the PGD-3 run: twice the epochs, or every epoch
    ("dnr-uniform fgsm_rs x2 epochs", [*DNR_U, "attack.train_mode=fgsm_rs"], 2.0),
    (
        "dnr-uniform free m=3 x3 epochs",
        [*DNR_U, "attack.train_mode=free", "attack.replays=3"],
        1.0,
    ),
    # FGSM-RS's step: the paper's 1.25 eps, a smaller and a larger one
    ("dnr-uniform fgsm_rs step 1.0", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.0"], 1.0),
    ("dnr-uniform fgsm_rs step 1.5", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.5"], 1.0),
    ("dnr-uniform fgsm_rs step 2.0", [*DNR_U, FGSM_RS, "attack.fgsm_step=2.0"], 1.0),
    ("dnr-uniform fgsm_rs step 1.5 x2 epochs", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.5"], 2.0),
]
CHANNEL_ABLATION = [
    ("redistribution=1 (paper)", ["sparsity.redistribution=1.0"]),
    ("prune_rate=0.5 + redistribution=1 (paper)", ["sparsity.prune_rate=0.5", PAPER[4]]),
    ("regrown channels reinitialised", ["sparsity.keep_regrown_values=false"]),
]
ABLATION = [
    ("redistribution=1 (paper)", ["sparsity.redistribution=1.0"]),
    ("redistribution=0 (counts frozen)", ["sparsity.redistribution=0.0"]),
    ("redistribution=0.6", ["sparsity.redistribution=0.6"]),
    ("prune_rate=0.5 (paper)", ["sparsity.prune_rate=0.5"]),
    ("prune_rate=0.1", ["sparsity.prune_rate=0.1"]),
    ("all paper rewiring, new recipe", PAPER[1:]),
    ("rewire_until=1 (paper)", ["sparsity.rewire_until=1.0"]),
    ("rewire_until=0.5", ["sparsity.rewire_until=0.5"]),
    (
        "rewire_every=25 steps + prune_rate=0.1",
        ["sparsity.rewire_every=25", "sparsity.prune_rate=0.1"],
    ),
    ("bn_refresh off (paper)", ["sparsity.bn_refresh_batches=0"]),
    ("grow_momentum=keep (paper)", ["sparsity.grow_momentum=keep"]),
    ("regrown restart at 0 (paper)", ["sparsity.keep_regrown_values=false"]),
    ("channels unprotected (paper)", ["sparsity.protect_channels=false"]),
    ("init=xavier", ["model.init=xavier"]),
]
# Second seeds of the ablation rows that move the most weights, if time allows.
ABLATION_SEED_1 = {
    "redistribution=1 (paper)",
    "redistribution=0 (counts frozen)",
    "rewire_every=25 steps + prune_rate=0.1",
    "all paper rewiring, new recipe",
    "prune_rate=0.5 (paper)",
    "rewire_until=1 (paper)",
}


def per_seed_runs(seeds: list[int]) -> list[Run]:
    """main, peers, fast modes and channel mode, every seed given (each group seed-major)."""
    runs: list[Run] = []
    for seed in seeds:
        runs += [("main", name, seed, ov, 1) for name, ov in MAIN]
    for seed in seeds:
        runs += [("peers", name, seed, ov, 1) for name, ov in PEERS]
    for seed in seeds:
        runs += [("fast", name, seed, ov, mult) for name, ov, mult in FAST]
    for seed in seeds:
        runs += [("channel", name, seed, ov, 1) for name, ov in CHANNEL_RUNS]
        runs += [("channel", f"{name} x4 epochs", seed, ov, 4) for name, ov in CHANNEL_RUNS[:2]]
    for seed in seeds:
        runs += [
            ("channel", f"dnr-channel d=0.1 {label}", seed, [*CHANNEL_RUNS[0][1], *ov], 1)
            for label, ov in CHANNEL_ABLATION
        ]
    return runs


def seed_0_runs() -> list[Run]:
    """The "before" rows, the ablation and the long runs on seed 0."""
    runs: list[Run] = [
        ("before", "dense-before", 0, ["sparsity.method=dense", "train.warmup_epochs=0"], 1),
        ("before", "static-uniform-before", 0, [*STATIC_U, *PAPER], 1),
        ("before", "dnr-uniform-before", 0, [*DNR_U, *PAPER], 1),
        ("before", "dnr-erk-before", 0, ["sparsity.method=dnr", "sparsity.init=erk", *PAPER], 1),
    ]
    runs += [("ablation", f"dnr-uniform {label}", 0, [*DNR_U, *ov], 1) for label, ov in ABLATION]
    runs += [
        ("ablation", "static-uniform init=xavier", 0, [*STATIC_U, "model.init=xavier"], 1),
        ("ablation", "dense init=xavier", 0, ["sparsity.method=dense", "model.init=xavier"], 1),
        ("long", "static-uniform x4 epochs", 0, STATIC_U, 4),
        ("long", "dnr-uniform x4 epochs", 0, DNR_U, 4),
    ]
    return runs


def later_runs() -> list[Run]:
    """Second seeds of the ablation and long runs, and ERK's long runs, if time allows."""
    runs: list[Run] = [
        ("ablation", f"dnr-uniform {label}", 1, [*DNR_U, *ov], 1)
        for label, ov in ABLATION
        if label in ABLATION_SEED_1
    ]
    runs += [
        ("long", "static-uniform x4 epochs", 1, STATIC_U, 4),
        ("long", "dnr-uniform x4 epochs", 1, DNR_U, 4),
        ("long", "static-erk x4 epochs", 0, ["sparsity.method=static", "sparsity.init=erk"], 4),
        ("long", "dnr-erk x4 epochs", 0, ["sparsity.method=dnr", "sparsity.init=erk"], 4),
    ]
    return runs


def plan(seeds: list[int]) -> list[Run]:
    """(group, name, seed, overrides, epochs multiplier) in priority order."""
    return per_seed_runs(seeds) + seed_0_runs() + later_runs()
