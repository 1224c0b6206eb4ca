"""Where each layer output keeps its batch: the one predicate for "can a stage boundary cross this tensor".

Everything crossing a cut travels batch-first (the runtime splits micro-batches
along dim 0), so codegen can cut after a layer only if each live tensor has a
single batch dimension (moved to dim 0 at the cut when it sits elsewhere, e.g.
ViT's stacked q/k/v ``(3, B, heads, T, d)``). A tuple (``nn.MultiheadAttention``,
``torch.unbind``, ``chunk``) or a batch-independent tensor has none. The tracer
records the answer in ``LayerGraph.batch_dims``; the planner offers only cuts
that ``LayerGraph.cut_allowed`` allows, and codegen moves or refuses by the same
record, so the two cannot disagree.

Found by running the model at batches 2 and 3: a dimension is the batch when it
is 2 and 3 there and every other dimension stays put. Only layers whose traced
shape does not start with the traced batch are checked (CNNs pay nothing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from edgeplan.graph.model import NO_BATCH_DIM, LayerGraph
from edgeplan.graph.opkinds import NodeValue, describe


def batch_dim(s2: tuple[int, ...] | None, s3: tuple[int, ...] | None) -> int:
    """The one dimension that is 2 at batch 2 and 3 at batch 3 with the others unchanged, else NO_BATCH_DIM."""
    if s2 is None or s3 is None or len(s2) != len(s3):
        return NO_BATCH_DIM
    found = [d for d in range(len(s2))
             if s2[d] == 2 and s3[d] == 3 and all(s2[i] == s3[i] for i in range(len(s2)) if i != d)]
    return found[0] if len(found) == 1 else NO_BATCH_DIM


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]):
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, NodeValue] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = describe(out)
        return out


def _inputs(graph: LayerGraph, batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in graph.inputs:
        dtype = getattr(torch, spec.dtype)
        shape = (batch, *spec.shape[1:])
        out.append(torch.randn(shape, generator=gen, dtype=dtype) if dtype.is_floating_point
                   else torch.randint(0, 2, shape, generator=gen, dtype=dtype))
    return out


def find_batch_dims(gm: fx.GraphModule, graph: LayerGraph) -> tuple[tuple[str, int], ...]:
    """(layer, batch dim) for every layer whose traced output is not batch-first (NO_BATCH_DIM: none).

    A model that does not run at batches 2 and 3 (a batch fixed in its code) gets NO_BATCH_DIM for
    every such layer: no cut crosses them.
    """
    suspect = {layer.name for layer in graph.layers if layer.output.shape[:1] != (graph.batch,)}
    if not suspect:
        return ()
    seen: dict[int, dict[str, NodeValue]] = {}
    modes = {m: m.training for m in gm.modules()}  # probe in eval mode: no BatchNorm statistics updates
    try:
        gm.eval()
        for b in (2, 3):
            rec = _Recorder(gm, suspect)
            with torch.no_grad():
                rec.run(*_inputs(graph, b))
            seen[b] = rec.values
    except Exception:  # noqa: BLE001 - any failure at another batch means: not splittable there
        seen = {2: {}, 3: {}}
    finally:
        for m, training in modes.items():
            m.training = training

    def shape(b: int, name: str) -> tuple[int, ...] | None:
        v = seen[b].get(name)
        return None if v is None or v.is_tuple or not v.is_tensor else v.tensors[0][0]

    out = []
    for layer in graph.layers:
        if layer.name in suspect:
            dim = batch_dim(shape(2, layer.name), shape(3, layer.name))
            if dim != 0:
                out.append((layer.name, dim))
    return tuple(out)
