"""Sparsity for DNR: masks, budgets and dynamic network rewiring (irregular mode).

``Masking`` owns the sparsity state of a run; ``rewiring`` holds the pure tensor functions it
is built from; ``schedules`` the prune-rate schedule. See docs/method.md for the algorithm.
"""

from dnr.sparsity.masking import Masking, RewireStats, canonical_name, prunable_parameters
from dnr.sparsity.rewiring import (
    channel_keepers,
    layer_budgets,
    magnitude_prune,
    momentum_regrow,
    normalized_momentum,
    prune_counts,
    random_mask,
    redistribute,
    regrowth_shares,
)
from dnr.sparsity.schedules import cosine_prune_rate

__all__ = [
    "Masking",
    "RewireStats",
    "canonical_name",
    "prunable_parameters",
    "channel_keepers",
    "layer_budgets",
    "magnitude_prune",
    "momentum_regrow",
    "normalized_momentum",
    "prune_counts",
    "random_mask",
    "redistribute",
    "regrowth_shares",
    "cosine_prune_rate",
]


# Interim: registered names until the method plug-ins land.
from dnr.registry import SPARSITY_METHODS as _METHODS  # noqa: E402


class _Interim:
    def __init__(self, name: str) -> None:
        self.name = name

    def check_config(self, cfg: object) -> None:
        from dnr.errors import ConfigError

        if self.name == "dnr" and cfg.train.momentum == 0:  # type: ignore[attr-defined]
            raise ConfigError("sparsity.method=dnr grows by momentum: train.momentum must be > 0")


for _name in ("dense", "static", "dnr"):
    _METHODS.register(_Interim(_name), name=_name)
