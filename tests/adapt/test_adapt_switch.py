"""The adaptation controller (edgeplan/adapt/control.py): calibrates, then switches at most once per
committed condition change, through the real Estimator and heuristic policy over a real Pricer."""

from __future__ import annotations

import pytest

from edgeplan.adapt.control import Controller, adapt_report, flat_status, format_adapt
from edgeplan.adapt.estimate import Estimator
from edgeplan.adapt.policy import heuristic
from edgeplan.runtime.head import PipelineError, RunResult


class FakeHead:
    """A FamilyHead's status() and switch() with worker monitors driven by the test (compute per call)."""

    def __init__(self, variants, layout, predicted=0.01):
        self.active, self.variants, self.layout, self.predicted = variants[0], variants, layout, predicted
        self.calls = {v: {} for v in variants}  # variant -> (device, stage) -> (sum, count)
        self.switched: list = []
        self.refuse: set = set()
        self.log = lambda msg: None

    def work(self, seconds_per_call: dict, n: int = 10):
        """The active variant runs ``n`` calls per stage at ``seconds_per_call[device]``."""
        for dev, st in self.layout[self.active]:
            s, c = self.calls[self.active].get((dev, st), (0.0, 0))
            self.calls[self.active][(dev, st)] = (s + n * seconds_per_call[dev], c + n)

    def status(self):
        fam = {}
        links = getattr(self, "links", {})
        for v in self.variants:
            fam[v] = {}
            for d, st in self.layout[v]:
                total, count = self.calls[v].get((d, st), (0.0, 0))
                fam[v][f"{d}/stage{st}"] = {"device": d, "stage": st, "alive": True,
                                            "predicted_compute_s": self.predicted,
                                            "monitor": {"compute_seconds": {"sum": total, "count": count},
                                                        "links": links.get(d, {})}}
        return {"variant": self.active, "family_workers": fam}

    def switch(self, variant, reason=""):
        if variant in self.refuse:
            raise PipelineError(f"cannot switch to {variant}: stage 0 has no live replica")
        self.switched.append((self.active, variant, reason))
        self.active = variant
        return {}


@pytest.fixture(scope="module")
def family_parts(lenet5_family):
    """A real Pricer over the layouts lenet5 gets on three hosts (c 4x slower) with a or b slowed 4x (the
    session's family, tests/conftest.py)."""
    from edgeplan.adapt.policy import Pricer
    from edgeplan.graph.load import build
    from edgeplan.planner.family import load_family
    from edgeplan.profiles.load import load_cluster

    cluster = load_cluster(lenet5_family / "c.yaml")
    graph = build("lenet5", None).graph
    fam, plans = load_family(lenet5_family / "plans")
    pricer = Pricer.from_family(graph, cluster, plans)
    layout = {n.removesuffix(".json"): [(r.device, s.index) for s in p.stages for r in s.replicas]
              for n, p in plans.items()}
    return cluster, pricer, layout, fam


def test_flat_status_keys_every_variants_workers_apart():
    st = {"family_workers": {"plan-1": {"a/stage0": {"x": 1}}, "plan-0": {"a/stage0": {"x": 2}}}}
    assert flat_status(st) == {"workers": {"plan-0:a/stage0": {"x": 2}, "plan-1:a/stage0": {"x": 1}}}
    assert flat_status({"workers": {"a/stage0": {}}}) == {"workers": {"a/stage0": {}}}


def test_controller_calibrates_then_switches_once_per_change(family_parts):
    cluster, pricer, layout, fam = family_parts
    if len(layout) < 2:
        pytest.skip("the planner found one layout for every condition here")
    head = FakeHead(sorted(layout), layout)
    c = Controller(head, pricer, Estimator(cluster, head="a"), heuristic, calibrate_epochs=3, name="heuristic")
    speed = {"a": 0.013, "b": 0.013, "c": 0.013}  # 1.3x the prediction: the model's own error, calibrated away
    for _ in range(8):
        head.work(speed)
        c.step()
    assert head.switched == [] and c.epochs == 8
    used = {d for d, _ in layout[head.active]}
    slow = sorted(used)[0]
    speed[slow] *= 4  # a 4x hog on a board the current layout uses
    for _ in range(10):
        head.work(speed)
        c.step()
    assert len(head.switched) == 1, head.switched  # one switch for one change, then steady
    frm, to, reason = head.switched[0]
    assert slow not in {d for d, _ in layout[to]} or len(layout[to]) > len(layout[frm])
    assert f"slowdown:{slow}=4" in reason and c.switches[0].to == to and c.switches[0].decide_s < 0.05


def test_a_refused_switch_is_logged_once_and_the_current_variant_keeps_serving(family_parts):
    cluster, pricer, layout, fam = family_parts
    if len(layout) < 2:
        pytest.skip("the planner found one layout for every condition here")
    head = FakeHead(sorted(layout), layout)
    head.refuse = set(layout) - {head.active}
    c = Controller(head, pricer, Estimator(cluster, head="a"), heuristic, calibrate_epochs=2)
    speed = {"a": 0.01, "b": 0.01, "c": 0.01}
    for _ in range(4):
        head.work(speed)
        c.step()
    speed[next(d for d, _ in layout[head.active])] *= 4
    for _ in range(8):
        head.work(speed)
        c.step()
    assert head.switched == [] and len(c.errors) == 1 and "refused" in c.errors[0]
    assert c.switches == []


def test_the_adapt_report_compares_each_pause_with_its_target():
    res = RunResult(3, 4, [[1], [2], None], [0.1, 0.1, None], failures={2: "x"}, variants={"plan-0": 1, "plan-1": 1},
                    switches=[{"at_s": 1.0, "from": "plan-0", "to": "plan-1", "reason": "r", "pause_s": 0.02,
                               "drain_s": 0.05, "p99_during_s": 0.1, "old_stage_s": 0.01},
                              {"at_s": 2.0, "from": "plan-1", "to": "plan-0", "reason": "r", "pause_s": 0.2,
                               "drain_s": 0.3, "p99_during_s": 0.4, "old_stage_s": 0.1}],
                    segments=[{"variant": "plan-0", "from_s": 0.0, "to_s": 1.0, "requests": 1, "throughput": 4.0}])
    rep = adapt_report("heuristic", res)
    assert (rep["lost"], rep["failed"], rep["switch_count"]) == (0, 1, 2)
    assert (rep["pauses_within_target"], rep["pauses_measured"], rep["pause_max_s"]) == (1, 2, 0.2)
    text = format_adapt(rep)
    assert "pause 20 ms (target <= 60 ms)" in text and "pause 200 ms (target <= 150 ms)" in text


def test_a_link_first_measured_after_calibration_is_calibrated_not_read_as_a_change(family_parts):
    cluster, pricer, layout, fam = family_parts
    head = FakeHead(sorted(layout), layout)
    c = Controller(head, pricer, Estimator(cluster, head="a"), heuristic, calibrate_epochs=2)
    speed = {"a": 0.01, "b": 0.01, "c": 0.01}
    for _ in range(3):
        head.work(speed)
        c.step()
    assert c.calibrated
    dev = layout[head.active][0][0]
    other = next(d for d in ("a", "b", "c") if d != dev)
    # the link probe reads 4x the cluster file's bandwidth on a pair no earlier epoch measured
    head.links = {dev: {f"{other}/stage0": {"throughput_bytes_per_second": 4 * cluster.link(dev, other).bandwidth}}}
    for _ in range(8):
        head.work(speed)
        c.step()
    key = f"link:{'/'.join(sorted((dev, other)))}"
    assert c.estimator.smoothed()[key] == pytest.approx(1.0, rel=0.05)
    assert str(c.estimator.estimate().condition) == "nominal" and head.switched == []


def test_no_switch_while_the_last_one_drains_or_within_the_dwell_time(family_parts):
    from edgeplan.adapt.policy import Decision

    cluster, pricer, layout, fam = family_parts
    names = sorted(layout)
    now = [0.0]
    drained = [True]

    class Head(FakeHead):
        def status(self):
            st = super().status()
            st["switches"] = [{"drain_s": 0.1 if drained[0] else None}] if self.switched else []
            return st

    def always_the_other(pricer, est, current, last_change):  # a policy that would flap every epoch
        other = next(n for n in names if f"{n}.json" != current)
        return Decision(f"{other}.json", True, "flip", 1.0, 0.5, last_change + 1)

    head = Head(names, layout)
    c = Controller(head, pricer, Estimator(cluster, head="a"), always_the_other, calibrate_epochs=1,
                   min_dwell_s=2.0, clock=lambda: now[0])
    while not c.calibrated:
        head.work({"a": 0.01, "b": 0.01, "c": 0.01})
        c.step()
    c.step()
    assert len(head.switched) == 1
    for t in (0.5, 1.0, 1.9):
        now[0] = t
        c.step()
    assert len(head.switched) == 1 and c.held == 3
    now[0] = 5.0  # the dwell has passed, but this would go back to the plan just left: held, the change answered
    d = c.step()
    assert len(head.switched) == 1 and not d.switch and d.plan == f"{head.active}.json"
    assert [h["to"] for h in c.held_returns] == [head.switched[0][0]] and c.report()["held_returns"]
    drained[0] = False  # the return hold has passed too, but the old layout still has requests in flight
    now[0] = 13.0
    c.step()
    assert len(head.switched) == 1
    drained[0] = True
    c.step()
    assert len(head.switched) == 2


def test_the_controller_has_the_head_poll_stats_twice_an_epoch():
    """A change shows only in fresh worker counters: at the head's 1 s default every other 0.5 s epoch saw none."""
    from types import SimpleNamespace

    from edgeplan.runtime.head import FamilyHead, HeadConfig

    heads = {v: SimpleNamespace(batch=4, input_specs=(), output_specs=(), microbatch=4, microbatches=1, model="m",
                                in_specs=(), out_specs=(), window=2, log=print, cfg=HeadConfig())
             for v in ("plan-0", "plan-1")}
    fam = FamilyHead(heads, "plan-0")
    c = Controller(fam, None, None, heuristic, epoch_s=0.5)
    c.start()
    c.stop()
    assert {h.cfg.stats_interval_s for h in heads.values()} == {0.25}
    assert HeadConfig().stats_interval_s == 1.0


def test_a_return_soon_after_a_switch_is_held_unless_a_link_moved_2x_or_it_probes(family_parts):
    """A board's readings (3x, 0.7x: they depend on the plan measuring it) do not take the runtime back to the plan
    it just left; a recovery from a 4x bandwidth drop does, however soon (on the testbed a drift-driven switch 10 s
    before the recovery held it), and so does a probe of an expired factor."""
    from edgeplan.adapt.control import links_moved
    from edgeplan.adapt.estimate import Estimate
    from edgeplan.adapt.policy import Decision
    from edgeplan.planner.family import parse_condition

    cluster, pricer, layout, fam = family_parts
    names = sorted(layout)
    now = [0.0]

    class Est:  # the estimate the test scripts, one change per step
        def __init__(self):
            self.cond, self.change, self.probe = parse_condition("nominal"), 0, ()

        def update(self, status):
            return Estimate(self.cond, self.change, self.probe, self.probe)

        def smoothed(self):
            return {}

        def calibrate(self):
            pass

    def other(pricer, est, current, last_change):
        if est.change_id <= last_change:
            return Decision(current, False, "answered", 1.0, 1.0, est.change_id)
        plan = next(f"{n}.json" for n in names if f"{n}.json" != current)
        return Decision(plan, True, "the other", 1.0, 0.5, est.change_id)

    est = Est()
    head = FakeHead(names, layout)
    c = Controller(head, pricer, est, other, calibrate_epochs=1, min_dwell_s=0.0, clock=lambda: now[0])
    while not c.calibrated:
        c.step()
    for t, cond, switched in ((1.0, "bandwidth=0.25", 1), (3.0, "bandwidth=0.25+slowdown:gpu-board=3", 1),
                              (5.0, "bandwidth=0.25+slowdown:gpu-board=0.7", 1), (7.0, "slowdown:gpu-board=0.7", 2),
                              (8.0, "nominal", 3)):
        now[0], est.cond, est.change = t, parse_condition(cond), est.change + 1
        est.probe = ("slowdown:gpu-board",) if t == 8.0 else ()
        c.step()
        assert len(head.switched) == switched, (t, cond, head.switched)
    assert len(c.held_returns) == 2
    # the probe is a switch like the others, labelled so a report can count it (it is no condition change)
    assert [s.probe for s in c.switches] == [False, False, True]
    assert c.switches[-1].reason.startswith("probe (slowdown:gpu-board unmeasured): ")
    assert c.switches[-1].to_json()["probe"] is True
    assert links_moved(parse_condition("bandwidth=0.25"), parse_condition("nominal")) == 4.0
    assert links_moved(parse_condition("slowdown:a=4"), parse_condition("nominal")) == 1.0
    assert links_moved(parse_condition("absent:c"), parse_condition("nominal")) == float("inf")


def test_a_change_is_decided_once_a_factor_still_moving_has_settled(family_parts):
    """The testbed's alternating trace at 40 s: a drop's recovery and a hog at once commit apart, "drop + hog"
    first while the link still moves, "hog" 1.5 s later; deciding on the first half switched twice (the plan for
    both, then the plan for the hog). The controller waits (at most SETTLE_EPOCHS) while a factor moves: one switch,
    to the plan for the whole change. A factor that never settles delays a decision by SETTLE_EPOCHS only."""
    from edgeplan.adapt.control import SETTLE_EPOCHS
    from edgeplan.adapt.estimate import Estimate
    from edgeplan.adapt.policy import Decision
    from edgeplan.planner.family import parse_condition

    cluster, pricer, layout, fam = family_parts
    names = sorted(layout)
    if len(names) < 3:
        pytest.skip("needs three layouts")

    class Est:  # the estimate the test scripts
        def __init__(self):
            self.cond, self.change, self.moving = parse_condition("nominal"), 0, ()

        def update(self, status):
            return Estimate(self.cond, self.change)

        def smoothed(self):
            return {}

        def calibrate(self):
            pass

    def by_condition(pricer, est, current, last_change):  # drop + hog -> names[1], hog -> names[2]
        plan = f"{names[1 if est.condition.bandwidth else 2]}.json" if str(est.condition) != "nominal" else current
        if est.change_id <= last_change or plan == current:
            return Decision(current, False, "stay", 1.0, 1.0, est.change_id)
        return Decision(plan, True, "by condition", 1.0, 0.5, est.change_id)

    est = Est()
    head = FakeHead(names, layout)
    c = Controller(head, pricer, est, by_condition, calibrate_epochs=1, min_dwell_s=0.0)
    while not c.calibrated:
        c.step()
    est.cond, est.change, est.moving = parse_condition("bandwidth=0.25+slowdown:gpu-board=3"), 1, ("link:a/b",)
    c.step()
    c.step()
    assert head.switched == []  # the link is still moving: wait
    est.cond, est.change, est.moving = parse_condition("slowdown:gpu-board=3"), 2, ()
    for _ in range(4):
        c.step()
    assert [to for _, to, _ in head.switched] == [names[2]]  # one switch, for the whole change
    est.cond, est.change, est.moving = parse_condition("bandwidth=0.25+slowdown:gpu-board=3"), 3, ("slowdown:x",)
    for _ in range(SETTLE_EPOCHS):
        c.step()
    assert len(head.switched) == 1
    c.step()  # a factor that keeps moving delays the decision, never stops it
    assert [to for _, to, _ in head.switched] == [names[2], names[1]]
