"""The adaptation controller (issue 12, decisions at run time): a thread on the head that switches variants.

Every ``epoch_s`` it reads ``FamilyHead.status()``, feeds every variant's workers' monitor snapshots to
``adapt.estimate.Estimator`` (keys ``variant:device/stageK``, so a worker's counters are never compared
with another variant's), asks the policy (``heuristic`` or the learned ``rl`` table, both
``(pricer, estimate, current, last_change) -> Decision``) and calls ``FamilyHead.switch``. The first
first epochs (at least ``calibrate_epochs``, until every board of the active layout has reported) only
measure: then the estimator takes the factors measured so far as
nominal (``Estimator.calibrate``: the cost model's and the link probe's own error under the conditions
the family was planned for), so a model that is 20% off does not read as a condition change.

``load_controller(family_root, head, policy_name)`` builds it from a compiled family folder
(``graph.json``, ``cluster.json``, ``family.json``, ``plan-K/plan.json``; rl: ``rl-policy.json``).
The controller records every decision that switched (``switches``: time, from, to, reason, the estimated
condition); the head measures each switch (pause, drain, p99 during it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgeplan.errors import PlanError

EPOCH_S = 0.5  # how often the controller reads the head's status (the monitor's stats arrive every second)
CALIBRATE_EPOCHS = 6  # epochs of measurement before the estimator takes the measured factors as nominal
STATS_PER_EPOCH = 0.5  # the head polls the workers' STATS every this many epochs (fresh counters in each one)
MIN_DWELL_S = 2.0  # no switch sooner than this after the previous one, nor before its old layout drained
# A switch back to the plan the previous switch left, sooner than this after it, is not made (the change that
# asked for it counts as answered). What a board or link reads depends on the plan measuring it (a short stage
# under a CPU quota reads 1.3x where a long one read 2.7x; a loaded host drifts a board 0.9x <-> 1.4x), so a
# return this soon is more likely a reading of the new layout than a new condition (on the testbed at load 7,
# with bandwidth steady, the heuristic went plan-0 -> plan-2 -> plan-0 ... every 2-11 s). The price: after a
# disturbance shorter than this, the runtime stays on the plan for it until the next committed change. The
# shipped traces change every 20 s.
RETURN_HOLD_S = 12.0
# ... unless it is a probe (an expired factor re-measured: exponential back-off keeps those rare), or a link moved
# this much (or a board came or went) since that switch: a real change. A board's slowdown is not trusted so:
# it is what depends most on the plan measuring it (the testbed read a hog 2.9x, then 0.82x on a short stage).
RETURN_MOVED = 2.0
# A change committed while another factor is still moving (off its committed value, not steady) is decided only
# once that settles, waiting at most this many epochs: events that happen together commit apart (the estimator
# itself holds a ready factor for a moving one only ``CONFIRM`` updates), and deciding on the first half switched
# twice on the testbed: a drop's recovery and a hog at once read "drop + hog" (-> the plan for both), then "hog"
# 1.5 s later (-> the plan for the hog).
SETTLE_EPOCHS = 3


def links_moved(a, b) -> float:
    """The largest ratio between two conditions' bandwidth terms (a missing term is 1; inf: a board came or
    went)."""
    if set(a.absent) != set(b.absent):
        return float("inf")
    r = 1.0
    x, y = dict(a.bandwidth), dict(b.bandwidth)
    for k in set(x) | set(y):
        u, v = x.get(k, 1.0), y.get(k, 1.0)
        r = max(r, u / v, v / u)
    return r


@dataclass(frozen=True)
class Switch:
    """One decision that switched: when (seconds since the controller started), from/to variant, why."""

    at_s: float
    frm: str
    to: str
    reason: str
    condition: str
    change_id: int
    decide_s: float  # how long the policy took
    # a re-measurement probe: the change it answers only expired factors the running plan could not measure
    # (``Estimate.probe``); it is a switch like any other and counts as one (2 if the factor is still off)
    probe: bool = False

    def to_json(self) -> dict:
        return {"at_s": self.at_s, "from": self.frm, "to": self.to, "reason": self.reason,
                "condition": self.condition, "change_id": self.change_id, "decide_s": self.decide_s,
                "probe": self.probe}


def flat_status(status: dict, scale: dict | None = None) -> dict:
    """A FamilyHead status as the Estimator reads it: every variant's workers, keyed ``variant:device/stageK``;
    the head's own receive-side link figures (``family_rx_links``) as a worker entry ``variant:head`` of
    device ``head`` that only has ``rx_links``; ``scale`` (same keys) multiplies a worker's predicted compute
    time (its module's measured/predicted ratio at warm-up, so every layout reads as slowdown 1 under the
    conditions it was warmed up in)."""
    fam = status.get("family_workers")
    if fam is None:
        return status
    scale = scale or {}
    out = {}
    for v, ws in sorted(fam.items()):
        for k, w in ws.items():
            key = f"{v}:{k}"
            if key in scale and w.get("predicted_compute_s"):
                w = dict(w, predicted_compute_s=w["predicted_compute_s"] * scale[key])
            out[key] = w
    for v, rx in sorted((status.get("family_rx_links") or {}).items()):  # the head's own receive-side figures
        if rx:
            out[f"{v}:head"] = {"device": "head", "alive": True, "monitor": {"rx_links": rx}}
    return {"workers": out}


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): `edgeplan emulate --trace` times its
    events from the command's start, so ``at_s + started_process_age_s`` is a switch's time on the trace's clock."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        import os

        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


class Controller:
    """Reads the head every ``epoch_s``, estimates conditions, asks ``policy``, switches (module docstring)."""

    def __init__(self, head, pricer, estimator, policy, *, epoch_s: float = EPOCH_S,
                 calibrate_epochs: int = CALIBRATE_EPOCHS, log=None, name: str = "", min_dwell_s: float = MIN_DWELL_S,
                 return_hold_s: float = RETURN_HOLD_S, clock=time.monotonic, shares=None):
        self.head, self.pricer, self.estimator, self.policy = head, pricer, estimator, policy
        self.shares = shares  # () -> {device: CPU share}: a hog read plan-independently (adapt/share.py), or None
        self.epoch_s, self.calibrate_epochs = epoch_s, calibrate_epochs
        self.min_dwell_s, self.return_hold_s, self.clock = min_dwell_s, return_hold_s, clock
        self.held_returns: list[dict] = []  # switches back not made (RETURN_HOLD_S)
        self._switch_cond = None  # the estimate the last switch answered
        self._last_switch_t = -float("inf")
        self.held = 0  # epochs in which a decision waited for the previous switch to drain / the dwell time
        self.settle_epochs = SETTLE_EPOCHS
        self._waiting = 0  # consecutive epochs a decision has waited for a moving factor
        self.settled_waits = 0  # epochs decisions waited for a moving factor (SETTLE_EPOCHS)
        self.name = name or getattr(policy, "__name__", "policy")
        self.log = log or head.log
        self.switches: list[Switch] = []
        self.scale: dict[str, float] = {}  # variant:device/stageK -> measured / predicted module time at warm-up
        self.last_change = -1
        self.epochs = 0
        self.calibrated = 0  # the epoch the estimator was calibrated in (0: not yet)
        self.history: list[tuple[float, str, int]] = []  # (seconds, estimated condition, change id) per change
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self.started_process_age_s: float | None = None  # this process's age when the clock of at_s started

    @staticmethod
    def plan_file(variant: str) -> str:
        return f"{variant}.json"

    def step(self):
        """One epoch: status -> estimate -> decision -> (maybe) switch; returns the Decision (None while
        calibrating)."""
        self.epochs += 1
        status = self.head.status()
        flat = flat_status(status, self.scale)
        if self.shares is not None:
            flat = dict(flat, cpu_share=self.shares())
        est = self.estimator.update(flat)
        if not self.calibrated:
            # Calibrate once every board of the active layout has reported stage times (a slow first request
            # must not leave a board's factor uncalibrated), or at the latest after 4x the epochs asked for.
            used = {w["device"] for w in (status.get("family_workers") or {}).get(self.head.active, {}).values()}
            seen = self.estimator.smoothed()
            if self.epochs >= self.calibrate_epochs and (
                    all(f"slowdown:{d}" in seen for d in used) or self.epochs >= 4 * self.calibrate_epochs):
                self.estimator.calibrate()
                self.calibrated = self.epochs
            return None
        # A link first measured after calibration is the Estimator's business: it compares it with the
        # cluster file's bandwidth (through the probe's bias on the calibrated links), so a link that is
        # already degraded when first seen is acted on.
        if est.change_id != (self.history[-1][2] if self.history else None):
            self.history.append((round(time.monotonic() - self._t0, 3), str(est.condition), est.change_id))
        # A switch is not re-decided while its old layout drains or within min_dwell_s of it: the estimate
        # of a layout that just started is noisy, and switching again mid-drain only stacks pauses.
        last = (status.get("switches") or [{}])[-1]
        if self.clock() - self._last_switch_t < self.min_dwell_s or (last and last.get("drain_s") is None):
            self.held += 1
            return None
        moving = getattr(self.estimator, "moving", ())
        if moving and est.change_id > self.last_change and not est.probe and self._waiting < self.settle_epochs:
            self._waiting += 1  # the change's other half may still be on its way
            self.settled_waits += 1
            return None
        self._waiting = 0
        current = self.plan_file(self.head.active)
        t0 = time.perf_counter()
        d = self.policy(self.pricer, est, current, self.last_change)
        decide_s = time.perf_counter() - t0
        back = self.switches[-1].frm if self.switches else None
        if d.switch and d.plan != current and back is not None and d.plan == self.plan_file(back) \
                and self.clock() - self._last_switch_t < self.return_hold_s and d.current_value != float("inf") \
                and not est.probe and links_moved(est.condition, self._switch_cond) < RETURN_MOVED:
            self.held_returns.append({"at_s": round(time.monotonic() - self._t0, 3), "to": back,
                                      "condition": str(est.condition), "change_id": d.change_id})
            self.log(f"{self.name}: not back to {back} {self.clock() - self._last_switch_t:.1f} s after leaving it "
                     f"(hold {self.return_hold_s:g} s): {d.reason} (estimate: {est.condition})")
            self.last_change = d.change_id
            return replace(d, plan=current, switch=False, reason=f"held (back within {self.return_hold_s:g} s): "
                           + d.reason)
        if d.switch and d.plan != current:
            variant = Path(d.plan).stem
            probe = bool(est.probe)
            why = d.reason if not probe or d.reason.startswith("probe") else \
                f"probe ({', '.join(est.probe)} unmeasured): {d.reason}"
            reason = f"{self.name}: {why} (estimate: {est.condition})"
            try:
                self.head.switch(variant, reason)
            except Exception as e:  # a variant that cannot run now: stay, say why once per change
                msg = f"switch to {variant} refused: {e}"
                if msg not in self.errors:
                    self.errors.append(msg)
                    self.log(msg)
                self.last_change = d.change_id
                return d
            self.switches.append(Switch(round(time.monotonic() - self._t0, 3), current.removesuffix(".json"),
                                        variant, why, str(est.condition), d.change_id, round(decide_s, 6), probe))
            self._last_switch_t = self.clock()
            self._switch_cond = est.condition
            self.last_change = d.change_id
        return d

    def warm_up(self, requests: int = 3) -> dict:
        """Run a few requests through every variant (``FamilyHead.warm_up``) and keep each worker's
        measured/predicted module time, so a switch alone (another layout, other modelling errors) never
        reads as a change of conditions. Call it under the conditions the family was planned for."""
        medians = self.head.warm_up(requests)
        status = self.head.status().get("family_workers") or {}
        for v, meds in medians.items():
            for k, med in meds.items():
                pred = (status.get(v, {}).get(k) or {}).get("predicted_compute_s")
                if pred:
                    self.scale[f"{v}:{k}"] = float(med) / float(pred)
        return dict(self.scale)

    def start(self, warm_up: int = 0) -> Controller:
        """Start the epoch thread (after ``warm_up`` requests per variant, when > 0: blocks until done)."""
        if warm_up > 0 and hasattr(self.head, "warm_up"):
            self.warm_up(warm_up)
        if hasattr(self.head, "set_stats_interval"):  # fresh counters in every epoch's status (two polls each)
            self.head.set_stats_interval(self.epoch_s * STATS_PER_EPOCH)
        self.warm_policy()
        self._t0 = time.monotonic()
        self.started_process_age_s = process_age_s()
        self._thread = threading.Thread(target=self._loop, name="adapt-controller", daemon=True)
        self._thread.start()
        return self

    def warm_policy(self) -> None:
        """One decision under nominal conditions, discarded, before serving: the very first call of a freshly
        loaded policy runs cold code paths (~5x a later one in bench_adapt_decision's ``rl 1st``), and it
        should not be the one that answers the first change."""
        from edgeplan.adapt.estimate import Estimate
        from edgeplan.planner.family import NOMINAL

        if self.pricer is None:
            return
        try:
            self.policy(self.pricer, Estimate(NOMINAL, 0), self.plan_file(self.head.active), -1)
        except Exception as e:  # the real decisions will report it
            self.log(f"adapt controller: warming the policy failed: {e!r}")

    def _loop(self) -> None:
        while not self._stop.wait(self.epoch_s):
            try:
                self.step()
            except Exception as e:  # the pipeline keeps serving on its current variant
                msg = f"adapt controller: epoch {self.epochs} failed: {e!r}"
                if msg not in self.errors:
                    self.errors.append(msg)
                    self.log(msg)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def report(self) -> dict:
        """What the run report records of the controller."""
        return {"policy": self.name, "epoch_s": self.epoch_s, "epochs": self.epochs,
                "decisions_switched": [s.to_json() for s in self.switches], "errors": list(self.errors),
                "model_error_by_worker": {k: round(v, 4) for k, v in sorted(self.scale.items())},
                "calibrated_at_epoch": self.calibrated, "held_epochs": self.held, "min_dwell_s": self.min_dwell_s,
                "settle_waits": self.settled_waits,
                "return_hold_s": self.return_hold_s, "held_returns": list(self.held_returns),
                "started_process_age_s": self.started_process_age_s,
                "estimates": [{"at_s": t, "condition": c, "change_id": i} for t, c, i in self.history],
                "estimate": str(self.estimator.estimate().condition), "smoothed": self.estimator.smoothed()}


def load_controller(family_root, head, policy_name: str, *, epoch_s: float = EPOCH_S,
                    calibrate_epochs: int = CALIBRATE_EPOCHS, log=None) -> Controller:
    """A Controller for ``head`` (a FamilyHead) over the compiled family in ``family_root``."""
    from edgeplan import jsonio
    from edgeplan.adapt.estimate import Estimator
    from edgeplan.adapt.policy import Pricer, policy_for
    from edgeplan.adapt.rl import family_plans
    from edgeplan.adapt.share import testbed_share_reader
    from edgeplan.graph.model import LayerGraph
    from edgeplan.profiles.model import Cluster

    root = Path(family_root)
    if not hasattr(head, "switch"):
        raise PlanError(f"--adapt {policy_name}: {root} is one compiled plan, not a plan family; compile a family "
                        "(`edgeplan plan ... --variants ... --out plans/`, `edgeplan compile plans/ --out art/`)")
    for f in ("graph.json", "cluster.json"):
        if not (root / f).is_file():
            raise PlanError(f"{root}/{f}: missing; the controller re-prices the variants with it: re-run "
                            "`edgeplan compile` on the family with --cluster (and this edgeplan)")
    graph = LayerGraph.from_json(jsonio.read(root / "graph.json"))
    cluster = Cluster.from_json(jsonio.read(root / "cluster.json"))
    _, plans = family_plans(root)
    pricer = Pricer.from_family(graph, cluster, plans)
    if policy_name == "oracle":  # benchmark only: the true conditions, from the trace the testbed replays
        from edgeplan.adapt.oracle import OracleController, trace_of_testbed

        return OracleController(head, pricer, trace_of_testbed(cluster), cluster, log=log)
    policy = policy_for(policy_name, root)
    head_device = next(iter(plans.values())).head
    est = Estimator(cluster, head=head_device)
    return Controller(head, pricer, est, policy, epoch_s=epoch_s, calibrate_epochs=calibrate_epochs, log=log,
                      name=policy_name, shares=testbed_share_reader())


PAUSE_SLACK_S = 0.05  # issue 12's target: a switch pauses at most the old plan's slowest stage + 50 ms


def adapt_report(policy: str, result, controller: Controller | None = None) -> dict:
    """The run report's ``adapt`` section: every switch as the head measured it, lost/duplicated counts,
    requests per variant, throughput between switches and the controller's own record."""
    switches = list(result.switches)
    age = process_age_s()  # answers on this process's clock: `edgeplan emulate --trace` starts with the process
    off = None if age is None else age - time.monotonic()
    pauses = [s["pause_s"] for s in switches if s.get("pause_s") is not None]
    within = [s["pause_s"] <= s["old_stage_s"] + PAUSE_SLACK_S for s in switches
              if s.get("pause_s") is not None and s.get("old_stage_s") is not None]
    return {
        "policy": policy, "switch_count": len(switches), "switches": switches,
        "lost": result.lost, "duplicated": result.duplicated, "failed": len(result.failures),
        "answered_by_variant": dict(result.variants), "segments": list(result.segments),
        "pause_max_s": max(pauses) if pauses else None,
        "pauses_within_target": sum(within), "pauses_measured": len(within),
        "controller": controller.report() if controller is not None else None,
        # when each answered request was answered, seconds since this process started (the trace's clock)
        "answered_at_process_s": None if off is None else sorted(
            round(t + off, 3) for t in (getattr(result, "done_at", None) or []) if t is not None),
    }


def format_adapt(rep: dict) -> str:
    """A few lines for `edgeplan run`: each switch with its pause against the target, then throughput per stretch."""
    lines = [f"adapt ({rep['policy']}): {rep['switch_count']} switch(es), lost {rep['lost']}, "
             f"duplicated {rep['duplicated']}, failed {rep['failed']}; answered per variant "
             + ", ".join(f"{k} {v}" for k, v in sorted(rep["answered_by_variant"].items()))]
    for s in rep["switches"]:
        def ms(x):
            return "-" if x is None else f"{x * 1e3:.0f} ms"
        target = "" if s.get("old_stage_s") is None else f" (target <= {ms(s['old_stage_s'] + PAUSE_SLACK_S)})"
        lines.append(f"  {s['at_s']:.1f}s {s['from']} -> {s['to']}: pause {ms(s.get('pause_s'))}{target}, drain "
                     f"{ms(s.get('drain_s'))}, p99 during {ms(s.get('p99_during_s'))}; {s.get('reason') or ''}")
    if rep["segments"]:
        lines.append("  throughput: " + ", ".join(
            f"{g['variant']} {g['throughput']:.1f}/s [{g['from_s']:.1f}-{g['to_s']:.1f}s]"
            for g in rep["segments"] if g["throughput"] is not None))
    return "\n".join(lines)
