"""The testbed's oracle (issue 12, benchmark only): the variant the planner picks knowing the true conditions.

On the emulated testbed the true conditions ARE the trace `edgeplan emulate --trace` applies: its events are
timed from the moment the command starts, which is this process's start (``control.process_age_s``). The
oracle reads nothing measured (no monitor, no estimator): every ``epoch_s`` (0.05 s, so a switch follows its
event by at most that) it takes the trace's condition at that time (``simulate.condition_at``, the one the
simulator's oracle sees), and when it changed switches to ``Pricer.best`` under it through the same
``FamilyHead.switch`` as heuristic and rl (same pause, same drain, same lost/duplicated accounting). So the
policies' figures against the oracle's are what measuring costs them (delay, wrong readings, extra switches),
not a difference in the switching machinery.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeplan.adapt.control import Controller, Switch, process_age_s
from edgeplan.errors import PlanError

ORACLE_EPOCH_S = 0.05


def trace_of_testbed(cluster, env: dict | None = None):
    """The trace the emulated cluster this process runs in replays (EDGEPLAN_TESTBED's ``trace``), loaded
    against ``cluster`` (the family's); a one-line error when there is none."""
    from edgeplan.testbed.emulate import read_state
    from edgeplan.testbed.trace import load

    state = read_state(env)
    trace = state.get("trace") if state else None
    if not trace:
        raise PlanError("--adapt oracle: the oracle needs the true conditions, i.e. a trace: run it under "
                        "`edgeplan emulate CLUSTER --trace FILE -- edgeplan run ART --adapt oracle`")
    return load(trace, cluster)


class OracleController(Controller):
    """Switches to the best-priced variant under the trace's condition at each change of it (module docstring).
    ``trace_clock``: seconds on the trace's clock (default: this process's age)."""

    def __init__(self, head, pricer, trace, cluster, *, epoch_s: float = ORACLE_EPOCH_S, log=None,
                 trace_clock=None):
        super().__init__(head, pricer, None, None, epoch_s=epoch_s, calibrate_epochs=0, log=log, name="oracle")
        self.trace, self.cluster = trace, cluster
        self._trace_clock = trace_clock
        self._cond = None
        self._offset = None  # trace clock - monotonic, fixed at start (process_age_s reads /proc each time)

    def trace_now(self) -> float:
        if self._trace_clock is not None:
            return self._trace_clock()
        if self._offset is None:
            age = process_age_s()
            self._offset = (age if age is not None else 0.0) - time.monotonic()
        return time.monotonic() + self._offset

    def warm_policy(self) -> None:
        """Nothing to warm: the pricer's first call is made by the first step, before any event."""

    def start(self, warm_up: int = 0) -> OracleController:
        """As ``Controller.start`` (the same warm-up), and the head polls the workers' stats as often as it
        does for heuristic and rl (their cost on the pipeline is the same), though the oracle reads none."""
        import threading

        from edgeplan.adapt.control import EPOCH_S, STATS_PER_EPOCH

        if warm_up > 0 and hasattr(self.head, "warm_up"):
            self.warm_up(warm_up)
        if hasattr(self.head, "set_stats_interval"):
            self.head.set_stats_interval(EPOCH_S * STATS_PER_EPOCH)
        self._t0 = time.monotonic()
        self.started_process_age_s = process_age_s()
        self._thread = threading.Thread(target=self._loop, name="adapt-oracle", daemon=True)
        self._thread.start()
        return self

    def step(self):
        """One epoch: the trace's condition now; on a change, switch to the best priced variant (None: no
        change; else the variant chosen)."""
        from edgeplan.adapt.simulate import condition_at

        self.epochs += 1
        cond = condition_at(self.trace, self.trace_now(), self.cluster)
        if cond == self._cond:
            return None
        self._cond = cond
        self.last_change += 1
        at = round(time.monotonic() - self._t0, 3)
        self.history.append((at, str(cond), self.last_change))
        current = self.plan_file(self.head.active)
        t0 = time.perf_counter()
        best, _ = self.pricer.best(cond)
        decide_s = time.perf_counter() - t0
        if best == current:
            return best
        variant = Path(best).stem
        why = f"best priced under the trace's condition {cond}"
        try:
            self.head.switch(variant, f"oracle: {why}")
        except Exception as e:  # a variant that cannot run now: stay, say why once
            msg = f"switch to {variant} refused: {e}"
            if msg not in self.errors:
                self.errors.append(msg)
                self.log(msg)
            return best
        self.switches.append(Switch(at, current.removesuffix(".json"), variant, why, str(cond), self.last_change,
                                    round(decide_s, 6)))
        self._last_switch_t = self.clock()
        return best

    def report(self) -> dict:
        return {"policy": "oracle", "epoch_s": self.epoch_s, "epochs": self.epochs, "trace": self.trace.source,
                "decisions_switched": [s.to_json() for s in self.switches], "errors": list(self.errors),
                "model_error_by_worker": {k: round(v, 4) for k, v in sorted(self.scale.items())},
                "started_process_age_s": self.started_process_age_s,
                "estimates": [{"at_s": t, "condition": c, "change_id": i} for t, c, i in self.history]}
