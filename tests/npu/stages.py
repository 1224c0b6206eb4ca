"""Cut zoo models into two pipeline stages for the npu tests, through codegen's own splitter."""

from __future__ import annotations

from functools import lru_cache

import torch

from edgeplan.codegen.split import split_stages
from edgeplan.graph import trace, zoo
from edgeplan.planner.plan import Plan, Predicted, Replica, Stage


def _plan(graph, cut: int) -> Plan:
    layers = graph.layers
    rep = Replica(device="board", unit="npu", target="npu", share=1.0, samples=1, memory_bytes=0)
    stages = tuple(
        Stage(index=i, start=a, stop=b, first_layer=layers[a].name, last_layer=layers[b - 1].name, replicas=(rep,),
              compute_s=0.0, send_s=0.0, energy_j=0.0)
        for i, (a, b) in enumerate(((0, cut), (cut, len(layers))))
    )
    return Plan(model=graph.name, graph_sha256="", cluster="test", cluster_sha256="", mode="inference",
                objective="latency", batch=1, microbatches=1, schedule="none", solver="dp", head="board",
                stages=stages, predicted=Predicted(latency_s=0.0, throughput=0.0, energy_j=0.0))


@lru_cache(maxsize=4)
def two_stages(name: str, cut_fraction: float = 0.5):
    """(stage0 GraphModule, stage1 GraphModule) of zoo model ``name`` cut near ``cut_fraction`` of its layers."""
    entry = zoo.get(name)
    traced = trace.trace(entry.build().eval(), entry.input_shape, name)
    cut = max(1, min(len(traced.graph.layers) - 1, round(cut_fraction * len(traced.graph.layers))))
    s0, s1 = split_stages(traced, _plan(traced.graph, cut))
    return s0.gm.eval(), s1.gm.eval(), entry.input_shape


def samples(shape: tuple[int, ...], n: int, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g),) for _ in range(n)]
