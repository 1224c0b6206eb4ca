"""benchmarks/bench_adapt.py --quick (issue 12 item 6): the table covers every shipped trace and policy, the plot
is written, and the summary line's ratios are the table's own figures."""

from __future__ import annotations

import math
import re

import pytest


def test_bench_adapt_quick(tmp_path, capsys):
    pytest.importorskip("torch", reason="the benchmark's family traces a zoo model with torch")
    pytest.importorskip("matplotlib", reason="the benchmark draws its timeline with matplotlib")
    from benchmarks import bench_adapt

    bench_adapt.main(["--quick", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {}
    for line in lines:
        m = re.match(r"^(alternating|bw-drop|cpu-hog)\s+(static|heuristic|rl|oracle)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+"
                     r"(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(.+)$", line)
        if m:
            rows[(m[1], m[2])] = m
    assert len(rows) == 12, lines  # 3 traces x 4 policies
    for (trace, policy), m in rows.items():
        changes = {"alternating": 5, "bw-drop": 2, "cpu-hog": 2}[trace]  # simultaneous events are one change
        assert len(m[10].split()) == changes, (trace, policy, m[10])
        assert int(m[5]) >= int(m[4])  # p99 >= p50
    assert int(rows[("alternating", "static")][7]) == 0
    # the bench's cluster is one where the traces change the best layout by a wide margin (else no policy can gain)
    assert float(rows[("alternating", "oracle")][3]) >= 1.4 * float(rows[("alternating", "static")][3])
    for trace in ("alternating", "bw-drop", "cpu-hog"):  # at most one switch per change of the trace
        for policy in ("heuristic", "rl"):
            assert int(rows[(trace, policy)][7]) <= len(rows[(trace, policy)][10].split()), (trace, policy)
    for trace in ("alternating", "bw-drop", "cpu-hog"):  # issue 12's target: recovered within 3 s of each change
        assert all(x != "never" and float(x) <= 3.0 for x in rows[(trace, "heuristic")][10].split()), trace
    last = re.fullmatch(r"adapt: heuristic/static throughput (\d+\.\d\d)x, rl/static (\d+\.\d\d)x, lost (\d+), "
                        r"switches (\d+)", lines[-1])
    assert last, lines[-1]
    tput = {p: float(rows[("alternating", p)][3]) for p in ("static", "heuristic", "rl")}
    assert float(last[1]) == pytest.approx(tput["heuristic"] / tput["static"], abs=0.006)
    assert float(last[2]) == pytest.approx(tput["rl"] / tput["static"], abs=0.006)
    assert int(last[4]) == int(rows[("alternating", "heuristic")][7])
    assert int(last[3]) == int(rows[("alternating", "heuristic")][8]) + int(rows[("alternating", "rl")][8])
    for name in ("bench_adapt.png", "bench_adapt.svg"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_switch_delays_put_the_controllers_switches_on_the_traces_clock():
    from benchmarks.bench_adapt import switch_delays

    ctl = {"started_process_age_s": 12.5, "decisions_switched": [{"at_s": 9.0}, {"at_s": 30.1}, {"at_s": 31.0}]}
    # switches at 21.5, 42.6 and 43.5 on the trace's clock; changes at 20, 40, 60
    assert switch_delays([20.0, 40.0, 60.0], ctl) == [1.5, 2.6, None]
    assert switch_delays([20.0], {"decisions_switched": [{"at_s": 1.0}]}) == [None]


def test_window_throughput_counts_only_while_the_trace_ran():
    from benchmarks.bench_adapt import window_throughput

    ad = {"answered_at_process_s": [5.0, 11.0, 12.0, 13.0, 20.0, 59.0, 61.0, 90.0]}
    assert window_throughput(ad, 4, 10.0, 60.0) == pytest.approx(5 * 4 / 50)  # 11, 12, 13, 20, 59 in (10, 60]
    assert window_throughput({"answered_at_process_s": [12.0, 14.0, 20.0]}, 4, 10.0, 60.0) == pytest.approx(
        2 * 4 / 8)  # ended before the trace: up to its last answer
    assert math.isnan(window_throughput({}, 4, 10.0, 60.0))
