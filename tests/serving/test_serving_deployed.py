"""The head-board path: workers started by each board folder's start.sh at the addresses compile wrote,
then `edgeplan serve ART --cluster FILE` and `edgeplan.connect(ART, cluster=FILE)` drive them.

Addresses are on 127.77.0.x (all loopback on Linux), so the fixed ports compile assigns (7700 + k)
do not meet other tests' workers on 127.0.0.1. No secret_env: the generated start.sh does not
pass --secret-env to its workers yet, so signed frames from the head would be refused.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeplan.codegen.compile import compile_plan
from edgeplan.graph.load import build, load_model
from edgeplan.profiles.load import load_cluster

from ..codegen.codegen_helpers import make_plan

MODEL = "lenet5"
TOL = 1e-4
CLUSTER = """name: serving-deployed
devices:
  - name: host
    profile: host
    address: 127.77.0.1
  - name: a
    profile: host
    address: 127.77.0.2
  - name: b
    profile: host
    address: 127.77.0.3
network:
  default:
    bandwidth_mbps: 1000
    latency_ms: 0.1
"""


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.77.0.1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _loopback_alias_works(), reason="needs 127.0.0.0/8 on the loopback (Linux)")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deployed")
    cluster_file = tmp / "cluster.yaml"
    cluster_file.write_text(CLUSTER)
    traced = build(MODEL)
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [n // 2], [[("a", 2), ("b", 2)], [("b", 4)]], head="host")
    plan = dataclasses.replace(plan, cluster_sha256=load_cluster(cluster_file).digest())
    art = compile_plan(plan, MODEL, tmp / "art", cluster=cluster_file, backend="onnxruntime", traced=traced)
    return art, cluster_file


class Boards:
    """Each board folder's start.sh, as the boards run it (deploy starts the same script)."""

    def __init__(self, art: Path, logs: Path):
        env = {**os.environ, "EDGEPLAN_PYTHON": sys.executable}
        self.procs = [subprocess.Popen(["sh", str(art / board / "start.sh")], env=env, start_new_session=True,
                                       stdout=open(logs / f"{board}.log", "wb"), stderr=subprocess.STDOUT)
                      for board in ("a", "b")]
        deadline = time.monotonic() + 60
        for addr in (("127.77.0.2", 7701), ("127.77.0.3", 7702), ("127.77.0.3", 7703)):
            while True:
                try:
                    socket.create_connection(addr, timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"worker at {addr} did not start; see {logs}"
                    time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs:
            os.killpg(p.pid, signal.SIGTERM)  # start.sh and the workers it started (its own session)
        for p in self.procs:
            p.wait(timeout=20)


def _ref(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_model(MODEL).module.eval()(torch.from_numpy(x)).numpy()


def test_edgeplan_serve_cluster_drives_the_deployed_workers(deployed, tmp_path):
    import edgeplan

    art, cluster_file = deployed
    boards = Boards(art, tmp_path)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "edgeplan.cli", "serve", str(art), "--cluster", str(cluster_file),
                             "--port", "0"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            url = next((w for w in log.read_text().split() if w.startswith("http://") and w.count(":") == 2), None)
            time.sleep(0.1)
        x = np.random.default_rng(3).standard_normal((6, 1, 32, 32)).astype(np.float32)
        with edgeplan.connect(url) as pipe:
            assert float(np.abs(pipe.infer(x) - _ref(x)).max()) < TOL
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        boards.stop()


def test_connect_cluster_drives_the_deployed_workers(deployed, tmp_path):
    import edgeplan

    art, cluster_file = deployed
    boards = Boards(art, tmp_path)
    try:
        x = np.random.default_rng(4).standard_normal((3, 1, 32, 32)).astype(np.float32)
        with edgeplan.connect(art, cluster=cluster_file) as pipe:
            futs = [pipe.submit(x[i:i + 1]) for i in range(3)]
            got = np.concatenate([f.result(timeout=60) for f in futs])
        assert float(np.abs(got - _ref(x)).max()) < TOL
    finally:
        boards.stop()
