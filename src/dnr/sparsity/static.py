"""``static``: a fixed random mask at the target density — the control DNR must beat.

Also the base of every method whose sparsity is a mask set at an exact budget: it builds
the masks of ``sparsity.granularity`` (``weight``: :class:`Masking`; ``channel``:
:class:`ChannelMasking`; any class registered in ``dnr.registry.GRANULARITIES``) from
``sparsity.*``, re-applies them after each step, and reports, saves and restores them. A
method that moves the masks overrides the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from dnr.errors import ConfigError
from dnr.registry import GRANULARITIES
from dnr.sparsity.base import Progress, SparsityMethod, register_method
from dnr.sparsity.mask import MaskSet

if TYPE_CHECKING:
    from dnr.config import Config


class MaskedMethod(SparsityMethod):
    """Owns the masks of ``sparsity.granularity`` built from the config; they never move here."""

    granularities: ClassVar[tuple[str, ...]] = ("weight", "channel")

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> None:
        super().__init__(cfg, model, optimizer, generator)
        try:
            self.masking: MaskSet = self.build_masks(generator)
        except ValueError as err:  # e.g. exclude patterns that leave nothing to prune
            raise ConfigError(f"sparsity: {err}") from None
        self._initial_layer_density = self.masking.layer_densities()

    def build_masks(self, generator: torch.Generator) -> MaskSet:
        """The mask object of ``sparsity.granularity``, from ``cfg.sparsity``."""
        s = self.cfg.sparsity
        mask_class: type[MaskSet] = GRANULARITIES.get(s.granularity)
        return mask_class.from_config(self.model, self.optimizer, s, generator)

    def after_step(self, progress: Progress) -> None:
        self.masking.apply_()  # weight decay and momentum moved masked weights: back to 0

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if progress.epoch == 0:
            record["layer_density_init"] = self._initial_layer_density
        record["density"] = self.masking.density()
        record.update(self.epoch_end_update(progress))
        record["layer_density"] = self.masking.layer_densities()
        record["density_after_rewire"] = self.masking.density()
        return record

    def epoch_end_update(self, progress: Progress) -> dict[str, Any]:
        """Change the masks at the end of an epoch (nothing here); returns fields to log."""
        return {}

    def density(self) -> float:
        return self.masking.density()

    def stats(self) -> dict[str, Any]:
        m, s = self.masking, self.cfg.sparsity
        counts = m.layer_counts()
        return {
            "target_density": s.density,
            "achieved_density": m.density(),
            "num_prunable": m.num_prunable,
            "num_active": m.num_active,
            "prunable": "weights of Conv2d and Linear layers"
            + (f", except {s.exclude}" if s.exclude else ""),
            "layers": {
                name: {"shape": list(m.layer_shapes[name]), "density": dens, "active": counts[name]}
                for name, dens in m.layer_densities().items()
            },
            **m.extra_stats(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, **self.masking.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.masking.load_state_dict(state)

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        self.masking.adopt(state)
        self._initial_layer_density = self.masking.layer_densities()


@register_method
class Static(MaskedMethod):
    """The initial random mask, kept for the whole run."""

    name = "static"
    description = "a fixed random mask at sparsity.density (the control for DNR)"
