"""compile_plan: artifact layout, golden launchers and stage.json, manifest verify, atomic writes, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.codegen import manifest
from edgeplan.codegen.compile import HEAD_PORT, compile_plan, network_host
from edgeplan.errors import ArtifactError, CompileError, PlanError
from edgeplan.planner.plan import Plan
from edgeplan.profiles.model import Cluster, ComputeUnit, Device, Link
from edgeplan.runtime.spec import StageSpec

from .codegen_helpers import TEXT_TARGET, fx_trace, make_plan
from .test_codegen_split import Branchy

BOARDS = ("rpi4-a", "orangepi5", "jetson")


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    return fx_trace(Branchy(), (1, 3, 8, 8), "branchy")


def _plan(traced, **kw):
    # stage 0 on rpi4-a; stage 1 on orangepi5 (3 samples) + jetson (1 sample); stage 2 back on rpi4-a
    return make_plan(traced.graph, [3, 8], [[("rpi4-a", 4)], [("orangepi5", 3), ("jetson", 1)], [("rpi4-a", 4)]],
                     target=TEXT_TARGET.name, microbatches=2, head="rpi4-a", **kw)


def _cluster():
    unit = ComputeUnit(name="cpu", kind="cpu", target=TEXT_TARGET.name, throughput=(("conv", 1e9),),
                       mem_bandwidth=1e9, busy_power_w=5.0, target_options=(("mcpu", "cortex-a72"),))
    devices = tuple(Device(name=n, profile="test", address=a, ram_bytes=1 << 30, idle_power_w=2.0, units=(unit,))
                    for n, a in zip(BOARDS, ("pi@10.0.0.11", "10.0.0.12:2222", "jetson.local"), strict=True))
    return Cluster(name="shelf", devices=devices, default_link=Link("*", "*", 1.25e7, 1e-3))


def _compile(traced, out, **kw):
    kw.setdefault("cluster", _cluster())
    return compile_plan(_plan(traced), "branchy", out, traced=traced, **kw)


def test_layout_and_stage_specs(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "plan.json", "head.json", "compile-report.json", *BOARDS])
    rpi = out / "rpi4-a"
    assert sorted(p.name for p in rpi.iterdir()) == sorted(
        ["stage0", "stage2", "start.sh", "edgeplan-stage.service", "README.txt", "edgeplan_runtime"])
    assert (rpi / "edgeplan_runtime" / "spec.py").read_bytes() == Path("edgeplan/runtime/spec.py").read_bytes()
    assert (rpi / "start.sh").stat().st_mode & 0o111
    s1 = [StageSpec.load(str(out / d / "stage1" / "stage.json")) for d in ("orangepi5", "jetson")]
    assert [(s.lo, s.hi) for s in s1] == [(0, 3), (3, 4)]
    assert all(s.microbatch == 4 for s in s1)
    assert s1[0].inputs[0].shape[0] == 3 and s1[1].inputs[0].shape[0] == 1
    assert [p.address for p in s1[0].upstream] == [f"10.0.0.11:{HEAD_PORT + 1}"]
    assert s1[1].downstream[0].device == "rpi4-a" and s1[1].downstream[0].stage == 2
    s0 = StageSpec.load(str(rpi / "stage0" / "stage.json"))
    assert s0.upstream[0].device == "head" and s0.listen == f"10.0.0.11:{HEAD_PORT + 1}"  # its own address
    assert [p.address for p in s0.downstream] == [f"10.0.0.12:{HEAD_PORT + 2}", f"jetson.local:{HEAD_PORT + 3}"]

    ports = {(s.device, s.stage): s.listen for s in [s0, *s1]}
    assert len(set(ports.values())) == len(ports)
    # stage 1's inputs are what stage 0 returns: names and shapes agree across the cut
    assert [t.name for t in s1[0].inputs] == [t.name for t in s0.outputs]
    assert "mcpu" in (out / "jetson" / "stage1" / "module.py").read_text()
    assert Plan.from_json(jsonio.read(out / "plan.json")) == _plan(traced)
    assert manifest.verify(out) == []


def test_workers_bind_a_wildcard_only_when_asked(traced, tmp_path):
    out = _compile(traced, tmp_path / "art", bind_any=True)
    s0 = StageSpec.load(str(out / "rpi4-a" / "stage0" / "stage.json"))
    assert s0.listen == f"0.0.0.0:{HEAD_PORT + 1}"
    assert [p.address for p in s0.downstream][0] == f"10.0.0.12:{HEAD_PORT + 2}"  # peers still use addresses


def test_golden_launchers(traced, tmp_path, golden):
    out = _compile(traced, tmp_path / "art")
    for device in BOARDS:
        for name in ("start.sh", "edgeplan-stage.service", "README.txt"):
            golden.check(f"launchers/{device}/{name}", (out / device / name).read_text())
        for stage_json in sorted((out / device).glob("stage*/stage.json")):
            golden.check(f"launchers/{device}/{stage_json.parent.name}/stage.json", stage_json.read_text())
    golden.check("launchers/head.json", (out / "head.json").read_text())


def test_cluster_secret_env_reaches_the_board_launchers(traced, tmp_path):
    """With the cluster's secret_env, every worker start.sh starts authenticates frames with the secret it names."""
    import dataclasses

    out = _compile(traced, tmp_path / "art", cluster=dataclasses.replace(_cluster(), secret_env="SHELF_SECRET"))
    for device in BOARDS:
        start = (out / device / "start.sh").read_text()
        workers = [line for line in start.splitlines() if "edgeplan_runtime.worker" in line]
        assert workers and all(line.endswith("--secret-env SHELF_SECRET &") for line in workers)
        assert 'if [ -z "${SHELF_SECRET:-}" ] && [ -r /etc/edgeplan/secret.env ]' in start
        assert subprocess.run(["sh", "-n", str(out / device / "start.sh")]).returncode == 0
        assert "EnvironmentFile=/etc/edgeplan/secret.env" in (out / device / "edgeplan-stage.service").read_text()
        assert "SHELF_SECRET" in (out / device / "README.txt").read_text()


FAKE_PYTHON = """#!/bin/sh
# stands in for python3: $4 is the stage.json path start.sh passes to the worker
[ "$1" = "-c" ] && exit 0  # start.sh's check that this python can run the runtime
echo "$$ $4" >> "$LAUNCH_LOG"
case "$4" in
    stage0/*) exec sleep 30 ;;
    *) sleep 0.3; exit 3 ;;
esac
"""


def test_start_sh_runs_every_stage_and_stops_all_when_one_exits(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "launch.log"
    env = {**os.environ, "EDGEPLAN_PYTHON": str(fake), "LAUNCH_LOG": str(log)}
    t0 = time.monotonic()
    proc = subprocess.run(["sh", str(out / "rpi4-a" / "start.sh")], env=env, cwd=str(tmp_path), timeout=20)
    assert proc.returncode == 3, "start.sh passes on the status of the worker that exited"
    assert time.monotonic() - t0 < 10, "the other worker was stopped, not waited for"
    started = dict(line.split() for line in log.read_text().splitlines())
    assert sorted(started.values()) == ["stage0/stage.json", "stage2/stage.json"]
    sleeper = next(int(pid) for pid, stage in started.items() if stage.startswith("stage0"))
    with pytest.raises(ProcessLookupError):
        os.kill(sleeper, 0)
    assert manifest.verify(out) == [], "running the launcher leaves the artifacts unchanged"


def test_without_cluster_every_worker_is_on_localhost_with_unique_ports(traced, tmp_path):
    out = compile_plan(_plan(traced), "branchy", tmp_path / "art", traced=traced)
    specs = [StageSpec.load(str(p)) for p in sorted(out.glob("*/stage*/stage.json"))]
    listens = [s.listen for s in specs]
    assert all(x.startswith("127.0.0.1:") for x in listens) and len(set(listens)) == len(listens) == 4
    assert "127.0.0.1" in (out / "rpi4-a" / "README.txt").read_text()
    assert any("without --cluster" in n for n in jsonio.read(out / "compile-report.json")["notes"])


def test_manifest_is_deterministic(traced, tmp_path):
    a = _compile(traced, tmp_path / "a")
    b = _compile(traced, tmp_path / "b")
    strip = lambda p: {k: v for k, v in jsonio.read(p / "manifest.json").items()}  # noqa: E731
    assert strip(a) == strip(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()


def test_verify_catches_changed_missing_and_extra_files(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    module = out / "orangepi5" / "stage1" / "module.py"
    data = bytearray(module.read_bytes())
    data[10] ^= 1  # one changed bit
    module.write_bytes(bytes(data))
    (out / "jetson" / "README.txt").unlink()
    (out / "rpi4-a" / "stage0" / "notes.txt").write_text("x")
    (out / "rpi4-a" / "edgeplan_runtime" / "__pycache__").mkdir()
    (out / "rpi4-a" / "edgeplan_runtime" / "__pycache__" / "spec.cpython-311.pyc").write_bytes(b"\0")
    problems = manifest.verify(out)
    assert problems == [
        "missing: jetson/README.txt",
        "extra: rpi4-a/stage0/notes.txt",
        problems[2],
    ]
    assert problems[2].startswith("altered: orangepi5/stage1/module.py (expected sha256")
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "altered: orangepi5/stage1/module.py" in result.output


def test_verify_cli_ok_and_missing_manifest(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output
    (out / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        manifest.verify(out)


@pytest.mark.parametrize("error", [RuntimeError, CompileError, KeyboardInterrupt])
def test_interrupted_compile_leaves_no_folder(traced, tmp_path, error):
    TEXT_TARGET.fail_on_stage, TEXT_TARGET.fail_with = 2, error
    try:
        with pytest.raises(CompileError if error is RuntimeError else error) as info:
            _compile(traced, tmp_path / "art")
    finally:
        TEXT_TARGET.fail_on_stage, TEXT_TARGET.fail_with = None, RuntimeError
    assert list(tmp_path.iterdir()) == [], "no half folder, no temporary folder left behind"
    if error is not KeyboardInterrupt:
        msg = str(info.value)
        assert msg.startswith("stage 2 for device 'rpi4-a'"), msg
        assert ".tmp-" not in msg and str(tmp_path / "art") in msg, "errors name the final folder"


def test_artifacts_are_readable_by_others(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    assert out.stat().st_mode & 0o055 == 0o055 or out.stat().st_mode & 0o005  # not the private temp-dir mode
    assert (out / "rpi4-a" / "stage0" / "stage.json").stat().st_mode & 0o044


def test_existing_folder_needs_force_and_is_replaced_whole(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    (out / "rpi4-a" / "stale.txt").write_text("old")
    with pytest.raises(CompileError, match="--force"):
        _compile(traced, out)
    _compile(traced, out, force=True)
    assert not (out / "rpi4-a" / "stale.txt").exists() and manifest.verify(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(CompileError, match="not an edgeplan artifact folder"):
        _compile(traced, other, force=True)
    assert (other / "thesis.tex").exists()


def test_plan_for_another_model_is_refused(traced, tmp_path):
    plan = _plan(traced)
    wrong = plan.__class__(**{**plan.__dict__, "graph_sha256": "f" * 64})
    with pytest.raises(CompileError, match="different model/input shape"):
        compile_plan(wrong, "branchy", tmp_path / "art", traced=traced)
    bad = make_plan(traced.graph, [3], [[("a", 2)], [("b", 1)]])
    with pytest.raises(PlanError, match="add up to 1, not the micro-batch size 2"):
        compile_plan(bad, "branchy", tmp_path / "art", traced=traced)
    assert not (tmp_path / "art").exists()


def test_progress_reports_every_job(traced, tmp_path):
    events = []
    _compile(traced, tmp_path / "art", progress=events.append)
    jobs = {e.job for e in events if e.status == "queued"}
    assert jobs == {"stage 0 codegen-text rpi4-a", "stage 1 codegen-text orangepi5", "stage 1 codegen-text jetson",
                    "stage 2 codegen-text rpi4-a"}
    finished = {e.job for e in events if e.status in ("done", "reused")}
    assert jobs <= finished


def test_a_targets_printed_notes_reach_the_compile_report(traced, tmp_path, monkeypatch):
    monkeypatch.setattr(TEXT_TARGET, "printed", ("fell back to text",))
    out = _compile(traced, tmp_path / "art")
    notes = jsonio.read(out / "compile-report.json")["notes"]
    assert "stage 1 on jetson (codegen-text): fell back to text" in notes
    assert sum("fell back" in n for n in notes) == 4  # every job (`edgeplan compile` prints each as "note: ...")


@pytest.mark.parametrize("address,host", [
    ("10.0.0.1", "10.0.0.1"), ("pi@10.0.0.1:2222", "10.0.0.1"), ("board.local", "board.local"),
    ("root@[fe80::1]:22", "fe80::1"), ("fe80::2", "fe80::2"),
])
def test_network_host(address, host):
    assert network_host(address) == host


def test_plan_json_round_trips(traced, tmp_path):
    out = _compile(traced, tmp_path / "art")
    data = json.loads((out / "manifest.json").read_text())
    assert data["plan_sha256"] == _plan(traced).digest() == manifest.file_sha256(out / "plan.json")
    assert [f["path"] for f in data["files"]] == sorted(f["path"] for f in data["files"])


def test_plans_that_cannot_be_routed_are_refused(traced, tmp_path):
    twice = make_plan(traced.graph, [3], [[("a", 2)], [("b", 1), ("b", 1)]])
    with pytest.raises(PlanError, match="appears twice"):
        compile_plan(twice, "branchy", tmp_path / "art", traced=traced)
    empty = make_plan(traced.graph, [3], [[("a", 2)], [("b", 2), ("c", 0)]])
    with pytest.raises(PlanError, match="samples is 0"):
        compile_plan(empty, "branchy", tmp_path / "art", traced=traced)
    odd = make_plan(traced.graph, [3], [[("a", 2)], [("b", 2)]])
    odd = odd.__class__(**{**odd.__dict__, "batch": 5, "microbatches": 2})
    with pytest.raises(PlanError, match="not a multiple of microbatches"):
        compile_plan(odd, "branchy", tmp_path / "art", traced=traced)
    with pytest.raises(CompileError, match="has none by that name"):
        compile_plan(make_plan(traced.graph, [3], [[("rpi4-a", 2)], [("elsewhere", 2)]], head="rpi4-a"),
                     "branchy", tmp_path / "art", cluster=_cluster(), traced=traced)
    assert list(tmp_path.iterdir()) == []
