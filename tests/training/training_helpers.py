"""Shared helpers for the training tests: hand-made training plans over a traced zoo model."""

from __future__ import annotations

from edgeplan.planner.plan import Plan, Predicted, Replica, Stage
from edgeplan.training import stages


def training_plan(model: str, cuts: tuple[int, ...], samples: tuple[tuple[int, ...], ...], *, batch: int,
                  microbatches: int, schedule: str = "gpipe", devices: tuple[tuple[str, ...], ...] | None = None,
                  iter_s: float | None = 0.05) -> Plan:
    """A training plan with stage boundaries ``cuts`` (layer indices) and per-replica samples per micro-batch."""
    graph = stages.build_traced(model, None).graph
    bounds = (0, *cuts, len(graph.layers))
    out = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        names = devices[i] if devices else tuple(f"board{i}{chr(97 + j)}" for j in range(len(samples[i])))
        m = batch // microbatches
        reps = tuple(Replica(device=d, unit="cpu", target="x86", share=n / m, samples=n, memory_bytes=0)
                     for d, n in zip(names, samples[i], strict=True))
        out.append(Stage(index=i, start=lo, stop=hi, first_layer=graph.layers[lo].name,
                         last_layer=graph.layers[hi - 1].name, replicas=reps, compute_s=0.0, send_s=0.0,
                         energy_j=0.0))
    return Plan(model=model, graph_sha256=graph.digest(), cluster="test", cluster_sha256="0" * 64,
                mode="training", objective="time", batch=batch, microbatches=microbatches, schedule=schedule,
                solver="dp", head=out[0].replicas[0].device, stages=tuple(out),
                predicted=Predicted(latency_s=0.0, throughput=0.0, energy_j=0.001, iter_s=iter_s))
