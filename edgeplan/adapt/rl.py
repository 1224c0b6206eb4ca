"""The learned policy (issue 12 item 4, ``--adapt rl``): a contextual bandit over a family's plans.

Context: the Estimator's committed condition, binned to powers of two (bandwidth scales 1, 1/2, 1/4, ...;
slowdowns 1, 2, 4, ...; absent boards; links in one canonical form). Arms: the family's plans (never one
that uses a board the estimate says is absent). Reward of an epoch: the samples per second the running plan
serves under the *true* condition, over what the best nominal plan serves at nominal conditions. The table
holds each (context, plan)'s mean reward: what running that plan is worth when the estimate reads so, which
includes what the estimate gets wrong (its lag after a change; a board the running plan stopped using,
whose recovery it cannot see).

Training runs in ``simulate.Sim`` on seeded random traces (``simulate.random_trace``): each epoch the
policy acts as at run time, except that with probability epsilon (decaying) it switches to a random plan;
only the running plan's reward is observed (bandit feedback). The same seed gives the same table bit for
bit (one numpy Generator drives traces, noise and exploration; floats are stored to 6 significant digits,
and the trained ``Policy`` is the one its file holds).

Run time is greedy with the heuristic's call signature and rules: leave the current plan only for a plan
whose learned value is better by more than ``policy.margin()`` (the switch's cost over the horizon), and at
most once per committed change of the estimate (no flapping). A context never seen in training takes the
nearest trained context's row (L1 distance in log2 factors; precomputed at load for every context without a
pair term, so such a first decision is a lookup). A factor that expired unmeasured (``Estimate.expired``) keeps
its context apart from measured ones, and the change that expires it (a probe: should the runtime go back and
re-measure?) is decided by pricing, as the heuristic does, in training as at run time.

The policy file (``rl-policy.json`` next to ``family.json``) records the family's digest; a file trained
for another family is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeplan import jsonio
from edgeplan.adapt.estimate import Estimate
from edgeplan.adapt.policy import SWITCH_S, Decision, Pricer
from edgeplan.errors import PlanError
from edgeplan.planner.family import ALL, FAMILY_FILE, NOMINAL, Condition, parse_condition

SCHEMA_VERSION = 1
POLICY_FILE = "rl-policy.json"
EPISODES = 300
EPISODE_S = 120.0
EPSILON = (0.3, 0.02)  # exploration, first and last episode (linear)
ALPHA_MIN = 0.02  # learning-rate floor (1 / visits above it): a mean of the recent ~50 epochs at most
ABSENT_DISTANCE = 3.0  # an absent-board mismatch counts like an 8x factor when finding the nearest state
HYSTERESIS = 0.25  # log2 units past a bin's edge a factor must move before its context leaves the bin (see Sticky)
GRID_LIMIT = 20000  # at load, the nearest trained context of every pair-free context is precomputed up to this many
BW_BINS, SLOW_BINS = (-4, 1), (-1, 3)  # log2 ranges of state_condition's bins


def family_digest(family) -> str:
    """What ties a policy to its family: the family table's canonical digest (plans, conditions, cluster)."""
    return jsonio.sha256_of(family.to_json())


def _bin(x: float, lo: int, hi: int) -> float:
    return float(2.0 ** min(max(round(math.log2(x)), lo), hi))


def _grid_key(cond: Condition, expired: tuple[str, ...], devices=None):
    """The binned context of a condition with no pair term and no expired factor, as a tuple (cheaper than its
    text); None otherwise. ``devices``: keep only these boards' terms (a board no trained context names adds the
    same to every distance of the nearest-context search, so dropping it keeps the same nearest context)."""
    if expired:
        return None
    base = 1.0
    for p, s in cond.bandwidth:
        if p != (ALL, ALL):
            return None
        base = s
    slow = ((d, _bin(f, *SLOW_BINS)) for d, f in cond.slowdown if devices is None or d in devices)
    return (_bin(base, *BW_BINS), tuple(x for x in slow if x[1] != 1.0),
            cond.absent if devices is None else tuple(d for d in cond.absent if d in devices))


class Sticky:
    """Bins with hysteresis (a Schmitt trigger per factor), so that the context does not oscillate between two
    bins. A factor's reading can depend on the plan that measures it (on the testbed, a board under a CPU quota
    reads 2.7x slow while it runs a long stage and 1.3x while it runs a short one that fits in the quota period):
    with plain rounding the table flips plan-0 -> plan-1 -> plan-0 on every such reading. Here a factor leaves
    the bin it was last put in only when it moves ``HYSTERESIS`` (log2) past the bin's edge: 1.3 stays in the 2x
    bin, 1.1 or nominal leaves it. One per run (training: per episode); ``apply`` is idempotent for a repeated
    condition."""

    def __init__(self, hysteresis: float = HYSTERESIS):
        self.reach = 0.5 + hysteresis
        self.bins: dict = {}  # factor key -> log2 of the bin it was last put in

    def _exp(self, key, x: float) -> int:
        """The exponent of the bin ``x`` is put in (log2, unclamped)."""
        lx = math.log2(x)
        prev = self.bins.get(key)
        if prev is None or abs(lx - prev) >= self.reach:
            prev = self.bins[key] = round(lx)
        return prev

    def _one(self, key, x: float) -> float:
        return 2.0 ** self._exp(key, x)

    def apply(self, cond: Condition) -> Condition:
        """``cond`` with every factor replaced by its sticky bin (factors absent from it read nominal: they
        leave their bins, since nominal is a whole bin or more away from any other bin)."""
        if not cond.bandwidth and not cond.slowdown:
            self.bins.clear()
            return cond
        keys = set()
        bw = []
        for p, s in cond.bandwidth:
            keys.add(("bw", p))
            bw.append((p, self._one(("bw", p), s)))
        sl = []
        for d, f in cond.slowdown:
            keys.add(("slow", d))
            sl.append((d, self._one(("slow", d), f)))
        for k in [k for k in self.bins if k not in keys]:
            del self.bins[k]
        return Condition(bandwidth=tuple(bw), slowdown=tuple(sl), absent=cond.absent)

    def estimate(self, est: Estimate) -> Estimate:
        return Estimate(self.apply(est.condition), est.change_id, est.expired, est.probe)

    def grid_key(self, cond: Condition, devices) -> tuple | None:
        """``_grid_key(self.apply(cond), (), devices)`` without building a Condition (the bins move the same); None,
        bins untouched, for a condition with a pair term (``apply`` handles it). ``_exp`` inlined: this runs in
        every rl decision, and a decision in a context never seen runs with cold caches, where every call and
        every object touched costs (bench_adapt_decision's ``rl cold``)."""
        bw, sl = cond.bandwidth, cond.slowdown
        for p, _ in bw:
            if p != (ALL, ALL):
                return None
        absent = tuple(d for d in cond.absent if d in devices) if cond.absent else ()
        bins = self.bins
        if not bw and not sl:
            bins.clear()
            return (1.0, (), absent)
        reach, log2 = self.reach, math.log2
        base, slow = 1.0, []
        for p, x in bw:
            k, lx = ("bw", p), log2(x)
            e = bins.get(k)
            if e is None or abs(lx - e) >= reach:
                e = bins[k] = round(lx)
            base = 2.0 ** (BW_BINS[0] if e < BW_BINS[0] else BW_BINS[1] if e > BW_BINS[1] else e)
        for d, f in sl:
            k, lx = ("slow", d), log2(f)
            e = bins.get(k)
            if e is None or abs(lx - e) >= reach:
                e = bins[k] = round(lx)
            if d in devices:
                e = SLOW_BINS[0] if e < SLOW_BINS[0] else SLOW_BINS[1] if e > SLOW_BINS[1] else e
                if e:
                    slow.append((d, 2.0 ** e))
        if len(bins) > len(bw) + len(sl):  # factors gone from cond leave their bins
            keys = {("bw", p) for p, _ in bw} | {("slow", d) for d, _ in sl}
            for k in [k for k in bins if k not in keys]:
                del bins[k]
        return (base, tuple(slow), absent)


def state_condition(cond: Condition) -> Condition:
    """The estimate as the table sees it: factors rounded to powers of two (bandwidth 2^-4..2, slowdown
    2^-1..2^3), links in one canonical form: each named pair's effective scale is binned, the all-links term
    is the most common binned scale (ties: the lower) and pairs that differ from it keep a term."""
    pairs = [p for p, _ in cond.bandwidth if p != (ALL, ALL)]
    base = _bin(math.prod(s for p, s in cond.bandwidth if p == (ALL, ALL)), -4, 1)
    eff = {p: _bin(cond.bandwidth_scale(*p), -4, 1) for p in pairs}
    if eff:
        vals = [base] + list(eff.values())
        base = min(set(vals), key=lambda v: (-vals.count(v), v))
    bw = [((ALL, ALL), base)] + [(p, e / base) for p, e in sorted(eff.items()) if e != base]
    return Condition(bandwidth=tuple(bw), slowdown=tuple((d, _bin(f, -1, 3)) for d, f in cond.slowdown),
                     absent=cond.absent)


UNMEASURED = " unmeasured:"


def context(est: Estimate) -> str:
    """The table's context of an estimate: its binned condition, plus the factors that read nominal only because
    they expired unmeasured (``Estimate.expired``: the truth may still be off there, so the values learned
    for such a context are what probing that board or link is worth)."""
    c = str(state_condition(est.condition))
    return f"{c}{UNMEASURED}{','.join(est.expired)}" if est.expired else c


def _text_vector(text: str) -> dict[str, float]:
    cond, _, expired = text.partition(UNMEASURED)
    v = _vector(parse_condition(cond))
    v.update({f"unmeasured:{k}": 1.0 for k in expired.split(",") if k})
    return v


def _vector(cond: Condition) -> dict[str, float]:
    v = {f"bw:{a}/{b}": math.log2(s) for (a, b), s in cond.bandwidth}
    v.update({f"slow:{d}": math.log2(f) for d, f in cond.slowdown})
    v.update({f"absent:{d}": ABSENT_DISTANCE for d in cond.absent})
    return v


def _greedy(values, counts) -> int:
    """The best tried arm (first of equals; -1: none tried): ``_choose`` with every plan runnable, before the
    current plan's margin. Precomputed per row, so a decision compares two values instead of scanning the row."""
    best, bv = -1, -math.inf
    for i, (v, n) in enumerate(zip(values, counts, strict=True)):
        if n and v > bv:
            best, bv = i, v
    return best


def _choose(values, counts, cur: int, ok, gain: float) -> int:
    """The greedy arm: the best tried, runnable plan; the current one unless the best beats it by ``gain``
    (relative). -1: none tried and runnable."""
    best, bv = -1, -math.inf
    for i, (v, n) in enumerate(zip(values, counts, strict=True)):
        if n and ok[i] and v > bv:
            best, bv = i, v
    if best < 0 or best == cur:
        return best
    if cur >= 0 and ok[cur] and counts[cur] and bv <= values[cur] * (1.0 + gain):
        return cur
    return best


def _probe(pricer: Pricer, est: Estimate, current: str, last_change: int) -> Decision:
    """A change that expired factors unmeasured (``Estimate.probe``) is decided by pricing, as the
    heuristic does: whether to go back and re-measure a board or link is worth what the cost model says it
    gains if it has recovered; a myopic table learns only that probing often finds it still slow, and would
    never come back."""
    from edgeplan.adapt.policy import heuristic

    d = heuristic(pricer, est, current, last_change)
    return Decision(d.plan, d.switch, f"probe ({', '.join(est.probe)} unmeasured): {d.reason}", d.current_value,
                    d.best_value, d.change_id)


@dataclass(frozen=True)
class Policy:
    """A trained table; call it like ``heuristic``: ``policy(pricer, estimate, current, last_change)``."""

    family_sha256: str
    model: str
    cluster: str
    plans: tuple[str, ...]  # the arms, sorted
    q: tuple[tuple[str, tuple[float, ...]], ...]  # context -> mean reward per plan, sorted by context
    visits: tuple[tuple[str, tuple[int, ...]], ...]  # context -> epochs observed per plan
    seed: int
    episodes: int
    episode_s: float
    epoch_s: float
    gain: float  # relative value gain a switch needs (policy.margin() at training)
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self):
        counts = dict(self.visits)
        rows = {c: (v, counts[c]) for c, v in self.q}
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_vectors", {c: _text_vector(c) for c in rows})
        object.__setattr__(self, "_index", {p: i for i, p in enumerate(self.plans)})
        object.__setattr__(self, "_near", {})  # Condition or context text -> row (see ``row``)
        keys = sorted({k for vec in self._vectors.values() for k in vec})
        names = sorted(self._vectors)
        m = np.array([[self._vectors[n].get(k, 0.0) for k in keys] for n in names]).reshape(len(names), len(keys))
        object.__setattr__(self, "_matrix", (keys, names, m))  # for the nearest-context search
        keys_ix = {k: i for i, k in enumerate(keys)}
        object.__setattr__(self, "_keys_ix", keys_ix)
        object.__setattr__(self, "_d0", np.abs(m).sum(axis=1))  # distance of every trained context to nominal
        object.__setattr__(self, "_cols", {})  # (key, value) -> |value - m[:, key]| - |m[:, key]|
        object.__setattr__(self, "_grid_devs", frozenset())
        object.__setattr__(self, "_grid", self._precompute())
        object.__setattr__(self, "_sticky", Sticky())  # run-time bins (see Sticky); reset by a new run
        object.__setattr__(self, "_seen_change", -1)

    def _precompute(self) -> dict:
        """Grid key -> the row of every context with no pair term (all-links bin x each named board's slowdown bin
        x each set of absent boards) -> the row of its nearest trained context, so that the first decision in a
        context the table never saw is a lookup. Empty if the grid would exceed ``GRID_LIMIT``."""
        import itertools

        devs = sorted({k.split(":", 1)[1] for vec in self._vectors.values() for k in vec
                       if k.startswith(("slow:", "absent:"))})
        nb, ns = BW_BINS[1] - BW_BINS[0] + 1, SLOW_BINS[1] - SLOW_BINS[0] + 1
        if not self._rows or nb * ns ** len(devs) * 2 ** len(devs) > GRID_LIMIT:
            return {}
        object.__setattr__(self, "_grid_devs", frozenset(devs))
        keys, names, m = self._matrix
        grid, vecs = [], []
        for b in range(BW_BINS[0], BW_BINS[1] + 1):
            for sl in itertools.product(range(SLOW_BINS[0], SLOW_BINS[1] + 1), repeat=len(devs)):
                for mask in range(2 ** len(devs)):
                    cond = Condition(bandwidth=(((ALL, ALL), 2.0 ** b),),
                                     slowdown=tuple((d, 2.0 ** e) for d, e in zip(devs, sl, strict=True)),
                                     absent=tuple(d for i, d in enumerate(devs) if mask >> i & 1))
                    grid.append((_grid_key(cond, ()), str(cond)))  # binned already: its text is its context
                    v = _vector(cond)
                    vecs.append([v.get(k, 0.0) for k in keys])
        g = np.array(vecs)
        out, empty = {}, ((0.0,) * len(self.plans), (0,) * len(self.plans))
        for lo in range(0, len(grid), 32):  # chunks bound the broadcast's memory (and its cache footprint)
            near = np.argmin(np.abs(g[lo:lo + 32, None, :] - m[None, :, :]).sum(axis=2), axis=1)
            for (key, text), i in zip(grid[lo:lo + 32], near, strict=True):
                out[key] = (text, names[int(i)])
        best = {n: _greedy(*r) for n, r in self._rows.items()}
        return {k: (*self._rows.get(n, empty), c, n, best.get(n, -1)) for k, (c, n) in out.items()}

    @property
    def __name__(self) -> str:  # reports name a policy by its function's name
        return "rl"

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "kind": "edgeplan rl policy",
                "family_sha256": self.family_sha256, "model": self.model, "cluster": self.cluster,
                "plans": list(self.plans), "q": {k: list(v) for k, v in self.q},
                "visits": {k: list(v) for k, v in self.visits}, "seed": self.seed, "episodes": self.episodes,
                "episode_s": self.episode_s, "epoch_s": self.epoch_s, "gain": self.gain}

    @classmethod
    def from_json(cls, d: dict, source: str = "policy") -> Policy:
        if d.get("schema_version") != SCHEMA_VERSION or d.get("kind") != "edgeplan rl policy":
            raise PlanError(f"{source}: not an edgeplan rl policy of schema_version {SCHEMA_VERSION}; "
                            "re-train it with `edgeplan adapt-train FAMILY_FOLDER`")
        try:
            n = len(d["plans"])
            q = tuple((k, tuple(float(x) for x in v)) for k, v in sorted(d["q"].items()))
            visits = tuple((k, tuple(int(x) for x in v)) for k, v in sorted(d["visits"].items()))
            if [k for k, _ in q] != [k for k, _ in visits] or any(len(v) != n for _, v in q + visits):
                raise ValueError(f"q and visits must have the same contexts and {n} values each")
            return cls(family_sha256=d["family_sha256"], model=d["model"], cluster=d["cluster"],
                       plans=tuple(d["plans"]), q=q, visits=visits, seed=int(d["seed"]), episodes=int(d["episodes"]),
                       episode_s=float(d["episode_s"]), epoch_s=float(d["epoch_s"]), gain=float(d["gain"]))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{source}: not a valid rl policy file ({e}); re-train it with `edgeplan adapt-train`") \
                from e

    def row(self, est: Estimate) -> tuple[tuple[float, ...], tuple[int, ...], str, str, int]:
        """(values, visits, context, trained context, greedy arm) of ``cond``: its binned text, the trained context
        the row comes from (the nearest when never seen) and ``_greedy`` of the row. Cached per condition: a
        decision is a dict lookup."""
        key = (est.condition, est.expired)
        hit = self._near.get(key)
        if hit is None:
            g = self._grid.get(_grid_key(est.condition, est.expired, self._grid_devs)) if self._grid else None
            if g is not None:  # precomputed at load: no search
                hit = self._near[key] = g
                return hit
            c = context(est)
            hit = self._near.get(c)  # another estimate in the same context
            if hit is None:
                near = c
                if c not in self._rows and self._rows:
                    v = _vector(state_condition(est.condition))
                    v.update({f"unmeasured:{k}": 1.0 for k in est.expired})
                    near = self._nearest(v)
                vals, counts = self._rows.get(near, ((0.0,) * len(self.plans), (0,) * len(self.plans)))
                hit = self._near[c] = (vals, counts, c, near, _greedy(vals, counts))
            self._near[key] = hit
        return hit

    def _nearest(self, v: dict[str, float]) -> str:
        """The trained context at the least L1 distance (ties: the first by text). A factor no trained context
        names adds the same to every distance, so only the trained contexts' factors are compared."""
        keys, names, m = self._matrix
        d = self._d0  # distance to nominal, corrected per factor the query names (few): no full matrix pass
        for k, x in v.items():
            i = self._keys_ix.get(k)
            if i is None or x == 0.0:
                continue
            col = self._cols.get((i, x))
            if col is None:
                col = self._cols[(i, x)] = np.abs(x - m[:, i]) - np.abs(m[:, i])
            d = d + col
        return names[int(np.argmin(d))]

    def reset(self) -> None:
        """Forget the run-time bins (a new run; also done when the estimate's change count goes back)."""
        self._sticky.bins.clear()
        object.__setattr__(self, "_seen_change", -1)

    def __call__(self, pricer: Pricer, est: Estimate, current: str, last_change: int) -> Decision:
        if est.change_id < self._seen_change:  # another run's estimator: its bins are not this run's
            self.reset()
        object.__setattr__(self, "_seen_change", est.change_id)
        cond = est.condition
        gone = cond.absent
        runs = not (gone and set(gone) & pricer.devices_of(current))
        # the table decides without the cost model: a Decision's figures are nan (inf: the current plan cannot run)
        cur = math.nan if runs else math.inf
        if est.change_id <= last_change and runs:
            return Decision(current, False, f"already switched for change {est.change_id}", cur, cur, est.change_id)
        if est.probe:
            return _probe(pricer, est, current, last_change)
        hit = None
        if self._grid and not est.expired:
            key = self._sticky.grid_key(cond, self._grid_devs)
            hit = None if key is None else self._grid.get(key)
        vals, counts, state, near, a = hit or self.row(self._sticky.estimate(est))
        ci = self._index.get(current, -1)
        if gone:
            a = _choose(vals, counts, ci, [not (set(gone) & pricer.devices_of(p)) for p in self.plans], self.gain)
        elif a >= 0 and a != ci and ci >= 0 and counts[ci] and vals[a] <= vals[ci] * (1.0 + self.gain):
            a = ci  # _choose with every plan runnable, from the row's precomputed greedy arm
        seen = "" if near == state else f" (unseen: nearest trained {near})"
        if a < 0 or self.plans[a] == current:
            why = f"no trained plan can run under {state}" if a < 0 else f"the table keeps {current} under {state}"
            return Decision(current, False, why + seen, cur, cur, est.change_id)
        plan = self.plans[a]
        return Decision(plan, True, f"the table picks {plan} under {state} (value {vals[a]:.3g})" + seen,
                        cur, math.nan, est.change_id)


def train(world, family_sha256: str, *, seed: int = 0, episodes: int = EPISODES, episode_s: float = EPISODE_S,
          epoch_s: float | None = None, switch_s: float = SWITCH_S, model: str = "", cluster: str = "",
          progress=None) -> Policy:
    """The bandit trained in the simulator (``world``: simulate.World) on ``episodes`` random traces."""
    from edgeplan.adapt import simulate as sm
    from edgeplan.adapt.policy import margin

    epoch_s = sm.EPOCH_S if epoch_s is None else epoch_s
    gain = margin()
    rng = np.random.default_rng(seed)
    plans = tuple(sorted(world.plans))
    n_a = len(plans)
    index = {p: i for i, p in enumerate(plans)}
    norm = world.figures(world.static, NOMINAL).throughput
    q: dict[str, list[float]] = {}
    visits: dict[str, list[int]] = {}
    runnable: dict[str, list[bool]] = {}

    def ok_for(cond: Condition) -> list[bool]:
        key = str(cond)
        if key not in runnable:
            gone = set(cond.absent)
            runnable[key] = [not (gone & world.pricer.devices_of(p)) for p in plans]
        return runnable[key]

    for ep in range(episodes):
        eps = EPSILON[0] + (EPSILON[1] - EPSILON[0]) * ep / max(episodes - 1, 1)
        trace = sm.random_trace(world.cluster, rng, episode_s, world.head)
        sim = sm.Sim(world, trace, seed=int(rng.integers(2 ** 31)), epoch_s=epoch_s, switch_s=switch_s,
                     start=plans[int(rng.integers(n_a))])
        acted = -1  # change_id of the last greedy switch (the run-time rule)
        sticky = Sticky()  # the run-time bins, so the table learns the contexts it will be asked about
        while not sim.done:
            est = sim.estimate
            c = context(sticky.estimate(est))
            vals = q.setdefault(c, [0.0] * n_a)
            cnt = visits.setdefault(c, [0] * n_a)
            ok = ok_for(est.condition)
            cur = index[sim.current]
            a = cur
            if rng.random() < eps:
                choices = [i for i in range(n_a) if ok[i]]
                a = choices[int(rng.integers(len(choices)))] if choices else cur
            elif est.probe and (est.change_id > acted or not ok[cur]):  # as at run time: priced, not learned
                d = _probe(world.pricer, est, plans[cur], acted)
                if d.switch:
                    a, acted = index[d.plan], est.change_id
            elif est.change_id > acted or not ok[cur]:
                g = _choose(vals, cnt, cur, ok, gain)
                if g >= 0 and g != cur:
                    a, acted = g, est.change_id
            step = sim.step(plans[a])
            fig = world.figures(step.plan, sm.condition_at(trace, step.t_s + epoch_s / 2, world.cluster))
            cnt[a] += 1
            vals[a] += max(ALPHA_MIN, 1.0 / cnt[a]) * (fig.throughput / norm - vals[a])
        if progress is not None:
            progress(ep + 1, episodes)
    pol = Policy(family_sha256=family_sha256, model=model, cluster=cluster, plans=plans,
                 q=tuple((k, tuple(v)) for k, v in sorted(q.items())),
                 visits=tuple((k, tuple(visits[k])) for k in sorted(q)), seed=seed, episodes=episodes,
                 episode_s=episode_s, epoch_s=epoch_s, gain=gain)
    import json

    return Policy.from_json(json.loads(jsonio.dumps(pol.to_json())))  # what the caller holds is what the file holds


def family_plans(folder) -> tuple:
    """(Family, {plan file: Plan}) of a plan family folder (``plan-K.json``) or its compiled artifacts
    (``plan-K/plan.json``)."""
    from edgeplan.planner.family import Family, load_family
    from edgeplan.planner.plan import load as load_plan

    folder = Path(folder)
    if all((folder / f).is_file() for f in _plan_files(folder)):
        return load_family(folder)
    fam = Family.from_json(jsonio.read(folder / FAMILY_FILE), source=str(folder / FAMILY_FILE))
    plans = {}
    for f, _ in fam.plans:
        path = folder / Path(f).stem / "plan.json"
        if not path.is_file():
            raise PlanError(f"{folder}: neither {f} nor {Path(f).stem}/plan.json; give the family folder from "
                            "`edgeplan plan --variants` or its `edgeplan compile` output")
        plans[f] = load_plan(str(path))
    return fam, plans


def _plan_files(folder: Path) -> list[str]:
    from edgeplan.planner.family import Family

    path = folder / FAMILY_FILE
    if not path.is_file():
        raise PlanError(f"{folder}: no {FAMILY_FILE}; make a family with `edgeplan plan ... --variants ... "
                        f"--out {folder}/`")
    return [f for f, _ in Family.from_json(jsonio.read(path), source=str(path)).plans]


def train_folder(folder, *, model: str | None = None, cluster_file=None, seed: int = 0, episodes: int = EPISODES,
                 episode_s: float = EPISODE_S, progress=None) -> Policy:
    """Train the policy for the family in ``folder``. The LayerGraph and cluster: a compiled family's
    ``graph.json`` and ``cluster.json`` (what its controller prices with), else the model and cluster file its
    plans recorded (``model``/``cluster_file`` override both); the cluster must be the family's (same sha256)."""
    from edgeplan.adapt import simulate as sm

    folder = Path(folder)
    fam, plans = family_plans(folder)
    first = next(iter(plans.values()))
    if model is None and cluster_file is None and (folder / "graph.json").is_file() \
            and (folder / "cluster.json").is_file():
        from edgeplan.graph.model import LayerGraph
        from edgeplan.profiles.model import Cluster

        graph = LayerGraph.from_json(jsonio.read(folder / "graph.json"))
        cluster, path = Cluster.from_json(jsonio.read(folder / "cluster.json")), folder / "cluster.json"
    else:
        from edgeplan.graph.load import build
        from edgeplan.profiles.load import load_cluster

        spec = model or first.model_ref
        path = cluster_file or first.cluster_path
        if not spec or not path:
            raise PlanError(f"{folder}: its plans do not record the {'model' if not spec else 'cluster file'}; "
                            "give --model and --cluster")
        cluster = load_cluster(Path(path))
        graph = None
    if cluster.digest() != fam.cluster_sha256:
        raise PlanError(f"{path}: not the cluster the family in {folder} was planned for (sha256 "
                        f"{cluster.digest()[:12]}, family {fam.cluster_sha256[:12]}); give that cluster file")
    if graph is None:
        graph = build(spec, first.input_shape if not model else None).graph
    world = sm.World.from_family(graph, cluster, plans)
    return train(world, family_digest(fam), seed=seed, episodes=episodes, episode_s=episode_s, model=fam.model,
                 cluster=fam.cluster, progress=progress)


def save(folder, policy: Policy) -> Path:
    return jsonio.write(Path(folder) / POLICY_FILE, policy.to_json())


def load(folder) -> Policy:
    """The policy trained for the family in ``folder`` (a plan family or its compiled artifacts)."""
    from edgeplan.planner.family import Family

    folder = Path(folder)
    path = folder / POLICY_FILE
    if not path.is_file():
        raise PlanError(f"{folder}: no {POLICY_FILE}; train one with `edgeplan adapt-train {folder} --model MODEL "
                        "--cluster CLUSTER` (or use --adapt heuristic)")
    pol = Policy.from_json(jsonio.read(path), source=str(path))
    fam_path = folder / FAMILY_FILE
    if not fam_path.is_file():
        raise PlanError(f"{folder}: no {FAMILY_FILE} beside {POLICY_FILE}; an rl policy runs with its plan family")
    fam = Family.from_json(jsonio.read(fam_path), source=str(fam_path))
    digest = family_digest(fam)
    if digest != pol.family_sha256:
        raise PlanError(f"{path}: trained for another plan family (sha256 {pol.family_sha256[:12]}, {pol.model} on "
                        f"{pol.cluster}), not {fam_path} (sha256 {digest[:12]}, {fam.model} on {fam.cluster}); "
                        f"re-train with `edgeplan adapt-train {folder}`")
    return pol

