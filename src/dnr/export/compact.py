"""Compact export: a channel-mode model rebuilt narrower, with its dead channels removed.

A channel-mode run keeps a pruned channel silent (zero filter, zero BN scale and shift, zero
consumer slices), so its output after BN+ReLU is exactly 0 and it adds nothing to any
logit. Removing it is therefore exact: the narrow model is the registry architecture built
with ``channels={producer: kept}`` (recorded in ``arch_config``, so ``model.json`` rebuilds
it without pickled modules; a foreign model's groups are cut in place by
``dnr.models.narrow``), and every tensor is the masked model's, sliced along the output
channels of producers and BatchNorms and the input channels of consumers.
Own surgery rather than torch-pruning's dependency graph: the groups are declared by the
model or derived from its ``torch.fx`` graph (``dnr.models.channels``), which is all the
conv/BN chains channel mode prunes need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from dnr.modelfile import model_from_architecture
from dnr.models.channels import channel_groups
from dnr.rundir import ArtifactError
from dnr.statedict import canonical_name

__all__ = ["compact_model"]


def _indices(name: str, kept: Sequence[int], size: int) -> Tensor:
    idx = sorted({int(i) for i in kept})
    if not idx or len(idx) != len(kept) or idx[0] < 0 or idx[-1] >= size:
        raise ArtifactError(
            f"kept channels of {name}: need distinct indices in [0, {size}), got {len(kept)}"
        )
    return torch.tensor(idx, dtype=torch.long)


@torch.no_grad()
def compact_model(model: nn.Module, kept: Mapping[str, Sequence[int]]) -> nn.Module:
    """The narrower model that keeps channels ``kept[producer]`` of each channel group.

    ``model`` is the full-width (masked) model built by ``dnr.create_model`` (a built-in or
    a foreign ``package.module:callable`` / ``timm:`` model); groups not in
    ``kept`` keep all their channels. Returns a new model in eval mode, on ``model``'s
    device and dtype, whose logits equal ``model``'s. ``ArtifactError`` if a removed
    channel is not silent (BN scale or shift nonzero): then removing it would change them.
    """
    arch = getattr(model, "arch_config", None)
    if arch is None:
        raise ArtifactError("model has no arch_config; build it with dnr.create_model")
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    groups = {g.producer: g for g in channel_groups(model)}
    unknown = sorted(set(kept) - set(groups))
    if unknown:
        raise ArtifactError(f"kept channels name no channel group of this model: {unknown}")
    rows: dict[str, Tensor] = {}  # module -> kept indices along dim 0 of every tensor
    cols: dict[str, Tensor] = {}  # consumer -> kept indices along dim 1 of its weight
    for producer, indices in kept.items():
        group = groups[producer]
        size = modules[producer].weight.shape[0]
        idx = _indices(producer, indices, size)
        norm = modules[group.norm]
        removed = torch.ones(size, dtype=torch.bool)
        removed[idx] = False
        removed = removed.to(norm.weight.device)
        if bool((norm.weight[removed] != 0).any() or (norm.bias[removed] != 0).any()):
            raise ArtifactError(
                f"channels of {producer} outside its kept list are not silent (nonzero "
                f"{group.norm} scale or shift): these kept channels are not this model's"
            )
        rows[group.producer] = rows[group.norm] = idx
        for consumer in group.consumers:
            per_channel = modules[consumer].weight.shape[1] // size  # a Linear's positions
            cols[consumer] = (idx[:, None] * per_channel + torch.arange(per_channel)).flatten()
    channels = {
        **dict(arch.get("channels") or {}),
        **{p: len(i) for p, i in rows.items() if p in groups},
    }
    narrow = model_from_architecture({**arch, "channels": channels})
    state: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        module, _, leaf = canonical_name(key).rpartition(".")
        if module in rows and value.dim() >= 1:
            value = value.index_select(0, rows[module].to(value.device))
        if module in cols and leaf == "weight":
            value = value.index_select(1, cols[module].to(value.device))
        state[canonical_name(key)] = value.detach().clone()
    narrow.load_state_dict(state)
    reference = next(model.parameters())
    return narrow.to(reference.device, reference.dtype).eval()
