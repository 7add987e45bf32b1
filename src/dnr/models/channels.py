"""Which output channels can be removed together: the one fact channel pruning needs from a model.

A *channel group* is a set of output channels that are produced by one conv, normalized by
one BatchNorm and read by one or more consumers (along their input dimension). Removing
channel ``c`` of a group removes row ``c`` of the producer, entry ``c`` of the BatchNorm and
input slice ``c`` of every consumer — and nothing else changes shape. Channels a residual
sum couples across blocks are not a group of this kind; models simply do not declare them
(ResNet keeps its residual stream at full width, see ``resnet.py``).

Models that support channel mode define ``channel_groups() -> list[ChannelGroup]`` and
accept ``channels={producer: count}`` to be built narrower (how a compact export is
rebuilt from ``model.json`` without pickled modules). A model that declares none (any
foreign network) gets its groups derived from its ``torch.fx`` graph instead
(:func:`derive_channel_groups`); the hand-written ones are the reference the derivation is
tested against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch.fx
from torch import nn

__all__ = ["ChannelGroup", "channel_groups", "check_channels", "derive_channel_groups"]


@dataclass(frozen=True)
class ChannelGroup:
    """Module names (as in ``model.named_modules()``) of one removable set of channels."""

    producer: str  # Conv2d whose output channels these are (dim 0 of its weight)
    norm: str  # BatchNorm2d that follows it
    consumers: tuple[str, ...]  # Conv2d/Linear modules reading them (dim 1 of their weight)


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The model's declared groups, else those derived from its graph; ``ValueError`` if
    there are none (or its graph cannot be traced).

    A wrapper (DDP's ``.module``) is looked through: names are canonical, without prefix.
    """
    model = _unwrap(model)
    declare = getattr(model, "channel_groups", None)
    if callable(declare):
        return list(declare())
    name = getattr(model, "arch_config", {}).get("name", type(model).__name__)
    why = "no Conv2d in it whose BatchNorm feeds only convs/linears"
    try:
        groups = derive_channel_groups(model)
    except ValueError as err:
        groups, why = [], str(err)
    if not groups:
        raise ValueError(
            f"model {name!r} does not declare channel groups (channel mode), and none can "
            f"be derived from its graph: {why}"
        )
    return groups


def check_channels(
    channels: Mapping[str, int] | None, defaults: Mapping[str, int]
) -> dict[str, int]:
    """Per-producer channel counts: ``defaults`` overridden by ``channels`` (validated)."""
    out = dict(defaults)
    for name, count in (channels or {}).items():
        if name not in defaults:
            raise ValueError(
                f"channels: {name!r} is not a prunable conv of this model "
                f"(expected some of {sorted(defaults)})"
            )
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count:
            raise ValueError(f"channels: {name} must be a positive integer, got {count!r}")
        out[name] = count
    return out


# Operations a removable channel may pass between its BatchNorm and its consumers: each keeps
# the channel in place and maps a silent (all-zero) channel to zero. By the name of the
# module class, function or tensor method, so that aliases across torch versions match.
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.Mish,
    nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PASS_NAMES = frozenset(
    "relu relu_ relu6 leaky_relu silu gelu hardswish elu mish tanh dropout contiguous "
    "max_pool2d avg_pool2d adaptive_avg_pool2d adaptive_max_pool2d".split()
)
_FLATTEN_NAMES = frozenset(("flatten", "view", "reshape"))


def _name(node: torch.fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _flattens(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``flatten(x, 1)``, ``nn.Flatten()`` or ``x.view(n, -1)``: channels-major vectors."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        return isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1)
    if node.op not in ("call_function", "call_method") or _name(node) not in _FLATTEN_NAMES:
        return False
    if _name(node) == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return bool(start == 1) and len(node.args) <= 2
    return len(node.args) == 3 and bool(node.args[2] == -1)  # view/reshape(x, batch, -1)


def _passes(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _PASS_MODULES)
    return node.op in ("call_function", "call_method") and _name(node) in _PASS_NAMES


def _consumers(
    norm: torch.fx.Node, modules: dict[str, nn.Module], calls: Counter[str]
) -> tuple[str, ...] | None:
    """The convs/linears that read ``norm``'s output, or None if anything else does
    (a residual add, a concatenation, a second use of a module)."""
    found: list[str] = []
    stack, seen = [(norm, False)], {norm}
    while stack:
        node, flat = stack.pop()
        for user in node.users:
            if user.op == "call_method" and _name(user) == "size":
                continue  # a shape query reads no values
            if not user.args or user.args[0] is not node or node in user.args[1:]:
                return None
            module = modules.get(str(user.target)) if user.op == "call_module" else None
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fits = (isinstance(module, nn.Conv2d) and module.groups == 1 and not flat) or (
                    isinstance(module, nn.Linear) and flat
                )
                if not fits or calls[str(user.target)] != 1:
                    return None
                found.append(str(user.target))
            elif _flattens(user, modules) or _passes(user, modules):
                if user not in seen:
                    seen.add(user)
                    stack.append((user, flat or _flattens(user, modules)))
            else:
                return None
    return tuple(dict.fromkeys(found)) or None


def derive_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups of ``model``'s traced graph, in module order.

    A group is a plain ``Conv2d`` whose output only its affine ``BatchNorm2d`` reads, and
    whose BN output reaches only convs (or, once flattened, linears) through zero-keeping
    operations (ReLU-like activations, pooling, dropout). Channels a residual add or a
    concatenation couples are left out: the residual stream stays full width. Each module
    involved is called once. ``ValueError`` if ``torch.fx`` cannot trace the model.
    """
    model = _unwrap(model)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure means "no derived groups"
        raise ValueError(f"torch.fx cannot trace it ({type(err).__name__}: {err})") from None
    modules = dict(model.named_modules())
    position = {name: i for i, name in enumerate(modules)}
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    groups: list[ChannelGroup] = []
    for node in graph.nodes:
        conv = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or calls[str(node.target)] != 1:
            continue
        if len(node.users) != 1:
            continue
        norm_node = next(iter(node.users))
        norm = modules.get(str(norm_node.target)) if norm_node.op == "call_module" else None
        if (
            not isinstance(norm, nn.BatchNorm2d)
            or not norm.affine
            or norm.num_features != conv.out_channels
            or calls[str(norm_node.target)] != 1
            or norm_node.args[:1] != (node,)
        ):
            continue
        consumers = _consumers(norm_node, modules, calls)
        if consumers:
            ordered = tuple(sorted(consumers, key=position.__getitem__))
            groups.append(ChannelGroup(str(node.target), str(norm_node.target), ordered))
    return sorted(groups, key=lambda g: position[g.producer])
