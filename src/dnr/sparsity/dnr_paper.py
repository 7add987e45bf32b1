"""``dnr-paper``: DNR with the paper's rewiring, exactly — the reference every comparison
reports beside this project's tuned ``dnr``.

The paper (Kundu et al., ASP-DAC 2021) and sparse_learning, the code its rewiring follows,
fix what ``dnr``'s defaults tune: prune rate 0.5 cosine-annealed over the whole run, the
whole pruned budget redistributed by normalized momentum, regrown weights keeping the
momentum they had, no channel protection and no BatchNorm refresh. A weight pruned and
regrown in one rewiring keeps its value, as sparse_learning does (it never zeroes between
prune and grow). This method runs those values whatever ``sparsity.*`` says about them
(the run's ``config.yaml`` keeps what was typed; ``model.json`` records what ran). Everything
else — data, attack, hybrid loss, LR schedule and its warm-up, budget, init — is the
shared recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dnr.sparsity.base import register_method
from dnr.sparsity.dnr import DNR

__all__ = ["PAPER_REWIRING", "DNRPaper"]

#: The paper's values of the rewiring settings ``dnr`` tunes (docs/method.md has the table).
PAPER_REWIRING: dict[str, Any] = {
    "prune_rate": 0.5,
    "prune_rate_min": 0.005,
    "rewire_every": 0,  # once per epoch
    "rewire_until": 1.0,
    "redistribution": 1.0,
    "grow_momentum": "keep",
    "keep_regrown_values": True,
    "regrow_pruned": True,
    "protect_channels": False,
    "bn_refresh_batches": 0,
}


@register_method
class DNRPaper(DNR):
    """DNR's rewiring with every setting at the paper's value."""

    name = "dnr-paper"
    description = "dynamic network rewiring with the paper's settings (prune rate 0.5, ...)"

    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        paper = dataclasses.replace(cfg.sparsity, **PAPER_REWIRING)
        super().__init__(dataclasses.replace(cfg, sparsity=paper), *args, **kwargs)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "rewiring": dict(PAPER_REWIRING)}
