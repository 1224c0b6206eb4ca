"""Golden plans for users (issue 17 item 4): `edgeplan diff`, `plan --check`, and the edgeplan.testing plugin."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeplan import jsonio
from edgeplan.cli import app
from edgeplan.plandiff import diff_plans
from edgeplan.testing import UPDATE_ENV, assert_plan_matches, plan_model

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
HETERO = str(ROOT / "examples" / "clusters" / "three-node-hetero.yaml")


@pytest.fixture(scope="module")
def plan():
    """A real two-stage plan: resnet18-cifar on the three boards, 8 samples per request."""
    p = plan_model("resnet18-cifar", HETERO, objective="throughput", batch=8)
    return json.loads(jsonio.dumps(p.to_json()))


def test_identical_plans_and_noise_within_tolerance_match(plan):
    noisy = copy.deepcopy(plan)
    noisy["predicted"]["throughput"] *= 1.01
    noisy["stages"][0]["compute_s"] *= 0.99
    noisy["notes"] = ["wording changed"]
    assert diff_plans(plan, plan) == [] and diff_plans(plan, noisy) == []


def test_each_kind_of_change_is_one_readable_line(plan):
    changed = copy.deepcopy(plan)
    s0 = changed["stages"][0]
    s0["stop"] += 1
    s0["replicas"][0]["share"] = round(s0["replicas"][0]["share"] / 2, 6)
    changed["predicted"]["throughput"] *= 0.8
    changed["batch"] = 16
    lines = diff_plans(plan, changed)
    assert any(line.startswith("stage 0 boundaries: layers [0, ") for line in lines)
    assert any(line.startswith(f"stage 0 {s0['replicas'][0]['device']}/") and " share: " in line for line in lines)
    assert any(line.startswith("predicted throughput: ") and "(-20.0%, tolerance 2%)" in line for line in lines)
    assert "batch: 8 -> 16" in lines
    assert len(lines) == 4
    moved = copy.deepcopy(plan)
    moved["stages"][-1]["replicas"][0]["device"] = "elsewhere"
    assert [line for line in diff_plans(plan, moved) if line.startswith(f"stage {len(plan['stages']) - 1} devices")]


def test_cli_diff_and_plan_check_exit_1_with_the_diff(plan, tmp_path):
    golden = tmp_path / "golden.json"
    jsonio.write(golden, plan)
    runner = CliRunner()
    r = runner.invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--batch", "8", "--check", str(golden)])
    assert r.exit_code == 0 and "plans match" in r.output, r.output
    r = runner.invoke(app, ["plan", "resnet18-cifar", "--cluster", HETERO, "--batch", "8", "--objective", "latency",
                            "--check", str(golden), "--out", str(tmp_path / "latency.json")])
    assert r.exit_code == 1, r.output
    assert "objective: throughput -> latency" in r.output and f"rewrite it with --out {golden}" in r.output
    r = runner.invoke(app, ["diff", str(golden), str(tmp_path / "latency.json")])
    assert r.exit_code == 1 and "plan changed:" in r.output and "objective: throughput -> latency" in r.output
    r = runner.invoke(app, ["diff", str(golden), str(golden)])
    assert r.exit_code == 0 and "plans match" in r.output


def test_assert_plan_matches_updates_and_explains(plan, tmp_path, monkeypatch):
    golden = tmp_path / "g" / "plan.json"
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    with pytest.raises(AssertionError, match="does not exist; create it with `pytest --edgeplan-update-golden`"):
        assert_plan_matches(golden, plan)
    monkeypatch.setenv(UPDATE_ENV, "1")
    assert_plan_matches(golden, plan)
    monkeypatch.delenv(UPDATE_ENV)
    assert_plan_matches(golden, plan)
    changed = copy.deepcopy(plan)
    changed["head"] = "cpu-board"
    with pytest.raises(AssertionError, match=r"head: \S+ -> cpu-board"):
        assert_plan_matches(golden, changed)


USER_TEST = '''
from edgeplan.testing import assert_plan_matches, plan_model

CLUSTER = {cluster!r}


def test_lenet_plan(plan_golden):
    plan_golden("golden/lenet.json", plan_model("lenet5", CLUSTER, objective="{objective}"))


def test_same_with_the_function():
    assert_plan_matches("golden/lenet-fn.json", plan_model("lenet5", CLUSTER, objective="{objective}"))
'''


def test_plugin_in_a_user_suite(pytester, monkeypatch):
    """A user's suite: first run fails (no golden), --edgeplan-update-golden writes, a changed plan fails."""
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    pytester.makepyfile(test_user=USER_TEST.format(cluster=HETERO, objective="throughput"))
    first = pytester.runpytest_inprocess("-p", "edgeplan.testing")
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(["*golden plan golden/lenet.json does not exist*"])
    pytester.runpytest_inprocess("-p", "edgeplan.testing", "--edgeplan-update-golden").assert_outcomes(passed=2)
    assert (pytester.path / "golden" / "lenet.json").is_file()
    pytester.runpytest_inprocess("-p", "edgeplan.testing").assert_outcomes(passed=2)
    pytester.makepyfile(test_user=USER_TEST.format(cluster=HETERO, objective="latency"))
    changed = pytester.runpytest_inprocess("-p", "edgeplan.testing")
    changed.assert_outcomes(failed=2)
    changed.stdout.fnmatch_lines(["*objective: throughput -> latency*", "*--edgeplan-update-golden*"])
