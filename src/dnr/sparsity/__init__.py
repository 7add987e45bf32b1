"""Sparsity: methods as registered plug-ins, and the mask machinery they are built from.

* ``base``: the :class:`SparsityMethod` interface, :class:`Stage`, :class:`Progress`, the
  registry functions (``register_method``, ``build_sparsity``, ``list_methods``).
* ``dense``, ``static``, ``dnr``: the reference, the control and the method; ``lwm``,
  ``admm``, ``lasso``, ``hydra``, ``flyingbird``: the baselines (one module each).
* ``masking``: :class:`Masking`, the object that owns per-weight masks and rewires them;
  ``channel_masking``: :class:`ChannelMasking`, the same for whole output channels, with
  ``channels`` (:class:`ChannelLayout`: what kept channels cost once compacted);
  ``budgets`` / ``rewiring``: the pure tensor functions it is made of; ``schedules``: the
  prune-rate schedule; ``layers``: which tensors are prunable.
"""

from dnr.sparsity import admm as _admm  # noqa: F401  (registers "admm")
from dnr.sparsity import channel_masking as _channel  # noqa: F401  (registers "channel")
from dnr.sparsity import dense as _dense  # noqa: F401  (registers "dense")
from dnr.sparsity import dnr as _dnr  # noqa: F401  (registers "dnr")
from dnr.sparsity import dnr_paper as _dnr_paper  # noqa: F401  (registers "dnr-paper")
from dnr.sparsity import flyingbird as _flyingbird  # noqa: F401  (registers "flyingbird")
from dnr.sparsity import hydra as _hydra  # noqa: F401  (registers "hydra")
from dnr.sparsity import lasso as _lasso  # noqa: F401  (registers "lasso")
from dnr.sparsity import lwm as _lwm  # noqa: F401  (registers "lwm")
from dnr.sparsity import static as _static  # noqa: F401  (registers "static")
from dnr.sparsity.base import (
    Progress,
    SparsityMethod,
    Stage,
    build_sparsity,
    list_methods,
    register_method,
)
from dnr.sparsity.budgets import layer_budgets, random_mask, redistribute
from dnr.sparsity.channel_masking import ChannelMasking
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.masking import Masking
from dnr.sparsity.rewiring import (
    RewireStats,
    channel_keepers,
    magnitude_prune,
    momentum_regrow,
    normalized_momentum,
    prune_counts,
    regrowth_shares,
)
from dnr.sparsity.schedules import cosine_prune_rate
from dnr.sparsity.static import MaskedMethod

__all__ = [
    "ChannelLayout",
    "ChannelMasking",
    "MaskedMethod",
    "Masking",
    "Progress",
    "RewireStats",
    "SparsityMethod",
    "Stage",
    "build_sparsity",
    "channel_keepers",
    "cosine_prune_rate",
    "layer_budgets",
    "list_methods",
    "magnitude_prune",
    "momentum_regrow",
    "normalized_momentum",
    "prunable_parameters",
    "prune_counts",
    "random_mask",
    "redistribute",
    "register_method",
    "regrowth_shares",
]
