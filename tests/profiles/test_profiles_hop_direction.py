"""The runtime's per-byte cost by direction (issue 14): ``hop_send_byte_ns`` prices the bytes a stage call sends
where that costs other than receiving (the emulated testbed: a veth runs the receiver's protocol work in the
sender's context, ~15x the receiver's CPU per byte). Loaded and checked, priced by the planner as the
independent oracle prices it, fitted by `edgeplan calibrate` where replicas mix bytes in and out differently,
kept in proportion where they only differ in bytes, and written back with its provenance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from edgeplan.errors import ProfileError
from edgeplan.planner import search
from edgeplan.planner.costmodel import Prefix
from edgeplan.planner.objective import Objective
from edgeplan.planner.synthetic import random_costs
from edgeplan.profiles import calibrate as cal
from edgeplan.profiles.cost import build_cost_table
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.report import format_cluster
from tests.planner.bruteforce import rel_close
from tests.planner.oracle import oracle
from tests.profiles.test_profiles_calibrate import plan_and_report, synthetic_graph

PER_CALL, IN, OUT = 0.0005, 1e-9, 15e-9  # a testbed-like board: receiving cheap, sending 15x dearer


def _cluster(tmp_path, cpu: dict | None = None, names=("a", "b")):
    over = {"overrides": {"units": {"cpu": cpu}}} if cpu else {}
    doc = {"name": "synth", "devices": [{"name": n, "profile": "host", "address": "127.0.0.1", **over}
                                        for n in names],
           "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_send_figure_prices_the_bytes_a_stage_sends(tmp_path):
    graph = synthetic_graph()
    cluster = load_cluster(_cluster(tmp_path, {"hop_byte_ns": 1.0, "hop_send_byte_ns": 15.0}))
    costs = build_cost_table(graph, cluster)
    assert costs.hop_byte_s.tolist() == pytest.approx([IN, IN]) and costs.hop_send_byte_s.tolist() == pytest.approx(
        [OUT, OUT])
    cut = costs.cut_bytes
    pf = Prefix(costs, Objective(batch=4))
    module = pf.F[0, 9] - pf.F[0, 3]
    assert pf.per_sample(0, 3, 9) - module == pytest.approx(IN * cut[3] + OUT * cut[9])
    # a training step's backward call sends the gradient of its input cut back: each cut crosses both ways
    tr = Prefix(costs, Objective(mode="training", objective="time", batch=4))
    assert tr.per_sample(0, 3, 9) - (tr.F[0, 9] - tr.F[0, 3]) == pytest.approx((IN + OUT) * (cut[3] + cut[9]))
    assert tr.forward_time(0, 3, 9, 2) == pytest.approx(
        2 * (tr.Ffwd[0, 9] - tr.Ffwd[0, 3] + IN * cut[3] + OUT * cut[9]) + tr.per_call(0, 3, 9) / 2)
    # said where the figures are shown; an estimate until measured; a file without it prices as before
    unit = cluster.device("a").unit("cpu")
    assert "hop_send_byte_ns" in unit.estimated_figures()
    assert "1 ns/B in, 15 ns/B out per stage call" in format_cluster(cluster)
    plain = load_cluster(_cluster(tmp_path, {"hop_byte_ns": 1.0}))
    assert build_cost_table(graph, plain).hop_send_byte_s is None
    assert "hop_send_byte_ns" not in plain.device("a").unit("cpu").estimated_figures()
    assert cluster.digest() != plain.digest()


def test_a_send_figure_out_of_range_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ProfileError, match="hop_send_byte_ns"):
        load_cluster(_cluster(tmp_path, {"hop_send_byte_ns": 5000.0}))


@pytest.mark.parametrize("name", ["throughput", "latency"])
def test_the_dp_stays_exact_when_sending_costs_more_than_receiving(name):
    """The oracle (tests/planner/oracle.py: no planner pricing code) prices each replica's bytes in and out
    at their own figure; the DP's optimum equals it, and on some instance the send figure moves the optimum
    (else this test could not tell the two pricings apart)."""
    obj = Objective(objective=name, batch=4) if name == "throughput" else Objective(
        objective=name, batch=4, microbatches=2)
    checked = moved = 0
    for seed in range(8):  # the instances of tests/planner/test_planner_oracle.py
        base = random_costs(300 + seed, 5, 3, 2 + seed % 2, dag=True, units_per_device=1 + seed % 2, npu_gaps=True,
                            ram_mb=(2, 24), uniform_links=seed % 3 != 0)
        rng = np.random.default_rng(seed)
        send = base.hop_byte_s * rng.uniform(5, 40) + 20e-9  # one rule for every unit: board kinds stay kinds
        costs = dataclasses.replace(base, hop_send_byte_s=send)
        want = oracle(costs, obj)
        res = search.solve(costs, obj)  # not always flagged exact: on non-uniform links a group's sends are
        # priced by their busiest sender in the DP, and its value is then a lower bound that the oracle confirms
        got = None if res.evaluation is None else res.evaluation.value(obj)
        assert (want is None) == (got is None), (seed, want, got)
        if want is None:
            continue
        assert rel_close(got, want), (seed, got, want, res.layout)
        checked += 1
        moved += not rel_close(oracle(base, obj), want)
    assert checked >= 4 and moved >= 1


def _runs(graph, cluster, mixes, hop=lambda i, o: PER_CALL + IN * i + OUT * o, noise=0.0, seed=0):
    """One report per (bytes in, bytes out) of ``mixes``: one stage on board a whose worker CPU per call is a
    4 ms module + ``hop(in, out)``, times (1 + uniform noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for r, (b_in, b_out) in enumerate(mixes):
        plan, rep = plan_and_report(graph, cluster, [], lambda s: "a", [0.004], runs=100)
        (rr,) = rep["stages"][0]["replicas"]
        h = hop(b_in, b_out) * (1 + rng.uniform(-noise, noise))
        rr.update(cpu_s=100 * (0.004 + h), compute_cpu_s=100 * 0.004, bytes_in=100 * b_in, bytes_out=100 * b_out)
        out.append((plan, graph, cal.observations(plan, rep, f"r{r}.json")[0]))
    return out


MIXES = [(200_000, 2_000), (50_000, 200_000), (800_000, 50_000), (10_000, 400_000), (300_000, 300_000)]


def test_calibrate_fits_each_direction_where_the_replicas_mix_them_differently(tmp_path):
    graph = synthetic_graph()
    path = _cluster(tmp_path, names=("a",))
    cluster = load_cluster(path)
    result = cal.fit(cluster, _runs(graph, cluster, MIXES, noise=0.02))
    (f,) = result.fits
    assert f.hop_byte_fitted and f.hop_direction_fitted
    assert f.after.hop_byte_s == pytest.approx(IN, abs=0.5e-9)
    assert f.after.hop_send_byte_s == pytest.approx(OUT, rel=0.05)
    assert f.after.hop_overhead_s == pytest.approx(PER_CALL, rel=0.15)
    assert "per byte out" in cal.format_fit(result)
    # one figure for both directions cannot price these replicas: its error is several times the fit's
    sym = cal.fit(cluster, [(p, g, [dataclasses.replace(o, bytes_in_per_call=None, bytes_out_per_call=None)
                                    for o in obs]) for p, g, obs in _runs(graph, cluster, MIXES, noise=0.02)])
    err = {name: np.mean([abs(r.hop_after_s - r.hop_measured_s) / r.hop_measured_s for r in res.rows])
           for name, res in (("direction", result), ("one", sym))}
    assert err["direction"] < 0.05 < err["one"]
    new = cal.write_calibrated(path, result, tmp_path / "cal.yaml", sources="r0..r4.json", backend="onnxruntime",
                               when="2026-01-01T00:00:00Z")
    got = new.device("a").unit("cpu")
    assert got.hop_send_byte_s == pytest.approx(f.after.hop_send_byte_s, rel=1e-4)
    assert not {"hop_byte_ns", "hop_send_byte_ns"} & set(got.estimated_figures())
    (m,) = [m for m in got.measured if m.field == "hop_send_byte_ns"]
    assert "per byte out x bytes out" in m.how and m.source == "r0..r4.json"


def test_bytes_that_differ_only_in_amount_keep_the_files_ratio_of_send_to_receive(tmp_path):
    """Replicas whose bytes in and out grow together cannot split the two directions: one factor scales the
    file's two figures (a testbed file's 1 : 15), so a re-plan that turns a receiver into a sender is still
    priced by direction."""
    graph = synthetic_graph()
    path = _cluster(tmp_path, {"hop_byte_ns": 0.5, "hop_send_byte_ns": 7.5}, names=("a",))
    cluster = load_cluster(path)
    together = [(b, b // 10) for b in (20_000, 100_000, 400_000, 1_600_000)]
    (f,) = cal.fit(cluster, _runs(graph, cluster, together)).fits
    assert f.hop_byte_fitted and not f.hop_direction_fitted
    assert f.after.hop_send_byte_s / f.after.hop_byte_s == pytest.approx(15.0)
    assert f.after.hop_byte_s == pytest.approx(IN, rel=0.02)  # the truth is the file's x 2, both ways
    # one run: per call only, priced by direction (the median of hop - in x bytes in - out x bytes out)
    (g,) = cal.fit(cluster, _runs(graph, cluster, [(200_000, 2_000)])).fits
    assert not g.hop_byte_fitted and g.after.hop_send_byte_s == cluster.device("a").unit("cpu").hop_send_byte_s
    assert g.after.hop_overhead_s == pytest.approx(PER_CALL + 0.5e-9 * 200_000 + 7.5e-9 * 2_000, rel=1e-6)
    assert not any("clamped to 0" in n for n in g.notes)
    # a hop below what the file's per-byte figures alone price: per call 0, and one line says so
    (h,) = cal.fit(cluster, _runs(graph, cluster, [(2_000, 200_000)], hop=lambda i, o: 0.001)).fits
    assert h.after.hop_overhead_s == 0.0
    (clamp,) = [n for n in h.notes if "clamped to 0" in n]
    assert "price 1.5 ms of a hop measured at 1 ms per call" in clamp and "\n" not in clamp


def test_a_scaled_twin_takes_a_send_figure_only_where_it_makes_the_board_slower(tmp_path):
    """The testbed's boards are one CPU at several quotas: a board no run used takes the fitted one's send
    figure scaled, unless that would make it cheaper to send from (a re-plan must not move onto it on a guess)."""
    graph = synthetic_graph()
    a = load_cluster(_cluster(tmp_path, {"hop_byte_ns": 2.0, "hop_send_byte_ns": 30.0}, names=("a",)))
    a = a.device("a").unit("cpu")
    half = {"throughput_gflops": {c: v / 2e9 for c, v in a.throughput}, "mem_bandwidth_gbs": a.mem_bandwidth / 2e9,
            "layer_overhead_us": a.layer_overhead_s * 2e6, "hop_overhead_us": a.hop_overhead_s * 2e6,
            "hop_byte_ns": 4.0, "hop_send_byte_ns": 60.0}
    doc = {"name": "synth", "devices": [
        {"name": "a", "profile": "host", "address": "127.0.0.1",
         "overrides": {"units": {"cpu": {"hop_byte_ns": 2.0, "hop_send_byte_ns": 30.0}}}},
        {"name": "b", "profile": "host", "address": "127.0.0.1", "overrides": {"units": {"cpu": half}}}],
        "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    path = _write(tmp_path, doc)
    cluster = load_cluster(path)
    assert cal._twin_scale(cluster.device("a").unit("cpu"), cluster.device("b").unit("cpu")) == pytest.approx(0.5)
    for scale, slower in ((2.0, True), (0.5, False)):  # a's true per-byte costs: 2x / 0.5x its file's, both ways
        hop = lambda i, o, s=scale: PER_CALL + s * (2e-9 * i + 30e-9 * o)  # noqa: E731
        runs = _runs(graph, cluster, [(b, b // 10) for b in (20_000, 100_000, 400_000, 1_600_000)], hop=hop)
        result = cal.fit(cluster, runs)
        twin = next(f for f in result.fits if f.device == "b")
        assert twin.inferred_from == "a"
        want = 60e-9 * scale if slower else 60e-9
        assert twin.after.hop_send_byte_s == pytest.approx(want, rel=0.02)
        assert any("hop_send_byte_ns" in n for n in twin.notes) == (not slower)


def _write(tmp_path, doc):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
