"""The model and its per-stage modules, built identically on every rank.

The model comes from the graph phase (``edgeplan.graph.load.build`` when it
exists, else the zoo + ``trace``) with its seeded initialisation, and is cut by
codegen's ``split_stages``; each rank keeps only its stage. Stage modules share
their submodules with the traced module, so a stage's state_dict keys are the
original model's keys, which is what lets checkpoints be reassembled into a
state_dict the original ``nn.Module`` loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from edgeplan.errors import ModelError
from edgeplan.planner.plan import Plan


def build_traced(spec: str, input_shape: tuple[int, ...] | None):
    """Traced(gm, graph) of a model spec (zoo name, or whatever ``edgeplan.graph.load`` accepts)."""
    try:
        load = importlib.import_module("edgeplan.graph.load")
    except ModuleNotFoundError:
        load = None
    if load is not None:
        return load.build(spec, tuple(input_shape) if input_shape else None)
    from edgeplan.graph import trace, zoo

    entry = zoo.get(spec)
    shape = tuple(input_shape) if input_shape else entry.input_shape
    return trace.trace(entry.build(), shape, spec, expected_shape=entry.input_shape)


def stage_modules(traced, plan: Plan) -> tuple[tuple[nn.Module, ...], tuple[int, ...]]:
    """One module per plan stage (tuple in, tuple out) and how many tensors each stage takes."""
    from edgeplan.codegen.split import split_stages

    stages = split_stages(traced, plan)
    return tuple(s.gm for s in stages), tuple(len(s.inputs) for s in stages)


def key_map(stage: nn.Module, full: nn.Module) -> dict[str, str]:
    """Stage state_dict key -> the full model's key, matched by tensor identity, then by name."""
    by_id = {id(t): k for k, t in full.state_dict(keep_vars=True).items()}
    full_keys = set(by_id.values())
    out = {}
    for k, t in stage.state_dict(keep_vars=True).items():
        if id(t) in by_id:
            out[k] = by_id[id(t)]
        elif k in full_keys:
            out[k] = k
        else:
            raise ModelError(f"stage weight {k!r} is not a weight of the traced model; the stage modules were "
                             "not cut from this model (re-run `edgeplan compile`)")
    return out


def resolve_callable(ref: str):
    """``package.module:function`` -> the function (model providers for tests and custom models)."""
    mod, _, fn = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"cannot import model provider {ref!r} ({e}); give it as package.module:function") from e


@dataclass(frozen=True, eq=False)
class Built:
    full: nn.Module  # whole model; its state_dict keys are the original module's
    stages: tuple[nn.Module, ...]  # one per plan stage, tuple in / tuple out
    n_inputs: tuple[int, ...]  # tensors each stage takes
    input_shape: tuple[int, ...]  # one sample's model input (no batch dimension)
    traced: object = None  # the Traced the stages were cut from (graph + fx module), when built here


def build(spec: str, input_shape: tuple[int, ...] | None, plan: Plan, provider: str | None = None) -> Built:
    """The model and its stage modules for a rank (identical weights on every rank).

    ``provider``, when given, is ``package.module:function(spec, input_shape, plan) -> Built``
    (custom models whose stages are made elsewhere).
    """
    if provider:
        return resolve_callable(provider)(spec, input_shape, plan)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        traced = build_traced(spec, input_shape)
    mods, n_in = stage_modules(traced, plan)
    return Built(traced.gm, mods, n_in, tuple(traced.graph.inputs[0].shape[1:]), traced)


def branch_modules(traced, plan: Plan) -> tuple[tuple[nn.Module, tuple[str, ...]], ...]:
    """Per replica of a branch stage (plan stage 0, kind "branches"): its branch module and output names.

    Replica j's module takes its model input and returns the tensors of its layers that cross
    the junction cut (in ``live_at(stop)`` order); codegen's ``split_branches`` when it exists.
    """
    from edgeplan.codegen import split

    st = plan.stages[0]
    if getattr(split, "split_branches", None) is not None:
        return tuple((b.gm.train(), tuple(b.outputs)) for b in split.split_branches(traced, plan))
    graph = traced.graph
    nodes = {n.name: n for n in traced.gm.graph.nodes}
    producers = {t.name for t in graph.inputs} | {layer.name for layer in graph.layers}
    live = graph.live_at(st.stop)
    out = []
    for r in st.replicas:
        layers = [layer.name for layer in graph.layers[r.start:r.stop]]
        outputs = tuple(name for name in live if name in layers or name == r.input)
        sub = split._stage_graph(nodes, producers, (r.input,), layers, outputs, 0, {})
        out.append((torch.fx.GraphModule(traced.gm, sub, class_name="Branch").train(), outputs))
    return tuple(out)


def sync_batchnorm(module: nn.Module, group, label: str) -> int:
    """Make every BatchNorm of ``module`` normalise with the statistics of its whole replica group.

    In training mode each BatchNorm all-reduces (sum) the per-channel sum, sum
    of squares and sample count of its input over ``group`` (float64), and
    normalises with the group's mean and biased variance; the running
    statistics take the unbiased variance over the group's samples, as
    single-process BatchNorm does over the batch. The all-reduce is
    autograd-aware (``_AllReduceSum``), so the backward all-reduces the
    gradient of those sums and each replica gets exactly its share of the
    single-process gradient. Every replica of the group must run the same
    forwards in the same order (the schedule guarantees it). With several
    micro-batches the statistics are those of one micro-batch of the global
    batch (as in GPipe), not of the whole batch. The modules, parameters and
    buffers stay the same objects (only ``forward`` is replaced), so state_dict
    keys and checkpoints are unchanged. Returns how many layers were changed.
    """
    import types

    count = 0
    for name, bn in module.named_modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.forward = types.MethodType(_make_sync_forward(group, f"{label}: BatchNorm {name!r}"), bn)
            count += 1
    return count


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group in forward; the gradient of a sum every replica uses is the sum of their gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _make_sync_forward(group, where: str):
    from edgeplan.errors import RuntimeFault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # evaluation: running statistics, nothing to share
            return type(self).forward(self, x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() / c], dtype=torch.float64, device=x.device)])
        try:
            total = _AllReduceSum.apply(local, group)
        except RuntimeError as e:
            raise RuntimeFault(f"{where}: could not all-reduce batch statistics with the replica group: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    return forward
