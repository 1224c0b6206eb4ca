"""A cluster under a scripted or random trace, simulated from the cost model (issue 12 items 4 and 6).

The policies (``heuristic``, ``rl``, ``oracle``, ``static``) are compared, and the learned one is trained,
here rather than on boards: the cost model is the truth, so a run takes milliseconds and is seeded.

Each epoch of ``epoch_s`` seconds:

1. the policy sees the Estimator's latest ``Estimate`` and picks the plan to run (``Decision``);
2. the plan serves the evaluator's throughput under the *true* condition of the epoch (the trace's state at
   its middle); a switch pauses service for ``switch_s`` (drain + first micro-batch of the new plan; the
   policies' own assumption, ``policy.SWITCH_S``). A plan that uses an absent board serves nothing, and the
   requests in flight on it when the board goes down are lost (Little's law: throughput x latency);
3. the running plan's workers report what they measured, in the head's ``status()`` format: stage times =
   prediction x the true slowdown, timed sends = nominal bandwidth x the true scale, each with log-normal
   noise; links report the monitor's timed-send counters (their delta is the epoch's throughput) and its
   EWMA (``THROUGHPUT_ALPHA`` per send; ``timed=False`` reports only that, as a monitor before the counters
   did, so a link change shows with the EWMA's lag). Only boards and links the running plan uses are measured.

``Trace`` objects come from ``edgeplan.testbed.trace`` (the shipped YAML files) or ``random_trace`` (seeded,
for training). ``run`` returns every epoch's figures; ``Summary`` reduces them to what the benchmark prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeplan.adapt.estimate import Estimate, Estimator
from edgeplan.adapt.policy import SWITCH_S, Decision, Pricer
from edgeplan.planner.family import ALL, NOMINAL, Condition

EPOCH_S = 0.5  # one status, one decision
NOISE = 0.05  # sigma of the log-normal noise on every measured figure
RECOVERED = 0.9  # "recovered": an epoch's throughput within 10% of the best plan's under the true condition


def condition_at(trace, t: float, cluster) -> Condition:
    """The true condition at ``t`` seconds, as `edgeplan emulate --trace` applies it: scales are relative to
    nominal; ``link: all`` resets pairs set before it; a pair in Mbit/s becomes a scale of its nominal link."""
    all_s, pairs, cpu, down = 1.0, {}, {}, set()
    for ev in trace.events:
        if ev.at_s > t:
            break
        if ev.kind == "link" and ev.link is None:
            all_s = ev.scale if ev.scale is not None else ev.bandwidth_bps / cluster.default_link.bandwidth
            pairs.clear()
        elif ev.kind == "link":
            a, b = ev.link
            pairs[tuple(sorted((a, b)))] = ev.scale if ev.scale is not None else \
                ev.bandwidth_bps / cluster.link(a, b).bandwidth
        elif ev.kind == "cpu":
            cpu[ev.device] = 1.0 / ev.scale
        else:
            (down.add if ev.down else down.discard)(ev.device)
    bw = [((ALL, ALL), all_s)] + [(p, s / all_s) for p, s in sorted(pairs.items())]
    return Condition(bandwidth=tuple(bw), slowdown=tuple(sorted(cpu.items())), absent=tuple(sorted(down)))


def random_trace(cluster, rng: np.random.Generator, duration_s: float, head: str, *, gap_s=(6.0, 30.0),
                 link_scales=(0.5, 0.25, 0.125), cpu_scales=(0.5, 0.33, 0.25), p_nominal: float = 0.4,
                 p_down: float = 0.05):
    """A seeded trace shaped like the shipped ones: every ``gap_s`` (uniform) the cluster goes back to nominal
    (``p_nominal``) or takes a new disturbance of one or two factors (the previous one ends): every link's
    scale, a board's CPU quota, one pair's scale, or a board down (never the head)."""
    from edgeplan.testbed.trace import Event, Trace

    boards = [d.name for d in cluster.devices]
    others = [d for d in boards if d != head]
    events, t, down, hogged, pairs, links = [], float(rng.uniform(*gap_s)), set(), set(), set(), False
    while t < duration_s:
        # end the previous disturbance
        if links or pairs:
            events.append(Event(t, "link", None, scale=1.0))
        events += [Event(t, "cpu", device=d, scale=1.0) for d in sorted(hogged)]
        events += [Event(t, "down", device=d, down=False) for d in sorted(down)]
        down, hogged, pairs, links = set(), set(), set(), False
        if rng.random() >= p_nominal:
            for _ in range(1 + int(rng.random() < 0.3)):
                r = float(rng.random())
                if r < 0.4:
                    links = True
                    events.append(Event(t, "link", None, scale=float(rng.choice(link_scales))))
                elif r < 0.8:
                    d = str(rng.choice(boards))
                    hogged.add(d)
                    events.append(Event(t, "cpu", device=d, scale=float(rng.choice(cpu_scales))))
                elif r < 1.0 - p_down or not others:
                    a, b = rng.choice(len(boards), 2, replace=False)
                    pairs.add((a, b))
                    events.append(Event(t, "link", (boards[a], boards[b]), scale=float(rng.choice(link_scales))))
                else:
                    d = str(rng.choice(others))
                    down.add(d)
                    events.append(Event(t, "down", device=d, down=True))
        t += float(rng.uniform(*gap_s))
    return Trace(f"random trace ({len(events)} events)", tuple(events), duration_s)


@dataclass(frozen=True)
class Figures:
    """One plan under one condition, as the evaluator predicts it (throughput 0: it cannot run)."""

    throughput: float  # samples / s
    latency_s: float
    energy_j: float  # per sample


class World:
    """The family's plans on the nominal cluster, and their figures under any condition (cached by text)."""

    def __init__(self, pricer: Pricer, plans: dict, cluster):
        self.pricer, self.plans, self.cluster = pricer, dict(plans), cluster
        self.head = next(iter(plans.values())).head
        self.static = pricer.best(NOMINAL)[0]  # the best nominal plan
        self._cache: dict[tuple[str, str], Figures] = {}
        self._best: dict[str, str] = {}
        self.devices = sorted({r.device for p in plans.values() for s in p.stages for r in s.replicas})

    @classmethod
    def from_family(cls, graph, cluster, plans: dict) -> World:
        return cls(Pricer.from_family(graph, cluster, plans), plans, cluster)

    def figures(self, plan: str, cond: Condition) -> Figures:
        key = (plan, str(cond))
        f = self._cache.get(key)
        if f is None:
            from edgeplan.planner.costmodel import evaluate
            from edgeplan.planner.family import scale_costs

            p = self.pricer
            if math.isinf(p.value_of(plan, cond)):
                f = Figures(0.0, math.inf, math.inf)
            else:
                ev = evaluate(scale_costs(p.costs, cond), p.layouts[plan], p.objective)
                f = Figures(float(ev.throughput), float(ev.latency_s), float(ev.energy_j))
            self._cache[key] = f
        return f

    def best(self, cond: Condition) -> str:
        """The oracle's plan: the best priced under the true condition."""
        key = str(cond)
        if key not in self._best:
            self._best[key] = self.pricer.best(cond)[0]
        return self._best[key]


@dataclass(frozen=True)
class Step:
    """One epoch."""

    t_s: float  # start
    condition: str  # the true one
    plan: str  # what ran (after this epoch's decision)
    served: float  # samples served in the epoch
    latency_s: float  # of one request (inf: nothing served)
    energy_j: float  # per sample
    best_throughput: float  # the oracle plan's under the true condition (no switch)
    switched: bool
    reason: str
    lost: float  # requests in flight on a board that went down in this epoch


class Sim:
    """One run: ``decide`` with the latest ``estimate``, then ``step(plan)`` advances one epoch."""

    def __init__(self, world: World, trace, *, seed: int = 0, epoch_s: float = EPOCH_S, noise: float = NOISE,
                 switch_s: float = SWITCH_S, start: str | None = None, duration_s: float | None = None,
                 timed: bool = True):
        from edgeplan.runtime.monitor import THROUGHPUT_ALPHA

        self.world, self.trace, self.epoch_s, self.noise, self.switch_s = world, trace, epoch_s, noise, switch_s
        self.rng = np.random.default_rng(seed)
        self.duration_s = float(duration_s if duration_s is not None else trace.duration_s)
        self.current = start or world.static
        self.t = 0.0
        self.estimator = Estimator(world.cluster, head=world.head)
        self.estimate: Estimate = self.estimator.estimate()
        self.last_change = -1  # change_id of the last switch (the policies' ``last_change``)
        self._keep = 1.0 - THROUGHPUT_ALPHA
        self._blocked = 0.0  # switch pause still to serve
        self._acc: dict[str, list[float]] = {}  # worker -> [compute seconds, calls]
        self._link: dict[tuple[str, str], float] = {}  # (worker, peer) -> monitor EWMA bytes/s
        self._sent: dict[tuple[str, str], float] = {}  # (worker, peer) -> bytes sent so far (monitor counter)
        self._timed: dict[tuple[str, str], tuple[float, float]] = {}  # ... -> timed bytes, seconds (monitor)
        self.timed = timed
        self._prev_cond = condition_at(trace, 0.0, world.cluster)

    @property
    def done(self) -> bool:
        return self.t + 1e-9 >= self.duration_s

    def step(self, decision: Decision | str) -> Step:
        plan = decision if isinstance(decision, str) else decision.plan
        reason = "" if isinstance(decision, str) else decision.reason
        prev, switched = self.current, plan != self.current
        if switched:
            self._blocked += self.switch_s
            self.current = plan
            if not isinstance(decision, str):
                self.last_change = decision.change_id
        dt, w = self.epoch_s, self.world
        cond = condition_at(self.trace, self.t + dt / 2, w.cluster)
        fig = w.figures(plan, cond)
        lost = 0.0
        gone = set(cond.absent) - set(self._prev_cond.absent)
        if gone & {r.device for s in w.plans[prev].stages for r in s.replicas}:  # in flight on a board gone: failed
            before = w.figures(prev, self._prev_cond)
            lost = before.throughput * before.latency_s
        self._prev_cond = cond
        pause = min(self._blocked, dt)
        self._blocked -= pause
        served = fig.throughput * (dt - pause)
        step = Step(self.t, str(cond), plan, served, fig.latency_s + (pause if pause else 0.0), fig.energy_j,
                    w.figures(w.best(cond), cond).throughput, switched, reason, lost)
        self._measure(plan, cond, fig, dt - pause)
        self.t += dt
        if self.t <= dt + 1e-9:  # the first epoch ran at nominal conditions: what the boards measure is nominal
            self.estimator.calibrate()
        self.estimate = self.estimator.estimate()
        return step

    def _measure(self, name: str, cond: Condition, fig: Figures, busy_s: float) -> None:
        """The running plan's workers' monitor snapshots after the epoch -> Estimator.update."""
        w, rng, noise = self.world, self.rng, self.noise
        plan = w.plans[name]
        micro = w.pricer.objective.micro
        calls = max(1, int(round(fig.throughput * busy_s / micro))) if fig.throughput > 0 else 0
        workers = {}
        for s in plan.stages:
            nxt = [r.device for r in plan.stages[s.index + 1].replicas] if s.index + 1 < len(plan.stages) else []
            for r in s.replicas:
                key = f"{r.device}/stage{s.index}"
                alive = r.device not in cond.absent
                n = calls if alive else 0
                acc = self._acc.setdefault(key, [0.0, 0])
                acc[0] += n * s.compute_s * cond.slowdown_of(r.device) * math.exp(rng.normal(0, noise))
                acc[1] += n
                links = {}
                for peer, dst in ([(f"{d}/stage{s.index + 1}", d) for d in nxt] if nxt else [("head", plan.head)]):
                    if dst == r.device or not alive or dst in cond.absent:
                        continue
                    true = w.cluster.link(r.device, dst).bandwidth * cond.bandwidth_scale(r.device, dst) * \
                        math.exp(rng.normal(0, noise))
                    old = self._link.get((key, peer), true)
                    self._link[(key, peer)] = val = true + (old - true) * self._keep ** max(n, 1)
                    # bytes: calls x the stage's nominal send (what the monitor counts; only its growth is read)
                    nbytes = n * max(s.send_s, 1e-6) * w.cluster.link(r.device, dst).bandwidth
                    sent = self._sent[(key, peer)] = self._sent.get((key, peer), 0.0) + nbytes
                    tb, ts = self._timed.get((key, peer), (0.0, 0.0))
                    tb, ts = self._timed[(key, peer)] = (tb + nbytes, ts + nbytes / true)
                    links[peer] = {"throughput_bytes_per_second": val, "sent_bytes_total": sent}
                    if self.timed:
                        links[peer].update(timed_bytes_total=tb, timed_seconds_total=ts)
                workers[key] = {"device": r.device, "stage": s.index, "alive": alive,
                                "predicted_compute_s": s.compute_s,
                                "monitor": {"compute_seconds": {"sum": acc[0], "count": acc[1]}, "links": links}}
        # The head knows every board's liveness whichever plan runs (FamilyHead.status() lists every variant's
        # workers): a board the running plan does not use still reads as down while it is down.
        for dev in w.devices:
            if not any(x["device"] == dev for x in workers.values()):
                workers[f"{dev}/idle"] = {"device": dev, "stage": -1, "alive": dev not in cond.absent, "monitor": {}}
        self.estimator.update({"workers": workers})


@dataclass(frozen=True)
class Run:
    policy: str
    trace: str
    steps: tuple[Step, ...]
    events: tuple[tuple[float, str], ...]  # (at_s, what) of the trace


def run(world: World, trace, policy, *, name: str | None = None, seed: int = 0, **sim) -> Run:
    """One policy over one trace. ``policy``: "static" (the best nominal plan throughout), "oracle" (the
    best plan under the true condition, switched the moment it changes, at the same switch cost), or a
    callable with the heuristic's signature ``(pricer, estimate, current, last_change) -> Decision``."""
    s = Sim(world, trace, seed=seed, **sim)
    steps = []
    while not s.done:
        if policy == "static":
            d = world.static
        elif policy == "oracle":
            d = world.best(condition_at(trace, s.t + s.epoch_s / 2, world.cluster))
        else:
            d = policy(world.pricer, s.estimate, s.current, s.last_change)
        steps.append(s.step(d))
    label = name or (policy if isinstance(policy, str) else getattr(policy, "__name__", type(policy).__name__))
    return Run(label, str(trace.source), tuple(steps), tuple((ev.at_s, ev.describe()) for ev in trace.events))


def _weighted_quantile(values: list[float], weights: list[float], q: float) -> float:
    pairs = sorted((v, w) for v, w in zip(values, weights, strict=True) if w > 0)
    if not pairs:
        return math.inf
    total, acc = sum(w for _, w in pairs), 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total - 1e-12:
            return v
    return pairs[-1][0]


@dataclass(frozen=True)
class Summary:
    policy: str
    throughput: float  # samples / s over the run
    p50_s: float  # request latency, weighted by samples served
    p99_s: float
    energy_j: float  # per sample served (model)
    switches: int
    lost: int
    recover_s: tuple[float, ...]  # per change of condition: time until within 10% of the oracle (inf: never)
    vs_best: float  # served / what the best plan under the true condition would serve without switching

    @classmethod
    def of(cls, r: Run) -> Summary:
        steps = r.steps
        dur = len(steps) * (steps[1].t_s - steps[0].t_s) if len(steps) > 1 else 1.0
        dt = dur / max(len(steps), 1)
        served = sum(s.served for s in steps)
        w = [s.served for s in steps]
        lat = [s.latency_s for s in steps]
        energy = sum(s.served * s.energy_j for s in steps if s.served > 0) / served if served else math.inf
        best = sum(s.best_throughput * dt for s in steps)
        # one recovery per time the true condition changes
        recover = []
        for k in range(1, len(steps)):
            if steps[k].condition == steps[k - 1].condition:
                continue
            t0, rec = steps[k].t_s, math.inf
            for s in steps[k:]:
                if s.t_s > t0 and s.condition != steps[k].condition:
                    break
                if s.served >= RECOVERED * s.best_throughput * dt - 1e-12:
                    rec = s.t_s - t0
                    break
            recover.append(rec)
        return cls(r.policy, served / dur, _weighted_quantile(lat, w, 0.5), _weighted_quantile(lat, w, 0.99),
                   energy, sum(s.switched for s in steps), int(round(sum(s.lost for s in steps))),
                   tuple(recover), served / best if best else 0.0)
