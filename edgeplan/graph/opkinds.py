"""Which op kind an fx node is (the one classification the tracer and the NPU op check share), and its FLOPs.

Kind names are ``edgeplan.graph.ops``'s (the LayerGraph's ``Layer.op``, a profile's
``supported_ops``). ``getitem`` (an element of a tuple, e.g. of ``chunk``) and ``slice``
(indexing a tensor) are told apart by what the source node produced, so a caller runs
the module once (``ValueRecorder``, or ``layer_kinds`` which does it) before classifying.
FLOPs: MACs by formula where one exists (``formula_macs``), ``torch.utils.flop_counter`` for
the nodes ``needs_counter`` names, and per-element counts (``ELEMENT_FLOPS``) for the rest.
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


# --- FLOPs ------------------------------------------------------------------------

# FLOPs per output element for ops without multiply-accumulates (inference forward). The
# transcendental activations are counted as a few FLOPs each, the usual convention of
# fvcore/ptflops-style counters; batchnorm is scale + shift; layernorm is mean, variance,
# normalise, scale and shift; softmax is exp, sum and divide.
ELEMENT_FLOPS: dict[str, int] = {
    "relu": 1, "relu6": 1, "add": 1, "mul": 1, "sub": 1, "div": 1,
    "sigmoid": 4, "silu": 5, "hardswish": 4, "tanh": 4, "gelu": 8,
    "batchnorm": 2, "layernorm": 5, "groupnorm": 5, "softmax": 3, "custom": 1,
}


_COUNTED_FUNCTIONS = ("einsum", "baddbmm")  # gemm-like calls without a formula here


def needs_counter(node: fx.Node, gm: fx.GraphModule) -> bool:
    """True for nodes whose MACs no formula here covers: unknown modules and functions."""
    if node.op == "call_module":
        return not classified(node, gm)
    if node.op in ("call_function", "call_method") and node.target is not operator.getitem:
        return not classified(node, gm) or target_name(node) in _COUNTED_FUNCTIONS
    return False


def _arg(node: fx.Node, index: int, key: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(key)


def _shape_of(arg, values: dict[str, NodeValue]) -> tuple[int, ...] | None:
    if isinstance(arg, fx.Node) and values[arg.name].is_tensor and not values[arg.name].is_tuple:
        return values[arg.name].tensors[0][0]
    return None


def formula_macs(kind: str, node: fx.Node, gm: fx.GraphModule, values: dict[str, NodeValue]) -> int:
    """Multiply-accumulates of one layer, by formula (0 for ops without products).

    conv/linear: output elements x prod(weight.shape[1:]) (in-channels/groups x kernel, or in-features);
    matmul: output elements x the contracted dimension; attention: the two L x S products.
    """
    out = values[node.name]
    if kind in ("conv1d", "conv2d", "dwconv2d", "linear"):
        if node.op == "call_module":
            weight = tuple(gm.get_submodule(node.target).weight.shape)
        else:
            weight = _shape_of(_arg(node, 1, "weight"), values)
        return out.numel * math.prod(weight[1:]) if weight else 0
    if kind == "matmul" and target_name(node) not in _COUNTED_FUNCTIONS:
        a = _shape_of(_arg(node, 0, "input"), values)
        return out.numel * a[-1] if a else 0
    if kind == "attention" and node.op == "call_module":
        return _mha_macs(gm.get_submodule(node.target), node, values)
    if kind == "attention":  # F.scaled_dot_product_attention(q, k, v): q [.., L, E], k [.., S, E]
        q, k = _shape_of(_arg(node, 0, "query"), values), _shape_of(_arg(node, 1, "key"), values)
        if q and k:
            return math.prod(q[:-1]) * k[-2] * (q[-1] + out.tensors[0][0][-1])
    return 0


def _kernel_numel(node: fx.Node, gm: fx.GraphModule, spatial_dims: int) -> int:
    if node.op == "call_module":
        k = gm.get_submodule(node.target).kernel_size
    else:
        k = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size", 1)
    if isinstance(k, int):
        return k ** max(spatial_dims, 1)
    return math.prod(k)


def _mha_macs(mha: nn.MultiheadAttention, node: fx.Node, values: dict[str, NodeValue]) -> int:
    """nn.MultiheadAttention's MACs (in eval mode it runs a fused kernel that flop counters miss).

    q/k/v and output projections, plus the two (L x S) products over all heads (heads x head_dim = E).
    """
    e = mha.embed_dim
    q_shape = values[node.name].tensors[0][0]
    batch = q_shape[0] if (mha.batch_first or len(q_shape) == 2) else q_shape[1]
    q_rows = math.prod(q_shape) // e
    args = list(node.args) + [node.kwargs.get(k) for k in ("query", "key", "value") if k in node.kwargs]
    key_node, value_node = (args[1], args[2]) if len(args) >= 3 else (args[0], args[0])
    k_rows = values[key_node.name].numel // mha.kdim
    v_rows = values[value_node.name].numel // mha.vdim
    s_len = k_rows // batch
    return q_rows * e * e + k_rows * mha.kdim * e + v_rows * mha.vdim * e + 2 * q_rows * s_len * e + q_rows * e * e


def _first_input_numel(node: fx.Node, values: dict[str, NodeValue]) -> int:
    for a in node.all_input_nodes:
        if values[a.name].is_tensor:
            return values[a.name].numel
    return 0


def _has_bias(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op != "call_module":
        return False
    return getattr(gm.get_submodule(node.target), "bias", None) is not None


def flops_fwd(kind: str, node: fx.Node, gm: fx.GraphModule, values: dict[str, NodeValue], macs: int) -> int:
    out = values[node.name]
    if macs:
        return 2 * macs + (out.numel if _has_bias(node, gm) else 0)
    if kind in ("maxpool", "avgpool"):
        spatial = len(out.tensors[0][0]) - 2
        return out.numel * _kernel_numel(node, gm, spatial)
    if kind in ("adaptive_avgpool", "mean", "sum"):
        return _first_input_numel(node, values)
    return out.numel * ELEMENT_FLOPS.get(kind, 0)
