"""`edgeplan emulate` on the command line: the `--` separator, and what it needs."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from edgeplan.cli import app
from tests.tiers import netns_tier

CLUSTER = "examples/clusters/three-node-hetero.yaml"


def test_emulate_needs_a_command_or_write_cluster():
    res = CliRunner().invoke(app, ["emulate", CLUSTER])
    assert res.exit_code == 2
    assert "give a COMMAND after `--`, or --write-cluster FILE" in res.output


@netns_tier
def test_emulate_runs_the_command_after_the_separator():
    code = "import json,os,sys; s=json.load(open(os.environ['EDGEPLAN_TESTBED'])); sys.exit(len(s['boards']))"
    res = CliRunner().invoke(app, ["emulate", CLUSTER, "--host-gflops", "50", "--", sys.executable, "-c", code])
    assert res.exit_code == 3, res.output  # the three boards of the cluster, seen from inside
    assert "emulating three-node-hetero" in res.output
