"""Issue 14 item 5, training (netns tier): train, calibrate from those runs, re-plan, train the re-plan.

LeNet-5 on three Pi 3B of examples/clusters/ten-rpi3b.yaml, each board a network namespace with a CPU quota
and 94 Mbit/s shaped links. The first round runs two layouts on the rpi3b datasheet profile: stage 0 on pi0,
stage 1 on pi1 + pi2 with 6 and 2 of each micro-batch's 8 samples (every figure occurs: point-to-point both
ways, a gradient all-reduce), and the whole model on pi0 (the same layers at other sample counts and stage
sizes; one layout alone does not separate per-layer from per-sample costs). `edgeplan calibrate` fits both
runs; the planner then re-plans on the calibrated cluster (whatever layout it picks) and that plan is trained,
its measured iteration and per-stage forward/backward set against the planner's own prediction. Last, a
pipeline no calibration run had (stage 0 on pi0, stage 1 on pi1), priced on the same fit.

The emulated boards run on a notional host 2x a Pi 3B (each board gets half a core instead of the ~0.04 this
machine's real speed would give, which makes start-up take minutes): they are faster than a real Pi 3B by this
machine's real/notional speed, which is exactly the kind of datasheet error calibration must remove.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from benchmarks.bench_truth_train import plan_layout, replan, three_rpi3b, train  # noqa: E402
from edgeplan import jsonio  # noqa: E402
from edgeplan.graph.load import build  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.planner.textform import to_str  # noqa: E402
from edgeplan.profiles import calibrate_train as ct  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from edgeplan.testbed import emulate, netns  # noqa: E402
from tests.tiers import netns_tier  # noqa: E402

LAYOUT = "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu*0.75+pi2:cpu*0.25"
ONE_BOARD = "lenet5 | 0-11@pi0:cpu"
UNSEEN = "lenet5 | 0-5@pi0:cpu | 6-11@pi1:cpu"
OBJ = Objective(mode="training", objective="time", batch=32, microbatches=4, schedule="1f1b")
ITERS = 40  # 160 micro-batches per replica (the fit needs 20), 40 all-reduces; the median of 39 iterations (metrics)
BOARD_CORES = 0.5


def _plan(graph, cluster_path: Path, text: str = LAYOUT):
    return plan_layout(graph, cluster_path, text, OBJ.microbatches, OBJ.batch)


def _train(plan, cluster, tmp: Path, tag: str) -> tuple[dict, Path]:
    return train(plan, cluster, tmp, tag, ITERS, OBJ.batch)


def _errors(rep: dict) -> tuple[float, float]:
    """(mean relative error of each stage replica's time per micro-batch: forward + backward + the call's own
    cost, each [measured, predicted]; relative error of the iteration time)."""
    fig = ("forward_s", "backward_s", "call_s")
    errs = [abs(sum(r[f][1] for f in fig) - sum(r[f][0] for f in fig)) / sum(r[f][0] for f in fig)
            for st in rep["stages"] for r in st["replicas"]]
    return float(np.mean(errs)), abs(rep["predicted_iter_s"] - rep["measured_iter_s"]) / rep["measured_iter_s"]


@pytest.mark.netns
@netns_tier
def test_emulated_train_calibrate_replan_train(tmp_path, monkeypatch):
    cluster_path = three_rpi3b(tmp_path)
    spec = load_cluster(cluster_path)
    graph = build("lenet5").graph
    pi = emulate.board_speed(spec, "pi0")
    with emulate.testbed(spec, host_core_flops=pi / BOARD_CORES, echo=lambda *_: None,
                         max_board_cores=BOARD_CORES) as (bed, shape):
        monkeypatch.setenv(emulate.ENV_VAR, str(jsonio.write(tmp_path / "testbed.json",
                                                                emulate.state_json(bed, shape))))
        rep0, path0 = _train(*_plan(graph, cluster_path), tmp_path, "0")
        _, path_one = _train(*_plan(graph, cluster_path, ONE_BOARD), tmp_path, "one")
        result, _ = ct.calibrate_files([path0, path_one], [], cluster_path, tmp_path / "calibrated.yaml",
                                       lambda p: graph)
        plan1, cluster1 = replan(graph, tmp_path / "calibrated.yaml", OBJ.microbatches, OBJ.batch)
        assert plan1.cluster_sha256 != rep0["cluster_sha256"]  # planned on the fitted figures
        rep1, _ = _train(plan1, cluster1, tmp_path, "replan")
        rep_new, _ = _train(*_plan(graph, tmp_path / "calibrated.yaml", UNSEEN), tmp_path, "unseen")
    assert netns.leftovers() == []
    stage0, iter0 = _errors(rep0)
    stage1, iter1 = _errors(rep1)
    assert rep1["predicted_iter_s"] == pytest.approx(plan1.predicted.iter_s)  # the planner's own figure
    print(f"re-plan: {to_str(plan1)} M={plan1.microbatches}")
    print(f"stage time per micro-batch, error per replica {stage0:.0%} (datasheet, {LAYOUT}) -> {stage1:.0%} "
          f"(re-plan); "
          f"iteration {rep0['measured_iter_s'] * 1e3:.1f} ms measured vs {rep0['predicted_iter_s'] * 1e3:.1f} "
          f"predicted ({iter0:.0%}) -> {rep1['measured_iter_s'] * 1e3:.1f} vs "
          f"{rep1['predicted_iter_s'] * 1e3:.1f} ({iter1:.0%})")
    unseen = (rep_new["predicted_iter_s"] - rep_new["measured_iter_s"]) / rep_new["measured_iter_s"]
    print(f"unseen layout {UNSEEN}: {rep_new['measured_iter_s'] * 1e3:.1f} ms measured vs "
          f"{rep_new['predicted_iter_s'] * 1e3:.1f} predicted ({unseen:+.0%})")
    print(ct.format_fit(result))
    # Margins, from this session's runs (load 0.3-2.1; `python -m benchmarks.bench_truth_train`, three runs,
    # and this test). The planner's re-plan on the fit was the whole model on pi1 every time: iteration -1, +15,
    # -9, -1% (the same work on pi0 in the same runs read 18.8, 18.1, 17.3 ms, on pi1 16.4, 19.3, 17.2: board to
    # board and run to run, not a priced term); stage time per micro-batch 7-33% after calibration against
    # 550-740% before (the datasheet's 22 ms per call). Margins: iteration 30% (15% x 2 for a loaded 2-core CI
    # machine; was 45%), stage 40% (33% x 1.2). The unseen pipeline read +1, +6, +17, +19% (all in the fast
    # mode), earlier sessions' slow mode -23..-30%: 40% unchanged. 2026-12-01 06:30-06:45 (load 1-2), three
    # runs: the same unseen layout measured 18.1, 27.2 and 22.1 ms per iteration (+41, +3, +22% against its
    # price), the re-plan's stages 2, 38 and 1% and its iteration 10, 23 and 5%: one run of the emulated
    # pipeline moves by +-20%, so stage 50% (38% x 1.3) and unseen 60% (41% x 1.5); a broken fit reads
    # 250-600% here (the "before" figures), far past either.
    assert stage1 < stage0 and iter1 < iter0
    assert stage1 < STAGE_MARGIN, f"stage time error after calibration {stage1:.0%} (margin {STAGE_MARGIN:.0%})"
    assert iter1 < MARGIN, (f"re-plan {to_str(plan1)}: iteration time error after calibration {iter1:.0%} "
                            f"(margin {MARGIN:.0%})")
    # The unseen layout, priced by T = sum p + (M-1) max p + max tail on a fit over both first-round layouts
    # (per-sample, per-call and per-layer costs separate only across layouts of other layer counts).
    assert abs(unseen) < UNSEEN_MARGIN, f"unseen layout: iteration error {unseen:+.0%} (margin {UNSEEN_MARGIN:.0%})"


MARGIN = 0.30
STAGE_MARGIN = 0.50
UNSEEN_MARGIN = 0.60
