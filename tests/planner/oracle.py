"""An exhaustive oracle that shares no code with the planner's ``allocate`` / ``evaluate`` / ``Prefix``.

It enumerates every layout of a small inference instance: stage cuts x ordered
disjoint device groups x a unit per board kind in each group x *every* integer
split of the micro-batch over the group (not the planner's greedy split), and
prices each one from the raw CostTable arrays:

- a replica's call: ``k * (sum fwd + hop_byte * (cut_in + cut_out)) + sum fixed + hop``; its memory:
  weights + ``k * (cut_in + max act)``, which must fit the device's RAM;
- a transfer between groups: the whole micro-batch over the slowest pair link plus the largest
  latency (the runtime's routing, as the cost model states it);
- time: the micro-batches are run through the chain of resources (input link, stages, links,
  output link) by an event simulation, each resource taking them in order, starting each one when
  both the resource and the micro-batch are free; latency is the last finish, the period is the
  spacing of finishes in steady state (measured between two long runs);
- energy per sample: every replica's busy-above-idle power x its call time, the used boards' idle
  power over one period, and the bytes sent x the link's energy per byte, over the micro-batch.
"""

from __future__ import annotations

import itertools

import numpy as np

from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable


def _splits(m: int, g: int):
    """Every way to give ``m`` samples to ``g`` replicas, each at least one."""
    for cuts in itertools.combinations(range(1, m), g - 1):
        b = (0, *cuts, m)
        yield tuple(b[i + 1] - b[i] for i in range(g))


def _run(times: list[float], jobs: int) -> list[float]:
    """Event simulation of ``jobs`` identical micro-batches through resources in series: finish times."""
    free = [0.0] * len(times)
    out = []
    for _ in range(jobs):
        t = 0.0
        for r, p in enumerate(times):
            t = max(t, free[r]) + p
            free[r] = t
        out.append(t)
    return out


def _link(costs: CostTable, src, dst) -> tuple[float, float, float] | None:
    pairs = [(a, b) for a in src for b in dst if a != b]
    if not pairs:
        return None
    return (min(costs.bandwidth[a, b] for a, b in pairs), max(costs.latency_s[a, b] for a, b in pairs),
            max(costs.energy_per_byte_j[a, b] for a, b in pairs))


def _kind(costs: CostTable, d: int, head: int):
    us = [u for u, x in enumerate(costs.units) if x[0] == d]
    hop = [0.0 if costs.hop_s is None else float(costs.hop_s[u]) for u in us]
    hb = [0.0 if costs.hop_byte_s is None else float(costs.hop_byte_s[u]) for u in us]
    return ("head",) if d == head else (float(costs.ram_bytes[d]), float(costs.idle_power_w[d]),
                                        tuple((costs.fwd_s[u].tobytes(), costs.fixed_s[u].tobytes(),
                                               costs.supported[u].tobytes(), float(costs.busy_power_w[u]),
                                               hop[k], hb[k]) for k, u in enumerate(us)))


def oracle(costs: CostTable, obj: Objective) -> float | None:
    """The best objective value (seconds of latency, seconds of period, or joules per sample) or None."""
    assert not obj.training, "the oracle prices inference plans"
    n, D, m = costs.n_layers, costs.n_devices, obj.micro
    head = 0 if obj.head is None else costs.devices.index(obj.head)
    units = [[u for u, x in enumerate(costs.units) if x[0] == d] for d in range(D)]
    kinds = [_kind(costs, d, head) for d in range(D)]
    act, cut, par = (np.asarray(a, dtype=np.float64) for a in (costs.act_bytes, costs.cut_bytes, costs.param_bytes))
    hop = np.zeros(len(costs.units)) if costs.hop_s is None else np.asarray(costs.hop_s, dtype=np.float64)
    hopb = np.zeros(len(costs.units)) if costs.hop_byte_s is None else np.asarray(costs.hop_byte_s, dtype=np.float64)
    best = None
    for S in range(1, min(D, n) + 1):
        for inner in itertools.combinations(range(1, n), S - 1):
            bounds = (0, *inner, n)
            for labels in itertools.product(range(-1, S), repeat=D):
                groups = [[d for d in range(D) if labels[d] == s] for s in range(S)]
                if any(not g for g in groups):
                    continue
                # one unit per board kind within a group
                per_stage = []
                for s, g in enumerate(groups):
                    ks = sorted({kinds[d] for d in g}, key=repr)
                    first = {k: next(d for d in g if kinds[d] == k) for k in ks}
                    opts = []
                    for pick in itertools.product(*[range(len(units[first[k]])) for k in ks]):
                        sel = dict(zip(ks, pick, strict=True))
                        us = [units[d][sel[kinds[d]]] for d in g]
                        i, j = bounds[s], bounds[s + 1]
                        if all(costs.supported[u, i:j].all() for u in us):
                            opts.append(us)
                    per_stage.append(opts)
                for choice in itertools.product(*per_stage):
                    for shares in itertools.product(*[list(_splits(m, len(g))) for g in groups]):
                        v = _price(costs, obj, bounds, groups, choice, shares, head, act, cut, par, hop, hopb)
                        if v is not None and (best is None or v < best):
                            best = v
    return best


def _price(costs, obj, bounds, groups, choice, shares, head, act, cut, par, hop, hopb) -> float | None:
    m, M = obj.micro, obj.microbatches
    S = len(groups)
    times, dyn = [], 0.0
    link = _link(costs, (head,), groups[0])
    if link is None:
        times.append(0.0)
    else:
        times.append(m * cut[0] / link[0] + link[1])
        dyn += m * cut[0] * link[2]
    for s in range(S):
        i, j = bounds[s], bounds[s + 1]
        tau = 0.0
        for d, u, k in zip(groups[s], choice[s], shares[s], strict=True):
            t = k * (costs.fwd_s[u, i:j].sum() + hopb[u] * (cut[i] + cut[j])) + costs.fixed_s[u, i:j].sum() + hop[u]
            if par[i:j].sum() + k * (cut[i] + act[i:j].max()) > costs.ram_bytes[d]:
                return None
            tau = max(tau, t)
            dyn += max(float(costs.busy_power_w[u]) - float(costs.idle_power_w[d]), 0.0) * t
        times.append(tau)
        nxt = groups[s + 1] if s + 1 < S else (head,)
        link = _link(costs, groups[s], nxt)
        if link is None:
            times.append(0.0)
        else:
            times.append(m * cut[j] / link[0] + link[1])
            dyn += m * cut[j] * link[2]
    latency = _run(times, M)[-1]
    long = _run(times, 40)
    period = (long[-1] - long[19]) / 20
    if obj.objective == "latency":
        return latency
    if obj.objective == "throughput":
        return period
    idle = sum(float(costs.idle_power_w[d]) for g in groups for d in g)
    return (dyn + idle * period) / m
