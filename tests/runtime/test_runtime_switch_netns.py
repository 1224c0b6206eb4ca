"""Live switching inside the emulated testbed (root): three boards in network namespaces with shaped links
and CPU quotas, every variant's workers started in their board, a bandwidth drop applied mid-run, and the
layout switched back and forth under load: every request answered once, and correctly."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeplan.profiles.model import Cluster, ComputeUnit, Device, Link
from edgeplan.runtime.head import FamilyHead, HeadConfig
from edgeplan.runtime.local import start_pipeline
from edgeplan.testbed import emulate
from edgeplan.testbed import trace as tr
from tests.families import VARIANTS, make_family, x_batch
from tests.runtime.fake_artifacts import WORKER, reference
from tests.tiers import netns_tier


def _cluster() -> Cluster:
    """a, b, c: equal boards, 8 MB/s links."""
    classes = ("conv", "dwconv", "gemm", "norm", "pool", "elementwise", "reduce", "data")
    unit = ComputeUnit("cpu", "cpu", "x86", tuple((c, 10e9) for c in classes), 10e9, 5.0)
    return Cluster("t", tuple(Device(n, "test", "127.0.0.1", 1 << 30, 2.0, (unit,)) for n in ("a", "b", "c")),
                   default_link=Link("*", "*", 8e6, 0.0))


@pytest.mark.netns
@netns_tier
def test_switching_inside_the_emulated_cluster_under_a_bandwidth_drop_loses_nothing(tmp_path):
    weights = make_family(tmp_path / "fam", delay=0.004)
    clu = _cluster()
    with emulate.testbed(clu, host_core_flops=40e9, echo=lambda *_: None) as (bed, shape):
        placement = {b.device: (b.launch_prefix(), b.address) for b in bed.boards}
        p = start_pipeline(tmp_path / "fam", local=True, command=WORKER, placement=placement,
                           head_host=bed.host_address, config=HeadConfig(window=6, dead_after_s=5.0))
        ap = None
        try:
            head = p.head
            assert isinstance(head, FamilyHead)
            ap = tr.Applier(tr.schedule(tr.parse([{"at_s": 1.0, "link": "all", "scale": 0.25}], "t.yaml", clu),
                                        bed, shape, clu), echo=lambda *_: None).start()
            xs = [[x_batch(head.batch, i)] for i in range(200)]
            stop, order = threading.Event(), ["plan-1", "plan-2", "plan-0"]

            def flip():
                k = 0
                while not stop.wait(0.15):
                    head.switch(order[k % len(order)], "netns test")
                    k += 1

            t = threading.Thread(target=flip)
            t.start()
            try:
                res = head.run(xs)
            finally:
                stop.set()
                t.join()
            assert ap.errors == []
        finally:
            if ap is not None:
                ap.stop()
            p.close()
    assert res.completed == len(xs) and not res.failures and res.lost == 0 and res.duplicated == 0, res.failures
    for x, out in zip(xs, res.outputs, strict=True):
        np.testing.assert_allclose(out[0], reference(weights, x[0]), rtol=1e-5, atol=1e-6)
    assert all(res.variants[v] > 0 for v in VARIANTS), res.variants
    assert sum(s["pause_s"] is not None for s in res.switches) >= 3
