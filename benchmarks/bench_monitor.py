"""CPU cost of the worker Monitor: one snapshot per second plus the record_* calls a busy worker makes.

Measures CPU time (time.process_time, so other tenants of this machine do not inflate it) of
``snapshot()`` on this machine's real /proc and of the record_* calls, then scales the per-second
total to a Raspberry Pi 4 core by the single-core speed ratio the built-in profiles already use
(rpi4b hop_overhead_us / host hop_overhead_us: the runtime's per-call CPU cost, ~6.5x slower on a
Cortex-A72). The target (tracker issue 11) is <= 1% of a Pi 4 core at 1 Hz.

    python benchmarks/bench_monitor.py [--calls-per-s 100] [--repeat 2000]

``--calls-per-s`` is stage calls per second; each stage call makes 1 record_compute, 1 record_recv,
2 record_send, 3 set_queue and 1 count (what a worker with a replicated next stage does).
"""

from __future__ import annotations

import argparse
import time


def _cpu_per_call(fn, repeat: int) -> float:
    fn()  # warm
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat


def main(argv: list[str] | None = None) -> dict:
    from edgeplan.profiles.load import load_profile
    from edgeplan.runtime.monitor import Monitor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls-per-s", type=float, default=100.0, help="stage calls per second to price")
    ap.add_argument("--repeat", type=int, default=2000, help="snapshots timed (record calls: 50x as many)")
    args = ap.parse_args(argv)

    m = Monitor("bench", 1)
    for i in range(64):  # a realistically filled monitor: histogram, 3 links, queues, counters
        m.record_compute(0.001 * (i % 20 + 1), 8)
        m.record_send(f"peer{i % 3}/stage2", 600_000, 0.01)
        m.record_recv("head", 600_000)
        m.set_queue(f"send:peer{i % 3}/stage2", i % 4)
    snapshot_s = _cpu_per_call(m.snapshot, args.repeat)

    def stage_call() -> None:
        m.record_compute(0.012, 8)
        m.record_recv("pi-a/stage0", 401_408)
        m.record_send("pi-c/stage2", 200_704, 0.004)
        m.record_send("pi-d/stage2", 200_704, 0.004)
        m.set_queue("ready", 1)
        m.set_queue("send:pi-c/stage2", 0)
        m.set_queue("send:pi-d/stage2", 0)
        m.count("frames_rejected", 0)

    call_s = _cpu_per_call(stage_call, args.repeat * 50)
    per_s_here = snapshot_s + args.calls_per_s * call_s

    def cpu_unit(ref: str):
        return next(u for u in load_profile(ref).units if u.name == "cpu")

    pi, host = cpu_unit("rpi4b-4gb").hop_overhead_s, cpu_unit("host").hop_overhead_s
    ratio = pi / host
    pct_pi = 100.0 * per_s_here * ratio
    print(f"snapshot(): {snapshot_s * 1e6:.1f} us CPU here; record_* per stage call: {call_s * 1e6:.2f} us CPU here")
    print(f"per second ({args.calls_per_s:g} stage calls + 1 snapshot): {per_s_here * 1e6:.0f} us CPU here "
          f"= {100 * per_s_here:.3f}% of a core here")
    print(f"Pi 4 single-core ratio (profiles rpi4b/host hop_overhead_us): {ratio:.2f}x slower")
    print(f"{pct_pi:.3f}% of a Pi 4 core at 1 Hz (target <= 1%)")
    return {"snapshot_s": snapshot_s, "call_s": call_s, "ratio": ratio, "pi4_core_percent": pct_pi}


if __name__ == "__main__":
    main()
