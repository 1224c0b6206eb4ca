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
    return Built(traced.gm, mods, n_in, tuple(traced.graph.inputs[0].shape[1:]))
