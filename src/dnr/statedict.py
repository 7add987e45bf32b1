"""State-dict key hygiene shared by masks and checkpoint loading."""

from __future__ import annotations

from collections.abc import Iterable

#: Prefixes added by wrappers: DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def canonical_name(name: str, extra_prefixes: Iterable[str] = ()) -> str:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile).

    Keys must not depend on how the model happened to be wrapped, or a checkpoint written
    under DDP would not load into a plain model and vice versa. ``extra_prefixes`` adds
    layout-specific ones (third-party checkpoints that nest the network as ``model.``).
    """
    prefixes = (*WRAPPER_PREFIXES, *extra_prefixes)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name
