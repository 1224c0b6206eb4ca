"""Compile once (issue 12 item 2, first part): `edgeplan compile plans/` builds each distinct stage module once
and copies it into every plan that runs it; each plan folder is a complete, verified artifact folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeplan.codegen import manifest
from edgeplan.errors import CompileError
from edgeplan.planner import family as fm


@pytest.fixture(scope="module")
def family(lenet5_family, tmp_path_factory):
    """The session's lenet5 family (tests/conftest.py: c.yaml, plans/), copied: these tests write into it."""
    import shutil

    pytest.importorskip("onnxruntime", reason="compiles x86 stages with ONNX Runtime")
    root = tmp_path_factory.mktemp("fam") / "fam"
    shutil.copytree(lenet5_family, root)
    return root


@pytest.fixture(scope="module")
def compiled(family):
    from edgeplan.cli import app

    out = family / "art"
    r = CliRunner().invoke(app, ["compile", str(family / "plans"), "--out", str(out), "--backend", "onnxruntime",
                                 "--cluster", str(family / "c.yaml")])
    assert r.exit_code == 0, r.output
    return out


def test_each_distinct_module_is_built_once_and_held_once_by_its_board(family, compiled):
    from edgeplan.planner.plan import Plan

    fam, plans = fm.load_family(family / "plans")
    jobs = sum(len(s.replicas) for p in plans.values() for s in p.stages)
    distinct = {(r.device, s.start, s.stop, r.target, r.samples) for p in plans.values() for s in p.stages
                for r in s.replicas}
    assert len(distinct) < jobs  # the family shares modules (else this test shows nothing)
    out = compiled
    assert manifest.verify(out) == []
    summary = json.loads((out / "compile-family.json").read_text())
    built = {(s.start, s.stop, r.target, r.samples) for p in plans.values() for s in p.stages for r in s.replicas}
    assert summary["modules_built"] == len(built)  # once per distinct module, whichever board runs it
    assert sorted(summary["plans"]) == sorted(n.removesuffix(".json") for n in plans)
    assert summary["initial"] == fam.variants[0].plan.removesuffix(".json")
    assert (out / "family.json").read_text() == (family / "plans" / "family.json").read_text()
    modules = [m for b in summary["boards"].values() for m in b["modules"]]
    assert len(modules) == len(distinct)  # each board holds each module it may run once: no per-variant copies
    for k, (name, p) in enumerate(plans.items()):
        stem = name.removesuffix(".json")
        assert Plan.from_json(json.loads((out / stem / "plan.json").read_text())) == p
        head = json.loads((out / stem / "head.json").read_text())
        assert head["listen"].endswith(f":{7700 + 100 * k}")  # each variant's head and workers: own ports
        for s in p.stages:
            for rep in s.replicas:
                slot = next(x for x in summary["boards"][rep.device]["slots"][stem] if x["stage"] == s.index)
                spec = json.loads((out / rep.device / slot["spec"]).read_text())
                assert (spec["stage"], spec["lo"], spec["hi"]) == (s.index, slot["lo"], slot["hi"])
                assert int(spec["listen"].rsplit(":", 1)[1]) > 7700 + 100 * k
                assert (out / rep.device / slot["spec"]).parent.joinpath(spec["module"]).is_file()
    for device, board in summary["boards"].items():  # start.sh: one worker process per module, all its slots
        text = (out / device / "start.sh").read_text()
        workers = [line for line in text.splitlines() if "-m edgeplan_runtime.worker" in line]
        assert len(workers) == len(board["modules"])
        for mod, info in board["modules"].items():
            line = next(w for w in workers if f"{mod}/" in w)
            assert line.count("--stage ") == len(info["plans"])


def test_an_existing_folder_needs_force(family):
    from edgeplan.adapt.compile import compile_family

    out = family / "art2"
    compile_family(family / "plans", out, backend="onnxruntime")
    with pytest.raises(CompileError, match="--force"):
        compile_family(family / "plans", out, backend="onnxruntime")
    (out / "marker").write_text("old")
    compile_family(family / "plans", out, backend="onnxruntime", force=True)
    assert not (out / "marker").exists() and (out / "compile-family.json").is_file()
    assert not [p for p in family.iterdir() if p.name.startswith(".art2.tmp-")]


def test_the_compiled_family_switches_live_and_every_layout_answers_alike(compiled):
    """Real ONNX modules: requests switched between every variant's layout get the nominal layout's answers."""
    import threading

    import numpy as np

    from edgeplan.runtime.local import RandomInputs, start_pipeline

    p = start_pipeline(compiled, local=True)
    try:
        head = p.head
        xs = RandomInputs(next(s for _, s in p.artifacts.stages if s.stage == 0), head.batch, 90)
        nominal = [head.submit(xs[i]).result(timeout=30)[0] for i in range(6)]
        stop, names = threading.Event(), sorted(head.heads)

        def flip():
            k = 0
            while not stop.wait(0.05):
                k += 1
                head.switch(names[k % len(names)], "test")

        t = threading.Thread(target=flip)
        t.start()
        try:
            res = head.run(xs)
        finally:
            stop.set()
            t.join()
        assert res.completed == 90 and res.lost == 0 and res.duplicated == 0 and not res.failures
        assert sum(1 for v in res.variants.values() if v) >= 2, res.variants
        for i in range(6):
            np.testing.assert_allclose(res.outputs[i][0], nominal[i], rtol=1e-4, atol=1e-5)
    finally:
        p.close()


def test_cli_run_with_adapt_records_the_switching_in_the_report(compiled, tmp_path):
    from edgeplan.cli import app

    report = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["run", str(compiled), "--local", "--requests", "40", "--adapt", "heuristic",
                                 "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "adapt (heuristic):" in r.output and "lost 0, duplicated 0" in r.output
    rep = json.loads(report.read_text())["adapt"]
    assert rep["policy"] == "heuristic" and rep["lost"] == 0 and rep["duplicated"] == 0
    assert sum(rep["answered_by_variant"].values()) == 40
    assert rep["controller"]["policy"] == "heuristic"


def test_serve_with_adapt_runs_the_controller_behind_the_http_endpoint(compiled):
    import httpx
    import numpy as np

    from edgeplan.cli import AdaptPolicy, _adapt_hook
    from edgeplan.runtime.serve import Server

    box: dict = {}
    with Server(compiled, local=True, port=0, on_start=_adapt_hook(AdaptPolicy.heuristic, compiled, box)) as s:
        ctl = box["controller"]
        assert s.pipeline.controller is ctl and ctl.scale  # warmed up: a measured/predicted ratio per worker
        assert {k.split(":")[0] for k in ctl.scale} == set(s.head.heads)
        x = np.zeros((3, 1, 32, 32), np.float32)
        body = {"inputs": [{"name": s.head.input_specs[0][0], "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [3, 10]
        assert s.head.status()["variant"] == s.head.active
    assert ctl._stop.is_set()  # closing the server stopped the controller
