"""What a stage call's hop costs when calls are spaced out, as a pipeline stage's are (tracker issue 14).

Side by side, for each idle gap before a call: the profiling kit's hop (codegen/kit_runner: one wire frame
sent and received on a local socket pair, 10th percentile) and a real stage worker's CPU per call (an
identity module between two endpoints, bench_runtime's worker row; CPU of all its threads from
/proc/PID/task/*/schedstat). Back to back both are warm; a call after an idle gap wakes the worker's
connection, compute and sender threads with cold caches, which is what the kit now times (HOP_GAP_S).

    python -m benchmarks.bench_kit_hop [--bytes 4096] [--gaps 0,0.002,0.02] [--calls 200]

Measured here (x86 host, 2 cores shared; 4 KiB). Hand-run first (load 2.8-3.7; worker calls back to back
through ``timed(n)``), then this benchmark (load 2.4; one ``timed(1)`` per call, so "0 ms" has a little gap):

    gap      kit p10   worker CPU/call      benchmark: kit p10   worker CPU/call
    0 ms       42 us      34-50 us                      32 us            92 us
    2 ms       70 us        115 us                      93 us           138 us
    20 ms     181 us    255-300 us                     254 us           201 us

The kit timed back to back (42 us) priced the warm case only; `host.yaml`'s 850 us per call, fitted by
`edgeplan calibrate` from local runs of two stages and the head on these 2 cores, adds their contention.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _task_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            pass
    return total / 1e9


def worker_cpu_per_call(nbytes: int, gap_s: float, calls: int) -> float:
    """CPU seconds a real stage worker (identity module) spends per call, ``gap_s`` idle before each."""
    from benchmarks import bench_runtime as br

    payload = np.zeros(max(1, nbytes // 4), dtype=np.float32)
    ends = br._Endpoints(payload)
    proc, address = br._hop_process(br._identity_worker, tuple(payload.shape), ends.back_address)
    try:
        ends.connect(address)
        ends.send()
        ends.accept()
        ends.receive()
        ends.timed(20)  # warm
        c0 = _task_cpu_s(proc.pid)
        idle0 = time.perf_counter()
        time.sleep(max(gap_s * calls, 1.0))
        idle = (_task_cpu_s(proc.pid) - c0) / max(time.perf_counter() - idle0, 1e-9)  # CPU/s doing nothing
        c0, t0 = _task_cpu_s(proc.pid), time.perf_counter()
        for _ in range(calls):
            if gap_s:
                time.sleep(gap_s)
            ends.timed(1)
        spent = _task_cpu_s(proc.pid) - c0
        return (spent - idle * (time.perf_counter() - t0)) / calls
    finally:
        ends.close()
        br._stop(proc)


def main(argv: list[str] | None = None) -> list[tuple[float, float, float]]:
    from edgeplan.codegen import kit_runner
    from edgeplan.runtime import wire

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--gaps", default="0,0.002,0.02", help="idle seconds before each call, comma-separated")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args(argv)
    rows = []
    print(f"{'gap':>8} {'kit p10':>10} {'worker CPU/call':>16}   ({args.bytes} B, load "
          f"{open('/proc/loadavg').read().split()[0]})")
    for gap in (float(g) for g in args.gaps.split(",")):
        kit, _ = kit_runner._hop_s(wire, args.bytes, 0.3, gap_s=gap)
        cpu = worker_cpu_per_call(args.bytes, gap, args.calls)
        rows.append((gap, kit, cpu))
        print(f"{gap * 1e3:>5.0f} ms {kit * 1e6:>7.0f} us {cpu * 1e6:>13.0f} us", flush=True)
    return rows


if __name__ == "__main__":
    main()
