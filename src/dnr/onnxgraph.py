"""An ONNX graph run by PyTorch ops, so that attacks get input gradients from it.

ONNX Runtime gives logits but no gradients, and a robustness evaluation needs both. This
module reads the graph once and replays it node by node with the equivalent ``torch``
functions: enough for the convolutional classifiers ``dnr export --format onnx`` writes and
the common exports from elsewhere (conv, batch norm, pooling, activations, linear layers,
elementwise arithmetic, reshapes). An operator outside that set is a one-line error naming
it, never a silent approximation.

The weights become frozen parameters (``requires_grad=False``): the model is only evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OnnxGraph", "OnnxImportError", "SUPPORTED_OPS", "load_onnx"]

Attrs = dict[str, Any]
Op = Callable[[list[Tensor | None], Attrs], Tensor]


class OnnxImportError(ValueError):
    """An ONNX file this module cannot run (one line: the file and the reason)."""


def _pads(attrs: Attrs, dims: int = 2) -> tuple[list[int], list[int]]:
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise OnnxImportError(f"auto_pad={attrs['auto_pad']!r} is not supported")
    return pads[:dims], pads[dims:]


def _padded(x: Tensor, attrs: Attrs, value: float) -> tuple[Tensor, list[int]]:
    """``x`` padded explicitly when begin and end pads differ; else the symmetric pads."""
    begin, end = _pads(attrs)
    if begin == end:
        return x, begin
    # F.pad lists the last dimension first
    return F.pad(x, [begin[1], end[1], begin[0], end[0]], value=value), [0, 0]


def _conv(i: list[Tensor | None], a: Attrs) -> Tensor:
    x, w, b = i[0], i[1], i[2] if len(i) > 2 else None
    assert x is not None and w is not None
    x, pad = _padded(x, a, 0.0)
    return F.conv2d(
        x, w, b, a.get("strides", [1, 1]), pad, a.get("dilations", [1, 1]), a.get("group", 1)
    )


def _batch_norm(i: list[Tensor | None], a: Attrs) -> Tensor:
    x, scale, bias, mean, var = i[:5]
    assert x is not None and mean is not None and var is not None
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _max_pool(i: list[Tensor | None], a: Attrs) -> Tensor:
    x, pad = _padded(_first(i), a, -math.inf)
    kernel = a["kernel_shape"]
    return F.max_pool2d(
        x,
        kernel,
        a.get("strides", kernel),
        pad,
        a.get("dilations", [1, 1]),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )


def _avg_pool(i: list[Tensor | None], a: Attrs) -> Tensor:
    begin, end = _pads(a)
    if begin != end and not a.get("count_include_pad", 0):
        # explicit zero padding would be counted in the averages the graph excludes it from
        raise OnnxImportError("AveragePool with asymmetric pads and count_include_pad=0")
    x, pad = _padded(_first(i), a, 0.0)
    kernel = a["kernel_shape"]
    return F.avg_pool2d(
        x,
        kernel,
        a.get("strides", kernel),
        pad,
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
    )


def _reduce_mean(i: list[Tensor | None], a: Attrs) -> Tensor:
    x = _first(i)
    axes = i[1].tolist() if len(i) > 1 and i[1] is not None else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if axes is None:  # ONNX: no axes = every axis (unless noop_with_empty_axes)
        return x if a.get("noop_with_empty_axes", 0) else x.mean().reshape([1] * x.dim() * keep)
    return x.mean(dim=[int(d) for d in axes], keepdim=keep)


def _gemm(i: list[Tensor | None], a: Attrs) -> Tensor:
    x, w = _first(i), i[1]
    assert w is not None
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        out = out + a.get("beta", 1.0) * i[2]
    return out


def _flatten(i: list[Tensor | None], a: Attrs) -> Tensor:
    x = _first(i)
    axis = a.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(i: list[Tensor | None], a: Attrs) -> Tensor:
    x, shape = _first(i), i[1]
    assert shape is not None
    target = [int(v) for v in shape.tolist()]
    if not a.get("allowzero", 0):  # 0 copies the input's size in that position
        target = [x.shape[k] if v == 0 else v for k, v in enumerate(target)]
    return x.reshape(target)


def _clip(i: list[Tensor | None], a: Attrs) -> Tensor:
    low = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    high = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return _first(i).clamp(low, high)


def _first(i: list[Tensor | None]) -> Tensor:
    assert i[0] is not None
    return i[0]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def op(i: list[Tensor | None], _a: Attrs) -> Tensor:
        assert i[0] is not None and i[1] is not None
        return fn(i[0], i[1])

    return op


def _unary(fn: Callable[[Tensor], Tensor]) -> Op:
    return lambda i, _a: fn(_first(i))


#: ONNX operator -> the torch computation replaying it.
SUPPORTED_OPS: dict[str, Op] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Relu": _unary(F.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "LeakyRelu": lambda i, a: F.leaky_relu(_first(i), a.get("alpha", 0.01)),
    "Clip": _clip,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=(2, 3), keepdim=True)),
    "ReduceMean": _reduce_mean,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),  # inference: the identity
}


class OnnxGraph(nn.Module):
    """A single-input, single-output ONNX graph replayed with torch ops (eval only)."""

    def __init__(self, graph: Any, constants: dict[str, np.ndarray]) -> None:
        super().__init__()
        unknown = sorted({n.op_type for n in graph.node} - set(SUPPORTED_OPS))
        if unknown:
            raise OnnxImportError(
                f"operator(s) {', '.join(unknown)} not supported "
                f"(supported: {', '.join(sorted(SUPPORTED_OPS))})"
            )
        self._names = {name: f"c{k}" for k, name in enumerate(constants)}
        for name, array in constants.items():
            tensor = torch.from_numpy(np.array(array, copy=True))
            self.register_parameter(self._names[name], nn.Parameter(tensor, requires_grad=False))
        self._nodes = [
            (n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node
        ]
        self._input = _single(graph.input, set(constants), "input")
        self._output = _single(graph.output, set(), "output")

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor | None] = {"": None, self._input: x}
        for name, key in self._names.items():
            values[name] = getattr(self, key)
        for op, inputs, outputs, attrs in self._nodes:
            values[outputs[0]] = SUPPORTED_OPS[op]([values[v] for v in inputs], attrs)
        out = values[self._output]
        assert out is not None
        return out


def _attributes(node: Any) -> Attrs:
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: numpy_helper.to_array(v) if hasattr(v, "data_type") else v for k, v in attrs.items()}


def _single(values: Sequence[Any], constants: set[str], what: str) -> str:
    names = [v.name for v in values if v.name not in constants]
    if len(names) != 1:
        raise OnnxImportError(f"the graph must have one {what}, it has {len(names)}: {names}")
    return str(names[0])


def load_onnx(path: str | Path) -> OnnxGraph:
    """Read ``path`` (weights inside the file) into an :class:`OnnxGraph` on the CPU.

    Raises :class:`OnnxImportError` (one line) for a file the ``onnx`` package cannot read,
    or a graph with an unsupported operator or more than one input or output.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise OnnxImportError(
            "evaluating an .onnx file needs the onnx package: pip install 'torch-dnr[export]'"
        ) from None
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises many kinds; report one line
        raise OnnxImportError(f"{path}: not a readable ONNX model ({err})") from None
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # a Constant node is one more stored tensor
        if node.op_type == "Constant":
            value = next(iter(_attributes(node).values()))
            constants[node.output[0]] = np.asarray(value)
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    del graph.node[:]
    graph.node.extend(nodes)
    try:
        return OnnxGraph(graph, constants)
    except OnnxImportError as err:
        raise OnnxImportError(f"{path}: {err}") from None
