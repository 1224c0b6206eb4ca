"""Which plan of a family to run under the estimated conditions (issue 12 item 4, second half).

``Pricer`` holds the nominal CostTable and each distinct plan's layout once; ``price(cond)``
re-prices every plan with the planner's own evaluator on ``scale_costs(costs, cond)``, so a
decision agrees with what `edgeplan plan` would predict under that condition.

``heuristic`` picks the best-priced plan with hysteresis: it leaves the current plan only when the
predicted gain exceeds a margin that covers the switch (``switch_s`` of lost service amortised over
``horizon_s`` in the new condition, and never less than ``min_margin``), and at most once per
committed condition change (``Estimate.change_id``). A current plan that cannot run (a board gone)
is left at once. ``oracle`` is the benchmark's upper bound: the best plan under the true condition,
no hysteresis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeplan.adapt.estimate import Estimate
from edgeplan.errors import PlanError
from edgeplan.planner.costmodel import evaluate
from edgeplan.planner.family import ALL, Condition, scale_costs

MIN_MARGIN = 0.05  # the planner's own --min-gain default: smaller differences are within the model's error
SWITCH_S = 0.5  # assumed service lost per switch (drain + first micro-batch of the new plan)
HORIZON_S = 20.0  # assumed time a condition lasts once detected


@dataclass(frozen=True)
class Prices:
    """Objective value per plan under one condition (lower is better; inf: cannot run)."""

    condition: str
    values: tuple[tuple[str, float], ...]

    def of(self, plan: str) -> float:
        return dict(self.values)[plan]

    def best(self) -> tuple[str, float]:
        return min(self.values, key=lambda kv: (kv[1], kv[0]))


@dataclass(frozen=True)
class Decision:
    plan: str  # the plan to run now
    switch: bool  # differs from the current plan
    reason: str
    current_value: float
    best_value: float
    change_id: int  # the condition change this decision answers


@dataclass(frozen=True)
class _Shape:
    """One inference plan's resources at nominal conditions, in the evaluator's terms (see costmodel), by
    device and pair index: per stage its replicas' (device, seconds per micro-batch, joules above idle), per
    transfer its max latency and its flows (sender, receiver, pair index a*n+b, bytes, bandwidth), priced
    per pair as the evaluator does (costmodel.pair_transfer: the busiest NIC); the parts no condition
    scales are constants."""

    compute: tuple[tuple[tuple[int, float, float], ...], ...]
    sends: tuple[tuple[float, tuple[tuple[int, int, int, float, float], ...]], ...]
    send_j: float  # joules per micro-batch spent on links (bytes x energy/byte: no condition changes it)
    idle_w: float  # idle power of the used boards
    devices: frozenset  # names


def _shape(costs, layout, objective) -> _Shape:
    from edgeplan.planner.costmodel import Prefix, head_index, pair_samples

    pf = Prefix(costs, objective)
    m, head, n = objective.micro, head_index(costs, objective), len(costs.devices)
    ends = [tuple((costs.units[u][0], k) for u, k in st.replicas) for st in layout]
    groups = [tuple(d for d, _ in e) for e in ends]

    sends, send_j = [], 0.0
    for src, dst, j in [(((head, m),), ends[0], 0)] + [
            (ends[s], ends[s + 1] if s + 1 < len(layout) else ((head, m),), st.stop) for s, st in enumerate(layout)]:
        flows = []
        for x, y, k in pair_samples(tuple(k for _, k in src), tuple(k for _, k in dst)):
            a, b = src[x][0], dst[y][0]
            if a != b:
                nbytes = k * float(pf.cut[j])
                send_j += nbytes * float(costs.energy_per_byte_j[a, b])
                flows.append((a, b, a * n + b, nbytes, float(costs.bandwidth[a, b])))
        if flows:
            sends.append((max(float(costs.latency_s[a, b]) for a, b, _, _, _ in flows), tuple(flows)))
    compute = []
    for st in layout:
        reps = []
        for u, k in st.replicas:
            d = costs.units[u][0]
            t = float(pf.time(u, st.start, st.stop, k))
            reps.append((d, t, max(float(costs.busy_power_w[u]) - float(costs.idle_power_w[d]), 0.0) * t))
        compute.append(tuple(reps))
    used = {d for g in groups for d in g}
    return _Shape(tuple(compute), tuple(sends), send_j, float(sum(costs.idle_power_w[d] for d in used)),
                  frozenset(costs.devices[d] for d in used))


def _value(sh: _Shape, slow: list[float], scale: list[float], kind: str, microbatches: int, micro: int,
           bound: float = math.inf) -> float:
    """The evaluator's inference figure for ``sh`` with per-device slowdowns and per-pair bandwidth scales.

    Written for speed (a running max and sum, no temporaries): it runs for every plan at every decision.
    Throughput and latency stop early once the partial figure exceeds ``bound`` (the best plan so far):
    the value returned is then only known to be worse than it.
    """
    period = total = 0.0
    lat = kind == "latency"
    for reps in sh.compute:
        if len(reps) == 1:
            d, t, _ = reps[0]
            x = t * slow[d]
        else:
            x = max(t * slow[d] for d, t, _ in reps)
        total += x
        if x > period:
            period = x
            if not lat and period > bound and kind == "throughput":
                return period
        if lat and total + (microbatches - 1) * period > bound:
            return total + (microbatches - 1) * period
    for la, flows in sh.sends:
        if len(flows) == 1:
            _, _, k, nbytes, b = flows[0]
            x = nbytes / (b * scale[k]) + la
        else:  # the busiest NIC: a device's sends and its receives apart
            load: dict[int, float] = {}
            for a, b_, k, nbytes, b in flows:
                t = nbytes / (b * scale[k])
                load[a] = load.get(a, 0.0) + t
                load[-1 - b_] = load.get(-1 - b_, 0.0) + t
            x = max(load.values()) + la
        total += x
        if x > period:
            period = x
            if kind == "throughput" and period > bound:
                return period
        if lat and total + (microbatches - 1) * period > bound:
            return total + (microbatches - 1) * period
    if kind == "throughput":
        return period
    if kind == "latency":
        return total + (microbatches - 1) * period
    dyn = sh.send_j + sum(e * slow[d] for reps in sh.compute for d, _, e in reps)
    return (dyn + sh.idle_w * period) / micro  # energy


class _Terms:
    """Every inference plan's figure as numpy arrays, so one condition prices all plans in a few array
    operations (a decision re-prices every plan). Each plan is a list of *groups* (a stage: the max of its
    replicas; a transfer: the max of its NIC loads plus its latency), each group the max of *terms* linear in
    ``x`` = (per-device slowdown, per-pair 1/bandwidth scale): ``T = A @ x + c``. Period = max of the plan's
    groups, total = their sum; energy's dynamic part is ``E @ slowdown + send_j`` (see ``_value``)."""

    def __init__(self, shapes: dict, n: int):
        rows, consts, gstarts, pstarts, energy = [], [], [], [], []
        for sh in shapes.values():
            pstarts.append(len(gstarts))
            for reps in sh.compute:
                gstarts.append(len(rows))
                for d, t, _ in reps:
                    r = np.zeros(n + n * n)
                    r[d] = t
                    rows.append(r)
                    consts.append(0.0)
            for la, flows in sh.sends:
                gstarts.append(len(rows))
                load: dict[int, np.ndarray] = {}
                for a, b_, k, nbytes, b in flows:  # the busiest NIC: a device's sends and its receives apart
                    for end in ((a,) if len(flows) == 1 else (a, -1 - b_)):
                        r = load.setdefault(end, np.zeros(n + n * n))
                        r[n + k] += nbytes / b
                for r in load.values():
                    rows.append(r)
                    consts.append(la)
            e = np.zeros(n)
            for reps in sh.compute:
                for d, _, j in reps:
                    e[d] += j
            energy.append(e)
        self.n = n
        self.a, self.c = np.array(rows), np.array(consts)
        self.gstarts, self.pstarts = np.array(gstarts), np.array(pstarts)
        self.energy = np.array(energy)
        self.send_j = np.array([sh.send_j for sh in shapes.values()])
        self.idle_w = np.array([sh.idle_w for sh in shapes.values()])

        self.ac = np.hstack((self.a, self.c[:, None]))  # x gets a trailing 1: one matmul adds the constants

    def values(self, x: np.ndarray, kind: str, microbatches: int, micro: int) -> np.ndarray:
        """``x``: slowdowns, 1/scales, then 1."""
        g = np.maximum.reduceat(self.ac @ x, self.gstarts)
        period = np.maximum.reduceat(g, self.pstarts)
        if kind == "throughput":
            return period
        if kind == "latency":
            return np.add.reduceat(g, self.pstarts) + (microbatches - 1) * period
        return (self.energy @ x[:self.n] + self.send_j + self.idle_w * period) / micro


CACHE = 4096  # conditions whose prices a Pricer keeps (estimates are rounded to 2 digits: conditions recur)


class Pricer:
    """Every plan's layout on the nominal CostTable, re-priced per condition.

    Inference plans are re-priced from their resources at nominal conditions (``_Shape``: tens of
    microseconds); training plans through ``evaluate`` on the scaled CostTable. Both give the evaluator's figure.
    """

    def __init__(self, costs, objective, layouts: dict):
        self.costs, self.objective = costs, objective
        self.layouts = dict(sorted(layouts.items()))
        self._devices = {name: {costs.devices[costs.units[u][0]] for st in lay for u, _ in st.replicas}
                         for name, lay in self.layouts.items()}
        self._shapes = None if objective.training else {
            name: _shape(costs, lay, objective) for name, lay in self.layouts.items()}
        self._ones = [1.0] * (len(costs.devices) ** 2)
        self._feasible = {name: evaluate(costs, lay, objective).feasible for name, lay in self.layouts.items()}
        nominal = {name: evaluate(costs, lay, objective).value(objective) for name, lay in self.layouts.items()}
        self._order = sorted(self.layouts, key=lambda n: (nominal[n], n))  # likely best first: tighter bounds
        self.names = tuple(self.layouts)  # the order of ``vector``
        self._ix = {name: i for i, name in enumerate(self.names)}
        n = len(costs.devices)
        self._dix = {d: i for i, d in enumerate(costs.devices)}
        self._terms = None if self._shapes is None else _Terms(self._shapes, n)
        self._infeasible = np.array([not self._feasible[name] for name in self.names])
        self._any_infeasible = bool(self._infeasible.any())
        self._uses = np.array([[d in self._devices[name] for d in costs.devices] for name in self.names]).reshape(
            len(self.names), n)
        self._cache: dict = {}  # Condition -> vector
    @classmethod
    def from_family(cls, graph, cluster, plans: dict) -> Pricer:
        """From a loaded family (``load_family``'s plans) and the LayerGraph + nominal cluster it was made for."""
        from edgeplan.planner.api import layout_of, objective_of
        from edgeplan.profiles.cost import build_cost_table

        costs = build_cost_table(graph, cluster)
        first = next(iter(plans.values()))
        return cls(costs, objective_of(first), {n: layout_of(costs, p) for n, p in plans.items()})

    def vector(self, cond: Condition) -> np.ndarray:
        """Every plan's figure under ``cond`` in ``names`` order (inf: cannot run), cached per condition: the
        estimate changes rarely and its conditions recur. Inference plans only (``_Terms``); read-only."""
        v = self._cache.get(cond)
        if v is None:
            slow, scale, absent = self._context(cond)
            o = self.objective
            if scale is self._ones:
                inv = scale
            elif len(cond.bandwidth) == 1 and cond.bandwidth[0][0] == (ALL, ALL):
                inv = [1.0 / scale[0]] * len(scale)
            else:
                inv = [1.0 / x for x in scale]
            v = self._terms.values(np.array(slow + inv + [1.0]), o.objective, o.microbatches, o.micro)
            if self._any_infeasible:
                v[self._infeasible] = math.inf
            if absent:
                v[self._uses[:, [self._dix[d] for d in absent if d in self._dix]].any(axis=1)] = math.inf
            v.flags.writeable = False
            if len(self._cache) >= CACHE:
                self._cache.clear()
            self._cache[cond] = v
        return v

    def clear_cache(self) -> None:
        """Forget every condition priced (benchmarks time a decision under a condition never seen)."""
        self._cache.clear()

    def price(self, cond: Condition) -> Prices:
        if self._shapes is None:
            return self.price_exact(cond)
        ctx = self._context(cond)
        return Prices(str(cond), tuple((name, self._one(name, ctx)) for name in self._shapes))

    def _context(self, cond: Condition):
        names = self.costs.devices
        sd = dict(cond.slowdown)
        slow = [sd.get(d, 1.0) for d in names]
        if not cond.bandwidth:
            scale = self._ones
        elif len(cond.bandwidth) == 1 and cond.bandwidth[0][0] == (ALL, ALL):  # one factor on every link
            scale = [cond.bandwidth[0][1]] * len(self._ones)
        else:
            scale = [cond.bandwidth_scale(a, b) for a in names for b in names]
        return slow, scale, set(cond.absent)

    def _one(self, name: str, ctx, bound: float = math.inf) -> float:
        sh = self._shapes[name]
        if not self._feasible[name] or (sh.devices & ctx[2]):
            return math.inf
        o = self.objective
        return _value(sh, ctx[0], ctx[1], o.objective, o.microbatches, o.micro, bound)

    def devices_of(self, name: str) -> set[str]:
        """The boards plan ``name`` runs on (a policy never picks one that uses an absent board)."""
        return self._devices[name]

    def value_of(self, name: str, cond: Condition) -> float:
        """One plan's figure under ``cond`` (lower is better; inf: cannot run)."""
        if self._shapes is None:
            return self.price_exact(cond).of(name)
        return self._one(name, self._context(cond))

    def values_of(self, cond: Condition, names) -> list[float]:
        """Several plans' figures under one ``cond`` (the condition's scales are built once)."""
        if self._shapes is None:
            prices = self.price_exact(cond)
            return [prices.of(n) for n in names]
        ctx = self._context(cond)
        return [self._one(n, ctx) for n in names]

    def best(self, cond: Condition, first: str | None = None) -> tuple[str, float]:
        """The best plan under ``cond`` and its figure (ties: the first name), pricing ``first`` first and
        stopping each other plan as soon as it is known to be worse (branch and bound)."""
        if self._shapes is None:
            return self.price_exact(cond).best()
        if first is None and self._terms is not None:
            v = self.vector(cond)
            i = int(v.argmin())  # ties: the first name (``names`` is sorted)
            return self.names[i], float(v[i])
        ctx = self._context(cond)
        order = self._order if first is None else [first] + [n for n in self._order if n != first]
        best_n, best_v = None, math.inf
        for name in order:
            v = self._one(name, ctx, best_v)
            if v < best_v or (v == best_v and best_n is not None and name < best_n) or best_n is None:
                best_n, best_v = name, v
        return best_n, best_v

    def price_exact(self, cond: Condition) -> Prices:
        """Through the planner's evaluator on the scaled CostTable (the reference the fast path is tested on)."""
        scaled = scale_costs(self.costs, cond)
        out = []
        for name, lay in self.layouts.items():
            if self._devices[name] & set(cond.absent):
                out.append((name, math.inf))
                continue
            ev = evaluate(scaled, lay, self.objective)
            out.append((name, float(ev.value(self.objective)) if ev.feasible else math.inf))
        return Prices(str(cond), tuple(out))


def margin(min_margin: float = MIN_MARGIN, switch_s: float = SWITCH_S, horizon_s: float = HORIZON_S) -> float:
    """Smallest relative gain worth a switch: the service a switch loses must be won back within the horizon."""
    return max(min_margin, switch_s / horizon_s)


def heuristic(pricer: Pricer, est: Estimate, current: str, last_change: int, *,
              min_gain: float | None = None) -> Decision:
    """Re-price every plan under ``est.condition`` and keep or leave ``current``.

    ``last_change``: the ``change_id`` of the previous switch (-1: none yet); no second switch is made
    for the same change, so noise that the estimator let through cannot make the runtime flap.
    """
    cond = est.condition
    if getattr(pricer, "_terms", None) is not None:  # every plan at once, cached per condition
        v = pricer.vector(cond)
        cur = float(v[pricer._ix[current]])
        if est.change_id <= last_change and not math.isinf(cur):
            return Decision(current, False, f"already switched for change {est.change_id}", cur, cur, est.change_id)
        i = int(v.argmin())
        best, bv = pricer.names[i], float(v[i])
        if bv == cur:
            best = current
    else:
        cur = pricer.value_of(current, cond)
        if est.change_id <= last_change and not math.isinf(cur):  # nothing new to act on: no re-pricing
            return Decision(current, False, f"already switched for change {est.change_id}", cur, cur, est.change_id)
        best, bv = pricer.best(cond, first=current)
    g = margin() if min_gain is None else min_gain
    if math.isinf(cur) and not math.isinf(bv):
        return Decision(best, best != current, f"{current} cannot run under {cond}", cur, bv, est.change_id)
    if best == current or math.isinf(bv) or bv >= cur:
        return Decision(current, False, "the current plan is the best priced", cur, min(bv, cur), est.change_id)
    gain = (cur - bv) / cur
    if gain < g:
        return Decision(current, False, f"{best} is only {gain * 100:.1f}% better (margin {g * 100:.1f}%)", cur, bv,
                        est.change_id)
    return Decision(best, True, f"{best} is {gain * 100:.1f}% better under {cond}", cur, bv, est.change_id)


def oracle(pricer: Pricer, cond: Condition) -> str:
    """The best plan under the true condition (benchmarks only: a runtime cannot know it)."""
    return pricer.best(cond)[0]


def policy_for(name: str, folder=None):
    """The decision function for ``--adapt NAME``, all with ``heuristic``'s signature
    ``(pricer, estimate, current, last_change) -> Decision``: ``heuristic``, or ``rl`` (the table trained for the
    family in ``folder`` by `edgeplan adapt-train`, refused if it was trained for another family)."""
    if name == "heuristic":
        return heuristic
    if name == "rl":
        from edgeplan.adapt import rl

        if folder is None:
            raise PlanError("--adapt rl: needs the family folder that holds rl-policy.json")
        return rl.load(folder)
    raise PlanError(f"--adapt {name!r}: not a policy (policies: heuristic, rl; or off)")
