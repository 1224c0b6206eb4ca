"""Exhaustive search over every layout of a small instance, priced by the shared evaluator."""

from __future__ import annotations

import itertools

import numpy as np

from edgeplan.planner.costmodel import Prefix, StageSpec, allocate, evaluate, stash_of
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable


def _hw(costs: CostTable, d: int) -> tuple:
    us = [u for u, x in enumerate(costs.units) if x[0] == d]
    return (float(costs.ram_bytes[d]), float(costs.idle_power_w[d]),
            tuple((costs.fwd_s[u].tobytes(), costs.fixed_s[u].tobytes(), costs.supported[u].tobytes(),
                   float(costs.busy_power_w[u]),
                   0.0 if costs.hop_s is None else float(costs.hop_s[u]),
                   0.0 if costs.hop_byte_s is None else float(costs.hop_byte_s[u]),
                   None if costs.hop_send_byte_s is None else float(costs.hop_send_byte_s[u])) for u in us))


def brute_force(costs: CostTable, obj: Objective, memory_aware_shares: bool = True, allowed=None):
    """Best (evaluation, layout) over all stage cuts x ordered disjoint device groups x unit choices.

    ``memory_aware_shares=False`` splits samples ignoring memory (the planner before issue 13), to show
    what memory-aware shares gain. ``allowed``: the stage boundaries to try (a coarse graph; default all)."""
    n, d = costs.n_layers, costs.n_devices
    pf = Prefix(costs, obj)
    dev_units = [[u for u, x in enumerate(costs.units) if x[0] == k] for k in range(d)]
    hw = [_hw(costs, k) for k in range(d)]
    head = 0 if obj.head is None else costs.devices.index(obj.head)
    best = None
    inner = range(1, n) if allowed is None else sorted({int(b) for b in allowed} - {0, n})
    for S in range(1, min(d, n) + 1):
        for cuts in itertools.combinations(inner, S - 1):
            bounds = (0, *cuts, n)
            for labels in itertools.product(range(-1, S), repeat=d):
                groups = [[k for k in range(d) if labels[k] == s] for s in range(S)]
                if any(not g for g in groups):
                    continue
                # replicas of identical boards in one stage share a unit: choose per (stage, hw kind)
                kinds = [sorted({hw[k] if k != head else ("head",) for k in g}, key=repr) for g in groups]
                choices = []
                for g, ks in zip(groups, kinds, strict=False):
                    opts = []
                    nu = {kk: len(dev_units[next(k for k in g if (hw[k] if k != head else ("head",)) == kk)])
                          for kk in ks}
                    for pick in itertools.product(*[range(nu[kk]) for kk in ks]):
                        sel = dict(zip(ks, pick, strict=False))
                        opts.append([dev_units[k][sel[hw[k] if k != head else ("head",)]] for k in g])
                    choices.append(opts)
                for units in itertools.product(*choices):
                    stages = []
                    bad = False
                    for s in range(S):
                        i, j = bounds[s], bounds[s + 1]
                        us = tuple(units[s])
                        ks = allocate(pf, i, j, us, obj.micro, stash_of(obj, S, s) if memory_aware_shares else None)
                        if min(ks) < 1:
                            bad = True
                            break
                        stages.append(StageSpec(i, j, tuple(zip(us, ks, strict=False))))
                    if bad:
                        continue
                    ev = evaluate(costs, tuple(stages), obj, prefix=pf)
                    if not ev.feasible:
                        continue
                    key = ev.score(obj)
                    if best is None or key < best[0]:
                        best = (key, ev, tuple(stages))
    return None if best is None else (best[1], best[2])


def rel_close(a: float, b: float, tol: float = 1e-9) -> bool:
    return bool(np.isclose(a, b, rtol=tol, atol=0.0))
