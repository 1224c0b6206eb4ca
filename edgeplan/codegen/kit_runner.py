"""Time a board's profiling kit and print a measured profile overlay (runs on the board: numpy + its runtime).

    python3 profiling/run_kit.py profiling [--seconds 0.3] > board-measured.yaml

Times are the 10th percentile of repeated calls (``FAST_Q``): what the board does
when nothing else runs on it, so other tenants of a shared machine do not skew them.
Per module of ``kit.json``: the time of one call at the kit's micro-batch; the tiny
module's time is the fixed cost of a call (``layer_overhead_us``); an op class's
throughput is its layer's FLOPs / (time - that fixed cost). The
runtime's own cost of a stage call (``hop_overhead_us``) is the time to
encode, send over a local socket pair, receive and decode a frame of the kit's
smallest size, one frame every ``HOP_GAP_S`` as a stage's calls arrive (idle between micro-batches: its
threads wake and its caches are cold; back to back the figure was 4x lower); its cost per byte
(``hop_byte_ns``) is the slope up to a frame of
at least ``HOP_LARGE`` bytes, halved: a stage call receives its inputs and sends
its outputs, and the cost model charges ``hop_byte_ns`` on each byte in and each
byte out, while one timed frame pays both ends of every byte. Output is JSON
(valid YAML): a profile that ``extends`` the board's.
Throughput above the profile's peak is clamped to it, and stderr says so.

Runs on the board's Python, 3.6 and newer (JetPack 4.6), with numpy 1.16 or newer: annotations
are strings, the random inputs come from ``np.random.RandomState``.
"""

import argparse
import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

FAST_Q = 10  # percentile of the call times kept
HOP_LARGE = 1 << 20  # the per-byte hop is timed up to a frame of at least this size (below it, per-call noise rules)
# idle seconds before each timed hop frame: a stage waits for its next micro-batch, so its call wakes the worker's
# connection, compute and sender threads with cold caches. Here (x86 host, 4 KiB): a real worker (identity module,
# bench_runtime's) spent 34-50 us of CPU per call back to back, 115 at 2 ms gaps, 255 at 20 ms; the kit's frame
# read 42 us (10th percentile) back to back, 70 at 2 ms, 181 at 20 ms. Back to back it priced the warm case only.
HOP_GAP_S = 0.02


def _call_s(fn, seconds: float, min_calls: int = 20, gap_s: float = 0.0) -> "tuple[float, int]":
    """Fast-percentile seconds of ``fn()`` over ``seconds`` (at least ``min_calls``), ``gap_s`` idle before each."""
    for _ in range(3):
        fn()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_calls:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, FAST_Q)), len(times)


def _hop_s(wire, nbytes: int, seconds: float, gap_s: float = HOP_GAP_S) -> "tuple[float, int]":
    """Fast-percentile seconds to send one frame of ``nbytes`` through the runtime's wire format and receive it
    on a receiver thread that lives for the whole timing, as a worker's connection thread does (a thread started
    per frame put its start-up, not the bytes, in the figure), ``gap_s`` idle before each (``HOP_GAP_S``)."""
    a, b = socket.socketpair()
    x = np.zeros(max(1, nbytes // 4), dtype=np.float32)
    frame = wire.Frame(wire.DATA, request_id=1, tensors=(x,))
    go, done, stop = threading.Semaphore(0), threading.Semaphore(0), []

    def receiver():
        while True:
            go.acquire()
            if stop:
                return
            wire.recv_frame(b, None, max(1 << 20, 2 * nbytes + 4096))
            done.release()

    t = threading.Thread(target=receiver, daemon=True)
    t.start()

    def one():
        go.release()
        wire.send_frame(a, frame)
        done.acquire()

    try:
        return _call_s(one, seconds, gap_s=gap_s)
    finally:
        stop.append(True)
        go.release()
        t.join()
        a.close()
        b.close()


def hop_figures(wire, small: int, large: int, seconds: float, gap_s: float = HOP_GAP_S
                ) -> "tuple[float, float, int, int]":
    """(seconds per frame of ``small`` bytes, seconds per byte a stage call receives or sends, frames timed, the
    large size used): frames through the runtime's wire format, sent and received (module docstring)."""
    large = max(large, HOP_LARGE)
    hop_small, n_hop = _hop_s(wire, small, seconds, gap_s)
    hop_large, _ = _hop_s(wire, large, seconds, gap_s)
    return hop_small, max(hop_large - hop_small, 0.0) / max(large - small, 1) / 2, n_hop, large


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kit", help="the kit folder (profiling/)")
    ap.add_argument("--seconds", type=float, default=0.3, help="timing per module")
    args = ap.parse_args(argv)
    kit_dir = Path(args.kit).resolve()
    sys.path.insert(0, str(kit_dir.parent))  # the board folder: its edgeplan_runtime copy
    from edgeplan_runtime import wire
    from edgeplan_runtime.backend_onnxruntime import load_model_file

    kit = json.loads((kit_dir / "kit.json").read_text())
    threads = int(os.environ["EDGEPLAN_THREADS"]) if os.environ.get("EDGEPLAN_THREADS") else None
    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    src = f"profiling kit of {kit['device']} (plan {kit['plan_sha256'][:12]}, {kit['model']})"
    rng = np.random.RandomState(0)  # default_rng is numpy 1.17+

    def inputs_of(specs):
        return [rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                else rng.randint(0, 2, shape).astype(dtype) for shape, dtype in specs]

    tiny = load_model_file(kit_dir / kit["tiny"], threads)
    x = [np.zeros((1, 1), dtype=np.float32)]
    fixed_s, n_tiny = _call_s(lambda: tiny(x), args.seconds)
    measured, thr = {}, {}
    peak = kit.get("peak_gflops")
    for m in kit["modules"]:
        run = load_model_file(kit_dir / m["file"], threads)
        xs = inputs_of(m["inputs"])
        t, n = _call_s(lambda run=run, xs=xs: run(xs), args.seconds)
        gflops = m["flops"] / max(t - fixed_s, 0.05 * t) / 1e9
        if peak and gflops > peak:
            print(f"# {m['op_class']}: {gflops:.4g} GFLOP/s measured, above the profile's peak {peak:g}; "
                  "clamped to the peak", file=sys.stderr)
            gflops = peak
        thr[m["op_class"]] = round(gflops, 4)
        measured[f"throughput_gflops.{m['op_class']}"] = {
            "how": f"profiling kit: 10th percentile of {n} calls of layer {m['layer']} ({m['origin']}) at "
                   f"{kit['samples']} sample(s), minus the fixed cost of a call", "when": when,
            "backend": kit["backend"], "from": src}
    timings = []
    for w in kit.get("windows", ()):
        run = load_model_file(kit_dir / w["file"], threads)
        if w.get("data"):  # the activations the model feeds this window (saved at compile time)
            with np.load(kit_dir / w["data"]) as z:
                xs = [z[f"arr_{i}"] for i in range(len(w["inputs"]))]
        else:
            xs = inputs_of(w["inputs"])
        t, n = _call_s(lambda run=run, xs=xs: run(xs), args.seconds)
        timings.append({"start": w["start"], "stop": w["stop"], "module_s": t, "calls": n})
    if timings:
        out = kit_dir / "timings.json"
        out.write_text(json.dumps({
            "kind": "edgeplan-kit-timings", "device": kit["device"], "unit": kit["unit"], "samples": kit["samples"],
            "backend": kit["backend"], "plan_sha256": kit["plan_sha256"], "graph_sha256": kit.get("graph_sha256"),
            "model": kit["model"], "when": when, "threads": threads, "windows": timings}, indent=2, sort_keys=True))
        print(f"# {len(timings)} model windows timed: {out} (fit them with `edgeplan calibrate --kit`)",
              file=sys.stderr)
    small, large = kit["hop_bytes"]
    hop_small, per_byte, n_hop, large = hop_figures(wire, small, large, args.seconds)
    print(f"# runtime hop: {hop_small * 1e6:.1f} us per frame + {per_byte * 1e9:.3f} ns per byte in or out "
          f"(timed up to {large} bytes)", file=sys.stderr)
    measured["layer_overhead_us"] = {
        "how": f"profiling kit: 10th percentile of {n_tiny} calls of a one-element module",
        "when": when, "backend": kit["backend"], "from": src}
    measured["hop_overhead_us"] = {
        "how": f"profiling kit: 10th percentile of {n_hop} wire frames of {small} bytes sent and received over a "
               f"local socket pair, one every {HOP_GAP_S * 1e3:.0f} ms (a stage's calls wake it)", "when": when,
        "backend": "edgeplan_runtime.wire", "from": src}
    measured["hop_byte_ns"] = {
        "how": f"profiling kit: slope of the 10th-percentile wire frame time from {small} to {large} bytes over a "
               "local socket pair, halved (a frame pays both ends of each byte; a call one end of each byte in "
               "or out)", "when": when, "backend": "edgeplan_runtime.wire", "from": src}
    unit = {"throughput_gflops": thr, "layer_overhead_us": round(fixed_s * 1e6, 3),
            "hop_overhead_us": round(hop_small * 1e6, 3), "hop_byte_ns": round(per_byte * 1e9, 4),
            "measured": measured}
    doc = {"name": f"{kit['device']} measured by its profiling kit", "extends": kit["profile"],
           "units": {kit["unit"]: unit}}
    if not kit["profile"]:
        doc.pop("extends")
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
