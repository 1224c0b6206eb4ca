"""The board-side profiling kit (issue 14 item 2), x86 + ONNX Runtime: compile with the kit, run
`profile.sh` as a board would, load its overlay as a profile, and compare what that profile predicts for
each compiled stage with the stage module timed by the board's own loader.

Not a speed test: the comparison bounds how far the kit's profile may be from the stages it describes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("onnxruntime")

from edgeplan.codegen.compile import compile_plan  # noqa: E402
from edgeplan.codegen.manifest import verify  # noqa: E402
from edgeplan.graph.load import build  # noqa: E402
from edgeplan.planner.api import make_plan  # noqa: E402
from edgeplan.planner.objective import Objective  # noqa: E402
from edgeplan.profiles.calibrate import calibrate_files, predicted_module_s  # noqa: E402
from edgeplan.profiles.load import load_cluster  # noqa: E402
from edgeplan.runtime.backend_onnxruntime import load_model_file  # noqa: E402

MODEL = "resnet32-cifar"


def _fast_s(run, xs, n=40):
    for _ in range(3):
        run(xs)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(xs)
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 10))  # as the kit times: other tenants of this machine filtered out


def test_kit_measures_a_profile_that_predicts_the_compiled_stages(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": "two-hosts", "network": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}},
        "devices": [{"name": n, "profile": "host", "address": "127.0.0.1"} for n in ("h1", "h2")]}))
    cluster = load_cluster(path)
    traced = build(MODEL)
    plan = make_plan(traced.graph, cluster, Objective(batch=4), min_gain=0.0)
    art = compile_plan(plan, MODEL, tmp_path / "art", cluster=cluster, backend="onnxruntime", traced=traced,
                       profiling_kit=True)
    assert verify(art) == []  # the kit is part of the manifest
    env = {**os.environ, "PYTHON": sys.executable, "EDGEPLAN_THREADS": "1"}
    overlays = {}
    for dev in ("h1", "h2"):
        out = subprocess.run(["sh", str(art / dev / "profile.sh"), "--seconds", "0.1"], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "runtime hop:" in out.stderr
        doc = json.loads(out.stdout)
        assert doc["extends"] == "host"
        (tmp_path / f"{dev}-measured.yaml").write_text(out.stdout)
        overlays[dev] = doc
    measured = load_cluster(_write_cluster(tmp_path, path))
    kit_unit = measured.device("h1").unit("cpu")
    assert {"throughput_gflops.conv", "layer_overhead_us", "hop_overhead_us", "hop_byte_ns"} <= {
        m.field for m in kit_unit.measured}
    assert kit_unit.hop_byte_s == pytest.approx(overlays["h1"]["units"]["cpu"]["hop_byte_ns"] * 1e-9)
    assert all(m.backend in ("onnxruntime", "edgeplan_runtime.wire") for m in kit_unit.measured)
    assert measured.device("h1").estimate  # power, memory and classes the model lacks are not measured
    errs_kit, errs_sheet, stage_s = [], [], []
    for st in plan.to_json()["stages"]:
        r = st["replicas"][0]
        spec = json.loads((art / r["device"] / f"stage{st['index']}" / "stage.json").read_text())
        run = load_model_file(art / r["device"] / f"stage{st['index']}" / spec["module"], 1)
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal(t["shape"]).astype(t["dtype"]) for t in spec["inputs"]]
        t = _fast_s(run, xs)
        stage_s.append(t)
        errs_kit.append(abs(predicted_module_s(traced.graph, measured, st) - t) / t)
        errs_sheet.append(abs(predicted_module_s(traced.graph, cluster, st) - t) / t)
    # the kit's window timings, fitted like a run (per op class where the 8 windows separate them)
    result, fitted = calibrate_files([], [art], path, tmp_path / "kit-calibrated.yaml", lambda p: traced.graph,
                                     kits=[art / d / "profiling" / "timings.json" for d in ("h1", "h2")])
    assert {f.device for f in result.fits} == {"h1", "h2"} and all(f.calls >= 6 for f in result.fits)
    errs_fit = [abs(predicted_module_s(traced.graph, fitted, st) - t) / t for st, t in zip(plan.to_json()["stages"],
                                                                                          stage_s, strict=True)]
    print(f"stage module time predicted from the kit's profile: {[f'{e:.0%}' for e in errs_kit]} off; "
          f"from the kit's windows fitted: {[f'{e:.0%}' for e in errs_fit]}; "
          f"from the datasheet profile: {[f'{e:.0%}' for e in errs_sheet]} off")
    # the same stage timed twice a second apart differs by up to 2.6x on this shared machine: a bound, not a
    # target (benchmarks hold the targets)
    assert max(errs_fit) < 1.0
    # single layers time without the fusions ONNX Runtime makes inside a stage (conv+bn+relu), so the kit's
    # figures price stages high (seen 50-65% here, where the datasheet host profile happens to be within 6% on
    # one thread): within 2x is what it holds today; calibration from runs (edgeplan calibrate) refines it
    assert max(errs_kit) < 1.0


def _write_cluster(tmp_path, path):
    doc = yaml.safe_load(path.read_text())
    for d in doc["devices"]:
        d["profile"] = f"{d['name']}-measured.yaml"
    out = tmp_path / "measured-cluster.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out
