"""Test helpers for codegen: an fx trace -> LayerGraph of small nets, hand-made plans, a file-writing target.

The graph phase owns the real tracer (edgeplan.graph.load); this minimal one lets the
split be tested on nets whose structure the test controls (every call node is a layer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from edgeplan.graph.model import Layer, LayerGraph, TensorSpec
from edgeplan.planner.plan import Plan, Predicted, Replica, Stage
from edgeplan.targets import registry
from edgeplan.targets.base import CompiledStage


@dataclass(frozen=True, eq=False)
class Traced:
    gm: torch.fx.GraphModule
    graph: LayerGraph


def fx_trace(module: torch.nn.Module, input_shape: tuple[int, ...], name: str = "net") -> Traced:
    module.eval()
    gm = torch.fx.symbolic_trace(module)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(1))
    ShapeProp(gm).propagate(x)
    inputs, layers, outputs = [], [], []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            inputs.append(TensorSpec(node.name, tuple(input_shape)))
        elif node.op in ("call_module", "call_function", "call_method"):
            meta = node.meta["tensor_meta"]
            deps = tuple(a.name for a in node.all_input_nodes if a.op != "get_attr")
            op = node.target if isinstance(node.target, str) else node.target.__name__
            layers.append(Layer(
                name=node.name, op=op, origin=op, inputs=deps,
                output=TensorSpec(node.name, tuple(meta.shape)), flops_fwd=0, flops_bwd=0, macs=0,
                param_count=0, param_bytes=0,
            ))
        elif node.op == "output":
            args = node.args[0]
            outputs = [a.name for a in (args if isinstance(args, (tuple, list)) else [args])]
    graph = LayerGraph(name=name, inputs=tuple(inputs), outputs=tuple(outputs), layers=tuple(layers),
                       cut_bytes=tuple(0 for _ in range(len(layers) + 1)))
    return Traced(gm, graph)


def make_plan(graph: LayerGraph, cuts: list[int], groups: list[list[tuple[str, int]]], *, target: str = "x86",
              microbatches: int = 1, head: str = "host") -> Plan:
    """Plan with stages cut after ``cuts`` layers, each stage on ``groups[i]`` = [(device, samples)]."""
    bounds = [0, *cuts, len(graph.layers)]
    mb = sum(s for _, s in groups[0])
    stages = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        reps = tuple(Replica(device=d, unit="cpu", target=target, share=s / mb, samples=s, memory_bytes=0)
                     for d, s in groups[i])
        stages.append(Stage(index=i, start=a, stop=b, first_layer=graph.layers[a].name,
                            last_layer=graph.layers[b - 1].name, replicas=reps, compute_s=0.0, send_s=0.0,
                            energy_j=0.0))
    return Plan(model=graph.name, graph_sha256=graph.digest(), cluster="test", cluster_sha256="",  # any cluster
                mode="inference", objective="latency", batch=mb * microbatches, microbatches=microbatches,
                schedule="none", solver="dp", head=head, stages=tuple(stages),
                predicted=Predicted(latency_s=0.0, throughput=0.0, energy_j=0.0))


class TextTarget:
    """A target that writes the stage's fx code and example input shapes as text (deterministic bytes),
    so launcher/stage.json golden files and manifest tests do not depend on a compiler."""

    name = "codegen-text"
    description = "test target: fx code as text"
    backends = ("text",)
    fail_on_stage: int | None = None
    fail_with: type[Exception] = RuntimeError
    printed: tuple[str, ...] = ()  # notes for `edgeplan compile` to print (a target's backend fallback)

    def supports(self, op_kinds: set[str]) -> set[str]:
        return set()

    def compile_stage(self, module, example_inputs, options, out_dir: Path, backend: str = "auto") -> CompiledStage:
        t0 = time.perf_counter()
        if self.fail_on_stage is not None and type(module).__name__ == f"Stage{self.fail_on_stage}":
            raise self.fail_with(f"{out_dir}: injected failure")
        shapes = [tuple(t.shape) for t in example_inputs]
        (out_dir / "module.py").write_text(f"# inputs {shapes} options {sorted(options.items())}\n{module.code}")
        return CompiledStage("text", "module.py", ("module.py",), time.perf_counter() - t0, printed=self.printed)

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        return ("nothing else (test target)",)


TEXT_TARGET = TextTarget()
if TEXT_TARGET.name not in registry.names():
    registry.register(TEXT_TARGET.name, TEXT_TARGET)
