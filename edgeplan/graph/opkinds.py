"""Which op kind an fx node is: the one classification the tracer and the NPU op check share.

Kind names are ``edgeplan.graph.ops``'s (the LayerGraph's ``Layer.op``, a profile's
``supported_ops``). ``getitem`` (an element of a tuple, e.g. of ``chunk``) and ``slice``
(indexing a tensor) are told apart by what the source node produced, so a caller runs
the module once (``ValueRecorder``, or ``layer_kinds`` which does it) before classifying.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn


@dataclass(frozen=True)
class NodeValue:
    """What a node produced: tensor specs (one for a tensor, several for a tuple) or nothing."""

    tensors: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) per tensor
    is_tuple: bool

    @property
    def is_tensor(self) -> bool:
        return bool(self.tensors)

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s, _ in self.tensors)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(value) -> NodeValue:
    if isinstance(value, torch.Tensor):
        return NodeValue(((tuple(value.shape), _dtype_name(value.dtype)),), False)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return NodeValue(
            tuple((tuple(v.shape), _dtype_name(v.dtype)) for v in value if isinstance(v, torch.Tensor)), True
        )
    return NodeValue((), False)


class ValueRecorder(fx.Interpreter):
    """Runs a GraphModule once, recording what each node produced in ``values``; ``compute`` runs one node."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, NodeValue] = {}

    def run_node(self, n: fx.Node):
        out = self.compute(n)
        self.values[n.name] = describe(out)
        return out

    def compute(self, n: fx.Node):
        return super().run_node(n)


_MODULE_OPS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (nn.Conv1d, "conv1d"),
    (nn.Linear, "linear"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "batchnorm"),
    (nn.LayerNorm, "layernorm"),
    (nn.GroupNorm, "groupnorm"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "maxpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avgpool"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "adaptive_avgpool"),
    (nn.ReLU6, "relu6"),
    (nn.ReLU, "relu"),
    (nn.GELU, "gelu"),
    (nn.SiLU, "silu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Hardswish, "hardswish"),
    (nn.Tanh, "tanh"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d), "dropout"),
    (nn.Identity, "identity"),
    (nn.Flatten, "flatten"),
    (nn.Softmax, "softmax"),
    (nn.MultiheadAttention, "attention"),
)

_FUNCTION_OPS: dict[str, str] = {
    **dict.fromkeys(("add", "iadd", "__add__", "__iadd__", "__radd__", "add_"), "add"),
    **dict.fromkeys(("mul", "imul", "__mul__", "__rmul__", "__imul__", "mul_"), "mul"),
    **dict.fromkeys(("sub", "isub", "__sub__", "__rsub__", "sub_"), "sub"),
    **dict.fromkeys(("truediv", "div", "__truediv__", "__itruediv__", "div_"), "div"),
    **dict.fromkeys(("matmul", "__matmul__", "bmm", "mm", "einsum", "baddbmm"), "matmul"),
    **dict.fromkeys(("relu", "relu_"), "relu"),
    **dict.fromkeys(("relu6", "hardtanh"), "relu6"),
    **dict.fromkeys(("gelu",), "gelu"),
    **dict.fromkeys(("silu",), "silu"),
    **dict.fromkeys(("sigmoid",), "sigmoid"),
    **dict.fromkeys(("hardswish",), "hardswish"),
    **dict.fromkeys(("tanh",), "tanh"),
    **dict.fromkeys(("softmax", "log_softmax"), "softmax"),
    **dict.fromkeys(("layer_norm",), "layernorm"),
    **dict.fromkeys(("batch_norm",), "batchnorm"),
    **dict.fromkeys(("group_norm",), "groupnorm"),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d"), "maxpool"),
    **dict.fromkeys(("avg_pool1d", "avg_pool2d", "avg_pool3d"), "avgpool"),
    **dict.fromkeys(("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"), "adaptive_avgpool"),
    **dict.fromkeys(("flatten",), "flatten"),
    **dict.fromkeys(("reshape", "view", "view_as", "unsqueeze", "squeeze", "unflatten"), "reshape"),
    **dict.fromkeys(("permute",), "permute"),
    **dict.fromkeys(("transpose", "t"), "transpose"),
    **dict.fromkeys(("cat", "concat", "stack"), "cat"),
    **dict.fromkeys(("expand", "expand_as", "repeat"), "expand"),
    **dict.fromkeys(("contiguous",), "contiguous"),
    **dict.fromkeys(("chunk", "split", "unbind", "tensor_split"), "split"),
    **dict.fromkeys(("pad",), "pad"),
    **dict.fromkeys(("mean",), "mean"),
    **dict.fromkeys(("sum",), "sum"),
    **dict.fromkeys(("dropout",), "dropout"),
    **dict.fromkeys(("linear",), "linear"),
    **dict.fromkeys(("conv2d",), "conv2d"),
    **dict.fromkeys(("conv1d",), "conv1d"),
    **dict.fromkeys(("scaled_dot_product_attention",), "attention"),
    **dict.fromkeys(("clone", "to", "float", "detach"), "identity"),
}


def target_name(node: fx.Node) -> str:
    """The called function's or method's name ("" for a module call)."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def op_kind(node: fx.Node, gm: fx.GraphModule, values: dict[str, NodeValue]) -> str:
    """The op kind of a ``call_*`` node; ``values`` (from ``ValueRecorder``) tells getitem from slice."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Conv2d):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels
            return "dwconv2d" if depthwise else "conv2d"
        for types, kind in _MODULE_OPS:
            if isinstance(mod, types):
                return kind
        return "custom"
    if node.op == "call_function" and node.target is operator.getitem:
        src = node.args[0]
        from_tuple = isinstance(src, fx.Node) and values[src.name].is_tuple
        return "getitem" if from_tuple else "slice"
    return _FUNCTION_OPS.get(target_name(node), "custom")


def classified(node: fx.Node, gm: fx.GraphModule) -> bool:
    """True when the tables above name this module or function (``op_kind`` does not fall back to custom)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return isinstance(mod, nn.Conv2d) or any(isinstance(mod, t) for t, _ in _MODULE_OPS)
    return target_name(node) in _FUNCTION_OPS


def is_layer(node: fx.Node, values: dict[str, NodeValue]) -> bool:
    """A layer of the LayerGraph: a call node that produces a tensor (shape arithmetic is not one)."""
    return node.op.startswith("call_") and values[node.name].is_tensor


def layer_kinds(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> list[tuple[str, str]]:
    """(fx node name, op kind) of every layer of ``gm``, in graph order, from one run on ``example_inputs``."""
    probe = ValueRecorder(gm)
    with torch.no_grad():
        probe.run(*example_inputs)
    return [(n.name, op_kind(n, gm, probe.values)) for n in gm.graph.nodes if is_layer(n, probe.values)]
