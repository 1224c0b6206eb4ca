"""Compile once (issue 12 item 2, first part): `edgeplan compile plans/` builds each distinct stage module once
and copies it into every plan that runs it; each plan folder is a complete, verified artifact folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeplan.codegen import manifest
from edgeplan.errors import CompileError
from edgeplan.planner import family as fm
from edgeplan.planner.plan import load

CLUSTER = """\
name: three-hosts
devices:
  - {name: a, profile: host, address: 127.0.0.1}
  - {name: b, profile: host, address: 127.0.0.1}
  - name: c
    profile: host
    address: 127.0.0.1
    overrides:
      units:
        cpu:
          throughput_gflops: {conv: 4, dwconv: 1, gemm: 4, norm: 1, pool: 1, elementwise: 1, reduce: 1, data: 1}
network:
  default: {bandwidth_mbps: 1000, latency_ms: 0.1}
"""


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    pytest.importorskip("torch", reason="traces lenet5")
    pytest.importorskip("onnxruntime", reason="compiles x86 stages with ONNX Runtime")
    from edgeplan.cli import app

    root = tmp_path_factory.mktemp("fam")
    (root / "c.yaml").write_text(CLUSTER)
    r = CliRunner().invoke(app, ["plan", "lenet5", "--cluster", str(root / "c.yaml"), "--batch", "8",
                                 "--microbatches", "4", "--min-gain", "0", "--variants", "slowdown:b=1,4",
                                 "--variants", "slowdown:a=1,4", "--out", str(root / "plans")])
    assert r.exit_code == 0, r.output
    return root


def test_each_distinct_module_is_built_once_and_held_once_by_its_board(family):
    from edgeplan.cli import app
    from edgeplan.planner.plan import Plan

    fam, plans = fm.load_family(family / "plans")
    jobs = sum(len(s.replicas) for p in plans.values() for s in p.stages)
    distinct = {(r.device, s.start, s.stop, r.target, r.samples) for p in plans.values() for s in p.stages
                for r in s.replicas}
    assert len(distinct) < jobs  # the family shares modules (else this test shows nothing)
    out = family / "art"
    r = CliRunner().invoke(app, ["compile", str(family / "plans"), "--out", str(out), "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
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
