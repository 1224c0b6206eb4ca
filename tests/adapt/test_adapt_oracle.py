"""The testbed's oracle (adapt/oracle.py): it switches at the trace's event times only, to the variant the
pricer picks under the trace's true condition, reading nothing measured; bench_adapt's time to within 10% of it."""

from __future__ import annotations

import json
import math

import pytest

from edgeplan.adapt.oracle import OracleController, trace_of_testbed
from edgeplan.errors import PlanError
from edgeplan.testbed.trace import Event, Trace
from tests.adapt.test_adapt_switch import FakeHead, family_parts  # noqa: F401 (a fixture)


class BlindHead(FakeHead):
    def status(self):  # the oracle must not read a measurement
        raise AssertionError("the oracle read the head's status")


def test_the_oracle_switches_at_event_times_to_the_best_priced_variant(family_parts):  # noqa: F811
    from edgeplan.adapt.simulate import condition_at

    cluster, pricer, layout, fam = family_parts
    if len(layout) < 2:
        pytest.skip("the planner found one layout for every condition here")
    devs = sorted({d for v in layout.values() for d, _ in v})
    events = tuple(Event(at_s=t, kind="cpu", device=d, scale=s)
                   for t, d, s in ((2.0, devs[0], 0.25), (4.0, devs[0], 1.0), (6.0, devs[1], 0.25)))
    trace = Trace("t.yaml", events + (Event(at_s=8.0, kind="link", scale=0.25),), 10.0)
    nominal, _ = pricer.best(condition_at(trace, 0.0, cluster))
    head = BlindHead(sorted(layout), layout)
    head.active = nominal.removesuffix(".json")
    now = [0.0]
    c = OracleController(head, pricer, trace, cluster, trace_clock=lambda: now[0])
    picks = {}
    for k in range(21):  # 0 .. 10 s in 0.5 s epochs
        now[0] = k * 0.5
        before = len(head.switched)
        c.step()
        if len(head.switched) > before:
            picks[now[0]] = head.switched[-1][1]
        assert head.active + ".json" == pricer.best(condition_at(trace, now[0], cluster))[0], now[0]
    assert set(picks) <= {2.0, 4.0, 6.0, 8.0} and picks, picks  # at event times only
    changed = [t for t in (2.0, 4.0, 6.0, 8.0) if pricer.best(condition_at(trace, t, cluster))[0]
               != pricer.best(condition_at(trace, t - 0.5, cluster))[0]]
    assert sorted(picks) == changed  # one switch per change of the best variant, none when it stays
    assert [s.to for s in c.switches] == [picks[t] for t in sorted(picks)]
    rep = c.report()
    assert rep["policy"] == "oracle" and len(rep["estimates"]) == 5  # nominal + 4 changes


def test_the_oracle_reads_the_trace_the_testbed_replays(tmp_path, family_parts):  # noqa: F811
    cluster = family_parts[0]
    with pytest.raises(PlanError, match="--adapt oracle: .*edgeplan emulate CLUSTER --trace FILE"):
        trace_of_testbed(cluster, env={})
    dev = sorted(cluster.device_names())[0] if hasattr(cluster, "device_names") else cluster.devices[0].name
    (tmp_path / "t.yaml").write_text(f"duration_s: 30\nevents:\n  - {{at_s: 5, device: {dev}, cpu_scale: 0.5}}\n")
    (tmp_path / "state.json").write_text(json.dumps({"boards": {}, "trace": str(tmp_path / "t.yaml")}))
    tr = trace_of_testbed(cluster, env={"EDGEPLAN_TESTBED": str(tmp_path / "state.json")})
    assert [(e.at_s, e.device, e.scale) for e in tr.events] == [(5.0, dev, 0.5)]
    (tmp_path / "state.json").write_text(json.dumps({"boards": {}}))  # emulate without --trace
    with pytest.raises(PlanError, match="--adapt oracle"):
        trace_of_testbed(cluster, env={"EDGEPLAN_TESTBED": str(tmp_path / "state.json")})


def test_within_oracle_is_the_first_window_at_90_percent_of_the_oracles():
    from benchmarks.bench_adapt import within_oracle

    oracle = [i * 0.1 for i in range(1, 300)]  # 10 requests/s throughout
    # the run: 10/s until 10 s, then 2/s until 12.6 s, then 10/s; a change at 10 s and one at 20 s
    run = [t for t in oracle if t <= 10 or t > 12.6] + [10.5, 11.0, 11.5, 12.0, 12.5]
    got = within_oracle([10.0, 20.0], run, oracle, 30.0)
    assert got == [2.5, 0.0]  # (12.5, 13.5]: 9 of the oracle's 10 requests
    assert within_oracle([10.0], [], oracle, 30.0) == [math.inf]
