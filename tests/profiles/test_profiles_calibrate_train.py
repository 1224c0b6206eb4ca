"""`edgeplan calibrate TRAIN-REPORT` (profiles/calibrate_train.py) on synthetic training reports: the figures a
run would measure on a cluster whose training figures are known are priced by the cost model
(training.metrics.predict), written as a report, and the fit must recover the known figures; the refusals.

LeNet-5 on three Pi 3B, stage 0 on pi0 and stage 1 on pi1 (6 samples) + pi2 (2): every figure occurs (p2p
both ways, one all-reduce), and pi0 receives 8 samples' gradients in 2 transfers while pi1/pi2 receive 6 and 2
samples' activations in 1, so the point-to-point per-call and per-byte costs separate.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from benchmarks.bench_truth_train import three_rpi3b
from edgeplan import jsonio
from edgeplan.graph.load import build
from edgeplan.planner.api import evaluate, layout_from_text, plan_of
from edgeplan.planner.objective import Objective
from edgeplan.profiles import calibrate as cal_mod
from edgeplan.profiles import calibrate_train as ct
from edgeplan.profiles.calibrate import CalibrationError
from edgeplan.profiles.cost import build_cost_table
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import TrainingFigures
from edgeplan.profiles.report import figures_basis
from edgeplan.training import launch, metrics

TRUE = TrainingFigures(forward_factor=2.5, backward_factor=4.0, forward_layer_s=80e-6, backward_layer_s=150e-6,
                       call_s=0.003, call_peer_s=0.0007, optimizer_s_per_byte=20e-9, optimizer_call_s=0.0005,
                       p2p_call_s=0.0004, p2p_s_per_byte=30e-9, allreduce_call_s=0.0015)


@pytest.fixture(scope="module")
def graph():
    return build("lenet5").graph


def _plan(graph, cluster, text: str = "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu*0.75+pi2:cpu*0.25"):
    costs = build_cost_table(graph, cluster)
    obj = Objective(mode="training", objective="time", batch=32, microbatches=4, schedule="1f1b")
    lay = layout_from_text(costs, text, obj)
    return plan_of(costs, lay, obj, evaluate(costs, lay, obj), model=graph.name, graph_sha256=graph.digest(),
                   cluster=cluster.name, cluster_sha256=cluster.digest())


def _report(plan, graph, truth, iterations: int = 10) -> dict:
    """What `edgeplan train --report` writes for a run whose boards behave as ``truth`` prices them."""
    pred = metrics.predict(plan, graph, truth)
    cut = {s.index: s for s in plan.stages}
    stages = []
    for st in pred["stages"]:
        reps = []
        for r in st["replicas"]:
            s = st["stage"]
            # what this replica receives per micro-batch: stage 0 the gradients of stage 1's replicas (8 samples
            # in 2 transfers), stage 1 its own samples' activations (1 transfer); LeNet-5's cuts are one tensor
            per_sample = graph.cut_bytes[cut[s].stop if s == 0 else cut[s].start] / graph.batch
            one = len(plan.stages) == 1  # the whole model on one board: no point-to-point
            reps.append({"rank": 0, "device": r["device"], "unit": r["unit"], "samples": r["samples"],
                         "microbatches": iterations * plan.microbatches,
                         **{f: [r[f], None] for f in metrics.REPLICA_FIGURES},
                         "p2p_bytes": 0.0 if one else per_sample * r["samples"],
                         "p2p_transfers": 0.0 if one else 2.0 if s == 0 else 1.0})
        stages.append({"stage": st["stage"], "group": st["group"], "param_bytes": st["param_bytes"],
                       "allreduce_bytes": st["allreduce_bytes"], "allreduce_s": [st["allreduce_s"], None],
                       "replicas": reps})
    return {"kind": launch.REPORT_KIND, "schema_version": 1, "model": plan.model, "plan_sha256": plan.digest(),
            "cluster_sha256": plan.cluster_sha256, "plan": plan.to_json(), "iterations": iterations,
            "dilation": 1.0, "measured_iter_s": pred["iter_s"], "predicted_iter_s": plan.predicted.iter_s,
            "stages": stages}


def _truth(cluster, figures=TRUE):
    return dataclasses.replace(cluster, devices=tuple(
        dataclasses.replace(d, units=tuple(dataclasses.replace(u, training=figures) for u in d.units))
        for d in cluster.devices))


def test_fit_recovers_known_training_figures_and_the_planner_prices_them(tmp_path, graph):
    path = three_rpi3b(tmp_path)
    cluster = load_cluster(path)
    plan = _plan(graph, cluster)
    rep = jsonio.write(tmp_path / "train-report.json", _report(plan, graph, _truth(cluster)))
    # the calibrate entry point dispatches on the report's kind
    result, new = cal_mod.calibrate_files([rep], [], path, tmp_path / "cal.yaml", lambda p: graph)
    assert isinstance(result, ct.TrainCalibration)
    fitted = {(f.device, f.unit): f for f in result.fits}
    assert set(fitted) == {(f"pi{i}", "cpu") for i in range(3)}
    for f in result.fits:
        got = f.after
        assert got.forward_factor == pytest.approx(TRUE.forward_factor, rel=1e-3)
        assert got.backward_factor == pytest.approx(TRUE.backward_factor, rel=1e-3)
        # every replica runs 6 layers: per-layer and per-call costs do not separate; the per-call one is fitted
        assert got.forward_layer_s == 0.0 and got.backward_layer_s == 0.0
        assert got.forward_call_s == pytest.approx(6 * TRUE.forward_layer_s, rel=1e-2)
        assert got.backward_call_s == pytest.approx(6 * TRUE.backward_layer_s, rel=1e-2)
        assert got.optimizer_call_s == pytest.approx(TRUE.optimizer_call_s, rel=1e-2)
        assert got.call_s == pytest.approx(TRUE.call_s, rel=1e-3)
        assert got.call_peer_s == pytest.approx(TRUE.call_peer_s, rel=1e-3)
        assert got.optimizer_s_per_byte == pytest.approx(TRUE.optimizer_s_per_byte, rel=1e-3)
        assert got.p2p_call_s == pytest.approx(TRUE.p2p_call_s, rel=1e-2)
        assert got.p2p_s_per_byte == pytest.approx(TRUE.p2p_s_per_byte, rel=1e-2)
        assert got.allreduce_call_s == pytest.approx(TRUE.allreduce_call_s, rel=1e-3)
    # one all-reduce size: the per-byte cost cannot be told apart, and the fit says so
    assert any(n.startswith("all-reduce: one size per call") for n in result.notes)
    # written as device overrides that load back, and the planner prices training plans with them
    doc = yaml.safe_load((tmp_path / "cal.yaml").read_text())
    assert doc["devices"][0]["overrides"]["units"]["cpu"]["training"]["backward_factor"] == pytest.approx(4.0, rel=1e-4)
    assert load_cluster(tmp_path / "cal.yaml").device("pi1").unit("cpu").training.call_s == pytest.approx(0.003)
    # reports say which figures a plan rests on: the fitted training figures, with where they came from
    assert "training figures fitted (edgeplan calibrate: fit over 1 replica(s) of train-report.json" in \
        figures_basis(new.device("pi0").unit("cpu"))
    truth_iter = metrics.predict(plan, graph, _truth(cluster))["iter_s"]
    assert metrics.predict(plan, graph, new)["iter_s"] == pytest.approx(truth_iter, rel=1e-3)
    # the datasheet figures were off before (per stage: the iteration's terms can happen to cancel out)
    sheet, truth = (metrics.predict(plan, graph, c)["stages"][0]["replicas"][0] for c in (cluster, _truth(cluster)))
    assert abs(sheet["backward_s"] - truth["backward_s"]) > 0.1 * truth["backward_s"]
    assert result.mape("before") > 50 and result.mape("after") < 0.5
    # the inference figures are untouched: an inference plan prices the same on both clusters
    before_cost, after_cost = build_cost_table(graph, cluster), build_cost_table(graph, new)
    assert (before_cost.fwd_s == after_cost.fwd_s).all() and (before_cost.bwd_s == after_cost.bwd_s).all()
    text = ct.format_fit(result)
    assert "per-stage forward/backward MAPE" in text and "iteration measured" in text


def test_two_layouts_separate_the_per_call_from_the_per_layer_cost_and_price_an_unseen_layout(tmp_path, graph):
    """Boards whose module call costs 1 ms (forward) / 0.8 ms (backward) whatever its layers, plus 80 / 150 us
    per layer: the pipeline (6-layer stages) and the whole model on pi0 (12 layers, one call) separate the two,
    the fit recovers both, and an unseen layout (pi0 | pi1, M=4) is priced as the truth prices it. A per-layer
    fit alone could not: 12 layers at one call priced as 12 per-layer costs (the testbed's +30% one-board)."""
    truth_figs = dataclasses.replace(TRUE, forward_call_s=1e-3, backward_call_s=0.8e-3)
    path = three_rpi3b(tmp_path)
    cluster = load_cluster(path)
    truth = _truth(cluster, truth_figs)
    reps = []
    for tag, text in (("pipe", "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu*0.75+pi2:cpu*0.25"),
                      ("one", "lenet5 | 0-11@pi0:cpu")):
        plan = _plan(graph, cluster, text)
        reps.append(jsonio.write(tmp_path / f"train-report-{tag}.json", _report(plan, graph, truth)))
    result, new = ct.calibrate_files(reps, [], path, tmp_path / "cal.yaml", lambda p: graph)
    for f in result.fits:
        got = f.after
        assert got.forward_factor == pytest.approx(truth_figs.forward_factor, rel=1e-3)
        assert got.forward_layer_s == pytest.approx(truth_figs.forward_layer_s, rel=1e-2)
        assert got.forward_call_s == pytest.approx(truth_figs.forward_call_s, rel=1e-2)
        assert got.backward_layer_s == pytest.approx(truth_figs.backward_layer_s, rel=1e-2)
        assert got.backward_call_s == pytest.approx(truth_figs.backward_call_s, rel=1e-2)
    # written and loaded back (forward_call_us / backward_call_us), and counted in the digest
    assert load_cluster(tmp_path / "cal.yaml").device("pi0").unit("cpu").training.forward_call_s == \
        pytest.approx(1e-3, rel=1e-2)
    unseen = _plan(graph, cluster, "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu")
    want = metrics.predict(unseen, graph, truth)
    got = metrics.predict(unseen, graph, new)
    assert got["iter_s"] == pytest.approx(want["iter_s"], rel=1e-3)
    r0 = got["stages"][0]["replicas"][0]
    assert r0["forward_s"] == pytest.approx(want["stages"][0]["replicas"][0]["forward_s"], rel=1e-3)
    assert r0["call_s"] == pytest.approx(want["stages"][0]["replicas"][0]["call_s"], rel=1e-3)
    assert "ms/call" in ct.format_fit(result)


def test_refusals_and_the_peak_clamp(tmp_path, graph):
    path = three_rpi3b(tmp_path)
    cluster = load_cluster(path)
    plan = _plan(graph, cluster)
    rep = _report(plan, graph, _truth(cluster))
    out = tmp_path / "cal.yaml"
    # another cluster (its hash): refused, naming both
    other = tmp_path / "other.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["network"]["default"]["bandwidth_mbps"] = 50
    other.write_text(yaml.safe_dump(doc))
    r = jsonio.write(tmp_path / "r.json", rep)
    with pytest.raises(CalibrationError, match=r"plan was made on cluster sha256 \w{12}, but .*other.yaml is \w{12}"):
        ct.calibrate_files([r], [], other, out, lambda p: graph)
    # another plan (its hash)
    bad = jsonio.write(tmp_path / "bad.json", {**rep, "plan_sha256": "0" * 64})
    with pytest.raises(CalibrationError, match="report is a run of plan sha256 000000000000"):
        ct.calibrate_files([bad], [], path, out, lambda p: graph)
    # too few samples
    few = jsonio.write(tmp_path / "few.json", _report(plan, graph, _truth(cluster), iterations=2))
    with pytest.raises(CalibrationError, match="2 iteration.s. measured, fewer than 5"):
        ct.calibrate_files([few], [], path, out, lambda p: graph)
    # an inference run report mixed in is refused by the entry point
    with pytest.raises(CalibrationError, match="training reports .* alone"):
        cal_mod.calibrate_files([r, jsonio.write(tmp_path / "inf.json", {"model": "lenet5"})], [], path, out,
                                lambda p: graph)
    # a board measured faster than its peak FLOP/s: clamped, with one line that says so
    fast = jsonio.write(tmp_path / "fast.json", _report(plan, graph, _truth(cluster, TrainingFigures(
        forward_factor=0.001))))
    result, _ = ct.calibrate_files([fast], [], path, out, lambda p: graph)
    pi0 = next(f for f in result.fits if f.device == "pi0")
    assert any("faster than the unit's peak FLOP/s; clamped to the peak" in n for n in pi0.notes)
    pred = metrics.predict(plan, graph, result.cluster)["stages"][0]["replicas"][0]
    assert pred["forward_s"] == pytest.approx(pred["forward_peak_s"], rel=1e-6)
