"""``dense``: no sparsity at all — the upper reference every sparse method is measured against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dnr.sparsity.base import SparsityMethod, register_method


@register_method
class Dense(SparsityMethod):
    """Every weight kept; the hooks do nothing."""

    name = "dense"
    description = "no pruning: every weight is trained (the reference)"
    granularities = ()

    def stats(self) -> dict[str, Any]:
        return {"target_density": 1.0, "achieved_density": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Accepts its own state, and ``None`` (what older dense checkpoints stored)."""
        if state is not None and state.get("method", self.name) != self.name:
            raise ValueError(
                f"cannot load the state of sparsity method {state['method']!r} into a dense run"
            )
