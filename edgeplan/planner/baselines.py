"""The four reference plans every report shows beside the chosen one.

Each device runs on its fastest unit that supports every layer of its stage;
all are priced by the same evaluator, so the speed-ups are like for like.
"""

from __future__ import annotations

import numpy as np

from edgeplan.planner.costmodel import Evaluation, Layout, Prefix, StageSpec, allocate, evaluate, stash_of
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable

NAMES = ("best-single-device", "data-parallel-all", "uniform-split", "param-balanced")


def _best_unit(costs: CostTable, pf: Prefix, d: int, i: int, j: int, m: int) -> int | None:
    best = None
    for u, (dev, _, _) in enumerate(costs.units):
        if dev != d or pf.U[u, j] - pf.U[u, i] > 0:
            continue
        t = pf.time(u, i, j, m)
        if best is None or t < best[0]:
            best = (t, u)
    return None if best is None else best[1]


def _chain(costs: CostTable, pf: Prefix, bounds: list[int], devices: list[int], m: int) -> Layout | str:
    stages = []
    for s, d in enumerate(devices):
        i, j = bounds[s], bounds[s + 1]
        u = _best_unit(costs, pf, d, i, j, m)
        if u is None:
            return (f"no unit of {costs.devices[d]} runs every layer of "
                    f"{costs.layer_names[i]}..{costs.layer_names[j - 1]}")
        stages.append(StageSpec(i, j, ((u, m),)))
    return tuple(stages)


def baselines(costs: CostTable, obj: Objective,
              pf: Prefix | None = None) -> list[tuple[str, Layout | None, Evaluation | None, str]]:
    """(name, layout, evaluation, reason-if-infeasible) for each baseline, in ``NAMES`` order."""
    pf = pf or Prefix(costs, obj)
    n, m = costs.n_layers, obj.micro
    boards = sorted({u[0] for u in costs.units})  # an off-board head (CostTable.head) has no unit: it runs no stage
    d = len(boards)
    out = []
    # best single device
    best = None
    for dev in boards:
        lay = _chain(costs, pf, [0, n], [dev], m)
        if isinstance(lay, str):
            continue
        ev = evaluate(costs, lay, obj, prefix=pf)
        if ev.feasible and (best is None or ev.score(obj) < best[1].score(obj)):
            best = (lay, ev)
    out.append((NAMES[0], *best, "") if best else (NAMES[0], None, None, "no single device fits the model"))
    # data parallel over all devices
    units = [_best_unit(costs, pf, dev, 0, n, 1) for dev in boards]
    units = [u for u in units if u is not None]
    reason = ""
    lay = None
    if not units:
        reason = "no device runs every layer"
    else:
        ks = allocate(pf, 0, n, tuple(units), m, stash_of(obj, 1, 0))
        reps = tuple((u, k) for u, k in zip(units, ks, strict=False) if k > 0)
        lay = (StageSpec(0, n, reps),)
    out.append(_finish(NAMES[1], costs, obj, pf, lay, reason))
    # uniform split: one stage per device (cluster order), equal layer counts
    s = min(d, n)
    bounds = _allowed([round(k * n / s) for k in range(s + 1)], pf.cut_ok)
    lay = _chain(costs, pf, bounds, boards[:len(bounds) - 1], m)
    out.append(_finish(NAMES[2], costs, obj, pf, None if isinstance(lay, str) else lay,
                       lay if isinstance(lay, str) else ""))
    # parameter-balanced split
    total = pf.P[-1]
    bounds = [0]
    for k in range(1, s):
        target = total * k / s
        b = int(np.searchsorted(pf.P, target, side="left"))
        b = min(max(b, bounds[-1] + 1), n - (s - k))
        bounds.append(b)
    bounds.append(n)
    bounds = _allowed(bounds, pf.cut_ok)
    lay = _chain(costs, pf, bounds, boards[:len(bounds) - 1], m)
    out.append(_finish(NAMES[3], costs, obj, pf, None if isinstance(lay, str) else lay,
                       lay if isinstance(lay, str) else ""))
    return out


def _allowed(bounds: list[int], cut_ok: np.ndarray) -> list[int]:
    """``bounds`` with each inner cut moved to the nearest cut codegen can split (duplicates dropped)."""
    ok = np.nonzero(cut_ok)[0]
    out = [bounds[0]]
    for b in bounds[1:-1]:
        c = int(ok[np.argmin(np.abs(ok - b) * 2 + (ok < b))])  # nearest; the later one on ties
        if out[-1] < c < bounds[-1]:
            out.append(c)
    return out + [bounds[-1]]


def _finish(name, costs, obj, pf, lay, reason):
    if lay is None:
        return (name, None, None, reason)
    ev = evaluate(costs, lay, obj, prefix=pf)
    if not ev.feasible:
        return (name, lay, ev, ev.why_infeasible(costs))
    return (name, lay, ev, "")
