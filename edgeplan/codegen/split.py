"""Cut the traced model at the plan's stage boundaries: one fx GraphModule per stage.

A stage ``[start, stop)`` takes the tensors live at cut ``start``
(``LayerGraph.live_at(start)``, in that order) as placeholders and returns a
tuple of the tensors live at cut ``stop`` (the model outputs, in
``LayerGraph.outputs`` order, for the last stage). Several inputs and outputs
appear wherever a cut crosses a residual or branch edge; a tensor that only
passes through a stage is returned unchanged.

fx nodes that are not layers of the LayerGraph (``get_attr`` constants, shape
arithmetic) are copied into every stage that uses them, so each stage module
is self-contained. The plan's boundaries are taken as given: codegen never
re-decides a split, it only refuses a plan that does not fit the graph.

Everything crossing a cut travels batch-first (the runtime splits micro-batches
along dim 0). A cut tensor whose batch sits elsewhere (ViT's stacked q/k/v is
``(3, B, heads, T, d)``) is moved to batch-first by ``torch.movedim`` at the end
of the stage that sends it and moved back at the start of the stage that gets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from edgeplan.errors import CompileError, PlanError
from edgeplan.graph.model import NO_BATCH_DIM, LayerGraph
from edgeplan.planner.plan import Plan


@dataclass(frozen=True, eq=False)
class StageGraph:
    """One stage's module and the names of the tensors it takes and returns (all batch-first).

    ``batch_dims``: (name, dim) of the inputs/outputs whose batch sits at ``dim`` in the model;
    the module moves them to dim 0 at the cut (see the module docstring).
    """

    index: int
    start: int
    stop: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    gm: torch.fx.GraphModule
    batch_dims: tuple[tuple[str, int], ...] = ()


def check_plan_fits(graph: LayerGraph, plan: Plan) -> None:
    """Refuse a plan whose stages are not contiguous ranges covering the graph's layers in order."""
    n = len(graph.layers)
    if not plan.stages:
        raise PlanError("plan has no stages; re-run `edgeplan plan`")
    expect = 0
    for i, st in enumerate(plan.stages):
        where = f"plan stage {i} (layers [{st.start}, {st.stop}))"
        if st.index != i:
            raise PlanError(f"{where}: index is {st.index}, expected {i}; stages must be listed in pipeline order")
        if st.start != expect or st.stop <= st.start or st.stop > n:
            raise PlanError(
                f"{where}: stages must be non-empty, contiguous and cover layers [0, {n}) of {graph.name!r}; "
                f"expected start {expect}. Re-run `edgeplan plan` for this model"
            )
        first, last = graph.layers[st.start].name, graph.layers[st.stop - 1].name
        if (st.first_layer, st.last_layer) != (first, last):
            raise PlanError(
                f"{where}: plan names layers {st.first_layer!r}..{st.last_layer!r} but the model has "
                f"{first!r}..{last!r} there; the plan was made for another model, re-run `edgeplan plan`"
            )
        expect = st.stop
    if expect != n:
        raise PlanError(f"plan stages end at layer {expect} but {graph.name!r} has {n} layers; re-run `edgeplan plan`")


def split_stages(traced: Any, plan: Plan) -> tuple[StageGraph, ...]:
    """Split ``traced.gm`` (a torch.fx.GraphModule) into the plan's stages (see module docstring).

    ``traced`` has ``gm`` and ``graph`` (LayerGraph whose layer names are fx node names).
    """
    gm: torch.fx.GraphModule = traced.gm
    graph: LayerGraph = traced.graph
    check_plan_fits(graph, plan)
    nodes = {node.name: node for node in gm.graph.nodes}
    producers = {t.name for t in graph.inputs} | {layer.name for layer in graph.layers}
    for name in producers:
        if name not in nodes:
            raise CompileError(
                f"layer or input {name!r} of the LayerGraph is not a node of the traced module of "
                f"{graph.name!r}; the graph and module come from different traces (re-run the trace)"
            )
    stages = []
    n = len(plan.stages)
    crossing = {name for st in plan.stages[1:] for name in graph.live_at(st.start)}
    batch_dims = _batch_dims(traced, crossing)
    for st in plan.stages:
        inputs = graph.live_at(st.start)
        outputs = graph.outputs if st.index == n - 1 else graph.live_at(st.stop)
        layers = [layer.name for layer in graph.layers[st.start:st.stop]]
        sub = _stage_graph(nodes, producers, inputs, layers, outputs, st.index, batch_dims)
        stage_gm = torch.fx.GraphModule(gm, sub, class_name=f"Stage{st.index}")
        stage_gm.eval()
        moved = tuple((name, batch_dims[name]) for name in dict.fromkeys((*inputs, *outputs)) if name in batch_dims)
        stages.append(StageGraph(st.index, st.start, st.stop, tuple(inputs), tuple(outputs), stage_gm, moved))
    return tuple(stages)


def split_branches(traced: Any, plan: Plan) -> tuple[StageGraph, ...]:
    """One StageGraph per replica of the plan's branch stage (stage 0, ``kind == "branches"``), in replica order.

    Replica ``j`` runs its own layers ``[start, stop)`` on its own model input: its module takes
    that input and returns the tensors of its branch that cross the junction cut (``live_at``
    of the stage's stop, in that order; the raw input itself when the junction reads it).
    ``split_stages``' module for the same stage runs all branches at once (one-process checks).
    () when the plan has no branch stage.
    """
    if not plan.stages or plan.stages[0].kind != "branches":
        return ()
    gm: torch.fx.GraphModule = traced.gm
    graph: LayerGraph = traced.graph
    check_plan_fits(graph, plan)
    st = plan.stages[0]
    nodes = {node.name: node for node in gm.graph.nodes}
    producers = {t.name for t in graph.inputs} | {layer.name for layer in graph.layers}
    live = graph.live_at(st.stop)
    batch_dims = _batch_dims(traced, set(live))
    out = []
    for j, r in enumerate(st.replicas):
        if r.start is None or r.stop is None or not r.input or not st.start <= r.start <= r.stop <= st.stop:
            raise PlanError(f"plan stage 0 replica {j} ({r.device}): a branch replica needs its input and a layer "
                            f"range inside [{st.start}, {st.stop}); re-run `edgeplan plan` with --pin")
        layers = [layer.name for layer in graph.layers[r.start:r.stop]]
        outputs = tuple(name for name in live if name in set(layers) or name == r.input)
        sub = _stage_graph(nodes, producers, (r.input,), layers, outputs, 0, batch_dims)
        branch_gm = torch.fx.GraphModule(gm, sub, class_name=f"Branch{j}")
        branch_gm.eval()
        moved = tuple((name, batch_dims[name]) for name in dict.fromkeys((r.input, *outputs)) if name in batch_dims)
        out.append(StageGraph(0, r.start, r.stop, (r.input,), outputs, branch_gm, moved))
    return tuple(out)


def _stage_graph(
    nodes: dict[str, torch.fx.Node],
    producers: set[str],
    inputs: Sequence[str],
    layers: Sequence[str],
    outputs: Sequence[str],
    index: int,
    batch_dims: dict[str, int],
) -> torch.fx.Graph:
    g = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for name in inputs:
        env[name] = g.placeholder(name)
        if name in batch_dims:  # arrives batch-first: put the batch back where the model has it
            env[name] = g.call_function(torch.movedim, (env[name], 0, batch_dims[name]))

    def resolve(node: torch.fx.Node, user: str) -> torch.fx.Node:
        if node.name in env:
            return env[node.name]
        if node.name in producers or node.op == "placeholder":
            raise CompileError(
                f"stage {index}: layer {user!r} needs {node.name!r}, which is neither computed in this stage "
                "nor live at its input cut; the LayerGraph's layer inputs disagree with the fx graph "
                "(re-run the trace)"
            )
        # Not a layer (constant, shape arithmetic): recompute it here, with its own inputs resolved.
        env[node.name] = g.node_copy(node, lambda a: resolve(a, node.name))
        return env[node.name]

    for name in layers:
        node = nodes[name]
        env[name] = g.node_copy(node, lambda a, user=name: resolve(a, user))
    missing = [name for name in outputs if name not in env]
    if missing:
        raise CompileError(
            f"stage {index}: outputs {missing} are neither inputs of the stage nor computed in it; "
            "the LayerGraph's live sets disagree with the fx graph (re-run the trace)"
        )
    results = [
        g.call_function(torch.movedim, (env[name], batch_dims[name], 0)) if name in batch_dims else env[name]
        for name in outputs
    ]
    g.output(tuple(results))
    g.lint()
    return g


def _batch_dims(traced: Any, crossing: set[str]) -> dict[str, int]:
    """Batch dimension of each cut tensor whose batch is not dim 0, from the trace's record.

    ``LayerGraph.batch_dims`` (found by ``graph.batchdims`` when the model was traced) is the one
    answer the planner also uses: it never offers a cut that crosses a tensor without one, so a
    refusal here means a hand-edited plan or a graph from an older trace.
    """
    graph: LayerGraph = traced.graph
    recorded = dict(graph.batch_dims)
    origin = {layer.name: layer.origin for layer in graph.layers}
    dims = {}
    for name in sorted(crossing):
        dim = recorded.get(name, 0)
        if dim == NO_BATCH_DIM:
            shape = next(layer.output.shape for layer in graph.layers if layer.name == name)
            raise CompileError(
                f"tensor {name!r} (from {origin[name]}) crosses a stage boundary but has no single batch "
                f"dimension (a tuple, a batch-independent tensor, or a model that does not run at other batch "
                f"sizes; traced shape {shape}), so its samples cannot be sent to replicas; re-plan with the cut "
                "elsewhere (`edgeplan plan` never cuts there), e.g. after the layer that consumes it"
            )
        if dim != 0:
            dims[name] = dim
    return dims


def random_inputs(graph: LayerGraph, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random model inputs with batch ``batch`` (floats ~ N(0, 1), integers 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for spec in graph.inputs:
        shape = (batch, *spec.shape[1:])
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            out[spec.name] = torch.randn(shape, generator=gen, dtype=dtype)
        else:
            out[spec.name] = torch.randint(0, 2, shape, generator=gen, dtype=dtype)
    return out


def run_chain(
    stages: Sequence[StageGraph], model_inputs: dict[str, torch.Tensor]
) -> list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
    """Run the stages in torch one after the other; (inputs, outputs) of each stage.

    Checks that every tensor crossing a cut keeps the batch of the model inputs, so a
    module traced with a fixed batch is refused instead of compiled with wrong shapes.
    """
    batch = next(iter(model_inputs.values())).shape[0]
    live = dict(model_inputs)
    result = []
    with torch.no_grad():
        for st in stages:
            args = tuple(live[name] for name in st.inputs)
            try:
                outs = st.gm(*args)
            except Exception as e:
                raise CompileError(
                    f"stage {st.index} failed to run in torch with batch {batch} ({type(e).__name__}: {e}); "
                    "if the model hard-codes its batch size, trace it with the batch of each replica"
                ) from e
            outs = tuple(outs)
            for name, t in zip(st.outputs, outs, strict=True):
                if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != batch:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise CompileError(
                        f"stage {st.index}: tensor {name!r} crossing the cut is {got}, not a tensor with "
                        f"batch {batch} first; stages can only be cut where batched tensors cross"
                    )
                live[name] = t
            result.append((args, outs))
    return result
