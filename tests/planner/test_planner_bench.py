"""benchmarks/bench_planner's table (issue 13 item 8): one row per case x objective with the CPU time the
target is checked on, the exact flag, the coarse graph's blocks and the plan's ratios to its baselines and to
the relaxation bound. A small case: every figure is measured, so the ratios are real comparisons."""

from __future__ import annotations

from benchmarks import bench_planner as bp


def test_rows_compare_the_plan_with_its_baselines_and_the_bound(capsys):
    from edgeplan.planner.synthetic import random_costs

    costs = random_costs(7, 12, 4, 2, dag=True, units_per_device=2, ram_mb=(512, 4096))
    label = {"case": "synthetic 12L x 4", "layers": 12, "devices": 4, "types": 2}
    for name in ("throughput", "energy", "latency", "time"):
        r = bp.measure(costs, bp.objective(name), label, with_ilp=False)  # the ILP: seconds (tests/planner/ilp)
        bp.show(r)
        assert r["objective"] == name and r["cpu"] > 0 and r["seconds"] > 0 and r["vs_lb"] is None
        assert r["vs_base"] >= 1 - 1e-9  # never worse than a feasible baseline
        assert r["vs_relax"] >= 1 - 1e-9  # never below the lower bound
        assert r["exact"] is True and r["blocks"] is None  # small: exact on the full graph
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.split()[-2:] == ["yes", "-"] for line in out)


def test_the_time_target_is_read_on_cpu_seconds(capsys):
    row = {"case": "c", "objective": "throughput", "seconds": 5.0, "cpu": 0.5, "vs_base": 1.0, "dp_base": 1.0,
           "vs_lb": None, "vs_relax": 1.2, "exact": True, "blocks": 13, "target": 1.0}
    bp.show(row)
    line = capsys.readouterr().out
    assert line.rstrip().endswith("<= 1 s ok") and " 13 " in line  # wall 5 s on a busy machine, CPU 0.5 s
    bp.show(dict(row, cpu=1.5, seconds=0.9))
    assert capsys.readouterr().out.rstrip().endswith("MISSED")
