"""Trace an ``nn.Module`` with torch.fx into a LayerGraph plus the GraphModule codegen cuts.

One Layer per tensor-producing fx node (``call_module``/``call_function``/``call_method``);
``Layer.name`` is the fx node name in ``Traced.gm``, so codegen can cut ``gm`` by layer
names. fx nodes that produce no tensor (``get_attr``, ``x.size(0)``, ``x.shape``) are
*absorbed* into the first layer that consumes them: their parameters count for that
layer, the tensors they read become that layer's inputs, and ``gm`` lists them right
before that layer. ``gm``'s node order is therefore::

    placeholders, [absorbed nodes of layer 0], layer 0, [absorbed of layer 1], layer 1, ..., output

Costs come from running the traced graph once on a random input of the given shape.
MACs: by formula for convolutions, linear layers, matmuls and attention (``opkinds.formula_macs``);
``torch.utils.flop_counter`` only for ops with no formula (custom leaf modules, einsum),
because its first use imports torch._dynamo (seconds). FLOPs add a per-element count for
the other ops (see ``opkinds.ELEMENT_FLOPS``). The layer order, and the bytes live at each cut,
come from ``order``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from types import TracebackType

import torch
import torch.fx as fx
from torch import nn

from edgeplan.errors import ModelError
from edgeplan.graph.batchdims import find_batch_dims
from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.graph.opkinds import NodeValue, ValueRecorder, flops_fwd, formula_macs, is_layer, needs_counter, op_kind
from edgeplan.graph.order import branches_first, choose_order, cut_bytes

_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)


@dataclass(frozen=True, eq=False)
class Traced:
    """A traced model: the fx GraphModule (nodes ordered like ``graph.layers``) and its LayerGraph.

    ``absorbed`` maps each non-layer fx node (``get_attr``, shape arithmetic) to the layer
    that owns it; a stage that runs a layer must also run the nodes it absorbs.
    ``order`` says which topological order was kept ("fx" or "greedy", see ``order.choose_order``).
    """

    gm: fx.GraphModule
    graph: LayerGraph
    absorbed: tuple[tuple[str, str], ...] = ()
    order: str = "fx"

    def layer_of(self, node_name: str) -> str:
        """The layer an fx node belongs to (itself for a layer node)."""
        for node, owner in self.absorbed:
            if node == node_name:
                return owner
        self.graph.index(node_name)  # KeyError if unknown
        return node_name


# --- tracing ---------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """fx tracer that keeps torch.nn modules (and ``leaf_types``) whole and records source lines."""

    def __init__(self, leaf_types: tuple[type, ...] = ()):
        super().__init__()
        self._leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        frame = sys._getframe(1)
        while frame is not None and _is_internal(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is not None:
            node.meta["edgeplan_src"] = (os.path.basename(frame.f_code.co_filename), frame.f_lineno)
        return node


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_TORCH_DIR) or path == _THIS_FILE or filename.startswith("<")


def _user_location(tb: TracebackType | None, root: nn.Module) -> tuple[str, str]:
    """(module qualified name, "file:line") of the innermost user frame of a traceback."""
    names = {id(m): (n or "<root>") for n, m in root.named_modules()}
    module, where = "<unknown module>", "<unknown line>"
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _is_internal(code.co_filename):
            where = f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}"
            owner = tb.tb_frame.f_locals.get("self")
            module = names.get(id(owner), module)
        tb = tb.tb_next
    return module, where


def _symbolic_trace(module: nn.Module, name: str, leaf_types: tuple[type, ...]) -> fx.GraphModule:
    tracer = _Tracer(leaf_types)
    try:
        graph = tracer.trace(module)
    except Exception as e:  # TraceError, or a TypeError/RuntimeError from a Proxy used as a value
        where_mod, where_line = _user_location(e.__traceback__, module)
        raise ModelError(
            f"model {name!r} cannot be traced by torch.fx: in module {where_mod!r} at {where_line}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Fix: remove the data-dependent "
            f"branch (use torch.where / masking instead of `if tensor:`), or make that submodule a leaf "
            f"(trace(..., leaf_modules=(ItsClass,))) so it is kept whole"
        ) from e
    gm = fx.GraphModule(tracer.root, graph, class_name=type(module).__name__)
    _drop_checks(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


# Check-only calls (torchvision's ViT: ``torch._assert(h == self.image_size, ...)``): they
# compute nothing, bind the trace to the traced shape and have no place in a stage, so
# they are dropped; the comparisons feeding them then die with dead-code elimination.
_CHECK_ONLY = tuple(f for f in (getattr(torch, n, None) for n in (
    "_assert", "_assert_async", "_check", "_check_index", "_check_value", "_check_type",
    "_check_is_size", "_check_with", "_check_not_implemented")) if f is not None)


def _drop_checks(graph: fx.Graph) -> None:
    for n in list(graph.nodes):
        if n.op == "call_function" and n.target in _CHECK_ONLY and not n.users:
            graph.erase_node(n)


# --- running once: shapes and FLOP counts -----------------------------------------------------


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node, error: Exception):
        super().__init__(str(error))
        self.node, self.error = node, error


class _Probe(ValueRecorder):
    """Runs the graph once, recording each node's output specs and counted FLOPs."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.counted: dict[str, int] = {}

    def compute(self, n: fx.Node):
        try:
            if needs_counter(n, self.module):
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    out = super().compute(n)
                self.counted[n.name] = int(counter.get_total_flops())
                return out
            return super().compute(n)
        except _NodeFailure:
            raise
        except Exception as e:
            raise _NodeFailure(n, e) from e


# --- building the LayerGraph ------------------------------------------------------------------


def _origin(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    fname = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack") or {}
    scope = next(reversed(stack.values()))[0] if stack else ""
    text = f"{scope}.{fname}" if scope else str(fname)
    src = node.meta.get("edgeplan_src")
    return f"{text} ({src[0]}:{src[1]})" if src else text


def _spec(name: str, value: NodeValue) -> TensorSpec:
    """One TensorSpec per layer; a tuple output is priced as the bytes of all its tensors."""
    if not value.is_tuple:
        shape, dtype = value.tensors[0]
        return TensorSpec(name, shape, dtype)
    dtypes = {d for _, d in value.tensors}
    if len(dtypes) == 1:
        return TensorSpec(name, (value.numel,), dtypes.pop())
    nbytes = sum(TensorSpec("", s, d).nbytes for s, d in value.tensors)
    return TensorSpec(name, (nbytes,), "uint8")


def _check_shape(input_shape, name: str) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ModelError(
            f"input shape {shape!r} for model {name!r} is invalid: give positive integers with the batch first, "
            f"e.g. (1, 3, 224, 224)"
        )
    return shape


def _input_shapes(input_shape, names: list[str], name: str) -> list[tuple[int, ...]]:
    """One shape per model input: a flat shape serves every input, a tuple of shapes gives each its own."""
    shape = tuple(input_shape)
    if shape and all(isinstance(s, (tuple, list)) for s in shape):
        if len(shape) != len(names):
            raise ModelError(
                f"model {name!r} takes {len(names)} inputs ({', '.join(names)}) but {len(shape)} input shapes "
                f"were given; give one shape per input, or one shape for all"
            )
        shapes = [_check_shape(s, name) for s in shape]
        if len({s[0] for s in shapes}) > 1:
            raise ModelError(f"input shapes {shapes!r} of model {name!r} disagree on the batch (first) dimension; "
                             f"give every input the same batch")
        return shapes
    return [_check_shape(shape, name)] * len(names)


def trace(module: nn.Module, input_shape: tuple[int, ...], name: str, *,
          expected_shape: tuple[int, ...] | None = None, leaf_modules: tuple[type, ...] = ()) -> Traced:
    """Trace ``module`` (switched to eval mode) on float32 inputs of ``input_shape``.

    A model whose forward takes several tensors gets one LayerGraph input per tensor, named
    by its forward() parameter (``--pin`` also accepts ``inputK`` for the K-th);
    ``input_shape`` is then one shape for all of them or a tuple with one shape per input.
    Their branches (the layers fed by one input only) come first in the layer order, one
    contiguous range per input (``order.input_branches``).
    ``expected_shape`` (e.g. the zoo default) is only used to make a shape error helpful;
    ``leaf_modules`` are module classes kept whole instead of traced through.
    """
    module.eval()
    gm = _symbolic_trace(module, name, tuple(leaf_modules))

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ModelError(f"model {name!r} takes no tensor input; its forward() needs at least one argument")
    shapes = _input_shapes(input_shape, [p.name for p in placeholders], name)
    shape = shapes[0] if len(shapes) == 1 else tuple(shapes)
    gen = torch.Generator().manual_seed(0)
    examples = [torch.randn(s, generator=gen) for s in shapes]
    probe = _Probe(gm)
    try:
        with torch.no_grad():
            probe.run(*examples)
    except _NodeFailure as f:
        hint = f"; it expects {tuple(expected_shape)!r}" if expected_shape else ""
        first = str(f.error).splitlines()[0] if str(f.error) else type(f.error).__name__
        raise ModelError(
            f"model {name!r} failed on input shape {shape!r} at layer {f.node.name!r} ({_origin(f.node)}): "
            f"{first}{hint}. Fix: pass the input shape the model was written for (--input-shape)"
        ) from f.error
    values = probe.values
    return _build(gm, name, values, probe.counted)


def _build(gm: fx.GraphModule, name: str, values: dict[str, NodeValue], counted: dict[str, int]) -> Traced:
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output_node = next(n for n in nodes if n.op == "output")
    layer_nodes = [n for n in nodes if is_layer(n, values)]
    layer_set = {n.name for n in layer_nodes}
    inputs = [TensorSpec(p.name, *values[p.name].tensors[0]) for p in placeholders]
    input_names = {p.name for p in placeholders}

    # Tensor sources of every node: what a layer really needs from earlier layers.
    sources: dict[str, tuple[str, ...]] = {}
    for n in nodes:
        if n.op == "placeholder" or n.name in layer_set:
            sources[n.name] = (n.name,)
        elif n.op != "output":
            seen: dict[str, None] = {}
            for a in n.all_input_nodes:
                seen.update(dict.fromkeys(sources[a.name]))
            sources[n.name] = tuple(seen)
    deps: dict[str, tuple[str, ...]] = {}
    for n in layer_nodes:
        seen = {}
        for a in n.all_input_nodes:
            seen.update(dict.fromkeys(sources[a.name]))
        deps[n.name] = tuple(seen)

    outputs: list[str] = []
    for a in output_node.all_input_nodes:
        src = sources.get(a.name, ())
        if a.name not in layer_set and a.name not in input_names:
            raise ModelError(
                f"model {name!r} returns {a.name!r}, which is not a tensor; return tensors only"
            )
        outputs.extend(s for s in src if s not in outputs)
    if not layer_nodes:
        raise ModelError(f"model {name!r} computes nothing (no layers were traced); check its forward()")

    specs = {n.name: _spec(n.name, values[n.name]) for n in layer_nodes}
    nbytes = {t.name: t.nbytes for t in inputs} | {k: s.nbytes for k, s in specs.items()}
    order_name, order, cuts = choose_order([n.name for n in layer_nodes], inputs, deps, nbytes, tuple(outputs))
    if len(inputs) > 1:  # each input's branch contiguous, in input order, before the joined rest
        order = branches_first(order, [t.name for t in inputs], deps)
        cuts = cut_bytes(order, inputs, deps, nbytes, tuple(outputs))

    # Each absorbed node goes to the first layer (in the chosen order) that reads it, transitively.
    pos = {layer: i for i, layer in enumerate(order)}
    owner: dict[str, str] = {}
    for n in reversed(nodes):
        if n.op in ("placeholder", "output") or n.name in layer_set:
            continue
        firsts = [pos[u.name] if u.name in layer_set else pos[owner[u.name]]
                  for u in n.users if u.op != "output" and (u.name in layer_set or u.name in owner)]
        if not firsts:
            raise ModelError(f"model {name!r}: node {n.name!r} ({_origin(n)}) feeds only the output with a "
                             f"non-tensor value; return tensors only")
        owner[n.name] = order[min(firsts)]

    by_name = {n.name: n for n in nodes}
    seen_params: set[int] = set()
    layers: list[Layer] = []
    for layer_name in order:
        n = by_name[layer_name]
        params = [p for a in nodes if owner.get(a.name) == layer_name for p in _attr_params(a, gm)]
        if n.op == "call_module":
            params += list(gm.get_submodule(n.target).parameters())
        fresh = []
        for p in params:
            if id(p) not in seen_params:
                seen_params.add(id(p))
                fresh.append(p)
        kind = op_kind(n, gm, values)
        macs = counted[layer_name] // 2 if layer_name in counted else formula_macs(kind, n, gm, values)
        fwd = flops_fwd(kind, n, gm, values, macs)
        layers.append(Layer(
            name=layer_name, op=kind, origin=_origin(n), inputs=deps[layer_name], output=specs[layer_name],
            flops_fwd=fwd, flops_bwd=2 * fwd if params else fwd, macs=macs,
            param_count=sum(p.numel() for p in fresh),
            param_bytes=sum(p.numel() * p.element_size() for p in fresh),
        ))

    graph = LayerGraph(name=name, inputs=tuple(inputs), outputs=tuple(outputs), layers=tuple(layers),
                       cut_bytes=tuple(cuts))
    new_gm = _reordered(gm, placeholders, order, owner, by_name, output_node)
    dims = find_batch_dims(new_gm, graph)  # which cuts codegen can split (planner and codegen read it)
    if dims:
        graph = dataclasses.replace(graph, batch_dims=dims)
    absorbed = tuple(sorted(owner.items()))
    return Traced(gm=new_gm, graph=graph, absorbed=absorbed, order=order_name)


def _attr_params(node: fx.Node, gm: fx.GraphModule) -> list[nn.Parameter]:
    if node.op != "get_attr":
        return []
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    if isinstance(obj, nn.Parameter):
        return [obj]
    if isinstance(obj, nn.Module):
        return list(obj.parameters())
    return []


def _reordered(gm: fx.GraphModule, placeholders: list[fx.Node], order: list[str], owner: dict[str, str],
               by_name: dict[str, fx.Node], output_node: fx.Node) -> fx.GraphModule:
    """A GraphModule whose nodes follow the layer order, absorbed nodes just before their layer."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    def copy(n: fx.Node) -> None:
        env[n] = graph.node_copy(n, lambda a: env[a])

    for p in placeholders:
        copy(p)
    owned: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:  # fx order keeps absorbed chains (size -> getitem -> mul) in order
        if n.name in owner:
            owned.setdefault(owner[n.name], []).append(n)
    for layer_name in order:
        for n in owned.get(layer_name, ()):
            copy(n)
        copy(by_name[layer_name])
    copy(output_node)
    graph.lint()
    new = fx.GraphModule(gm, graph, class_name=gm.__class__.__name__)
    renamed = [n.name for n in new.graph.nodes if n.name not in by_name]
    if renamed:  # node_copy keeps names in a fresh graph; anything else would break codegen's cuts
        raise RuntimeError(f"fx renamed nodes while reordering: {renamed}")
    return new
