"""Measure this machine's effective throughput per op class, per core.

The emulated boards are this machine's CPU under a quota, so their predicted
times are only as good as the host figures behind them. One micro-benchmark
per op class (a representative layer shape from the zoo models), exported to
ONNX and timed in ONNX Runtime on one thread, the backend the compiled stages
use on CPUs today; FLOPs come from edgeplan's own counter (graph/trace), so
the measured FLOP/s are in the same units the cost model divides by.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgeplan.graph.ops import OP_CLASSES


@dataclass(frozen=True)
class HostSpeed:
    """Per-core effective FLOP/s for each op class, and memory bandwidth (bytes/s)."""

    flops: tuple[tuple[str, float], ...]
    mem_bandwidth: float

    def of(self, op_class: str) -> float:
        return dict(self.flops)[op_class]

    def scaled_to(self, conv_flops: float) -> HostSpeed:
        """The same machine with every class scaled so that conv runs at ``conv_flops``."""
        k = conv_flops / self.of("conv")
        return HostSpeed(tuple((c, f * k) for c, f in self.flops), self.mem_bandwidth)


def _benchmarks():
    import torch
    from torch import nn

    class Ew(nn.Module):
        def forward(self, x):
            return torch.relu(x + x)

    class Soft(nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    class Cat(nn.Module):
        def forward(self, x):
            return torch.flatten(torch.cat([x, x], dim=1), 1)

    benches = {
        "conv": (nn.Conv2d(64, 64, 3, padding=1, bias=False), (1, 64, 56, 56)),
        "dwconv": (nn.Conv2d(144, 144, 3, padding=1, groups=144, bias=False), (1, 144, 56, 56)),
        "gemm": (nn.Linear(1024, 1024), (16, 1024)),
        "norm": (nn.BatchNorm2d(64).eval(), (1, 64, 56, 56)),
        "pool": (nn.MaxPool2d(3, 2, 1), (1, 64, 112, 112)),
        "elementwise": (Ew(), (1, 64, 56, 56)),
        "reduce": (Soft(), (1, 3, 197, 197)),
        "data": (Cat(), (1, 64, 56, 56)),
    }
    # wrapped so each layer is a leaf of the traced root, as inside a real model
    return {k: (nn.Sequential(m), shape) for k, (m, shape) in benches.items()}


def _time_ort(path: Path, shape: tuple[int, ...], seconds: float, threads: int = 1) -> float:
    """Best seconds of one run. On one thread the clock is this process's CPU time: an emulated board's
    quota is CPU time, so its speed is the host's work per CPU second, and time spent off the core
    (preempted, interrupts, the hypervisor) is not the run's. On this shared machine a wall-clock best read
    conv at 16 GFLOP/s once against 105-121 in the other runs, emulating every board and link 7x slow
    (bench_truth's first plans then used boards at 0.025 cores). On several threads CPU time sums them:
    wall time."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        sess.run(None, {name: x})
    clock = time.process_time if threads == 1 else time.perf_counter
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = clock()
        sess.run(None, {name: x})
        best = min(best, clock() - t0)
    return best


MEMORY_BOUND = ("norm", "elementwise")  # micro-benchmarks whose time is their bytes: the memory bandwidth's source


def _layer_bytes(graph) -> float:
    """Bytes the cost model moves for ``graph``'s layers: each layer's distinct inputs + its output
    (profiles/cost.py's roofline memory term)."""
    sizes = {t.name: t.nbytes for t in graph.inputs}
    sizes.update({layer.name: layer.out_bytes for layer in graph.layers})
    return float(sum(sum(sizes.get(n, 0) for n in dict.fromkeys(layer.inputs)) + layer.out_bytes
                     for layer in graph.layers))


def measure(seconds_per_class: float = 0.4, classes: tuple[str, ...] = OP_CLASSES, threads: int = 1,
            bandwidth: bool = True) -> HostSpeed:
    """Time each op class's micro-benchmark; returns FLOP/s (bytes/s for `data`) on ``threads`` threads
    (1: per core, what the emulator scales by; all cores: a whole-machine profile). ``bandwidth=False``
    skips the memory bandwidth (NaN) for callers that only need FLOP/s.

    The memory bandwidth is what ONNX Runtime reaches on the memory-bound benchmarks (batchnorm, add +
    relu on a 0.8 MB activation): the bytes the cost model counts for them over their best time, the
    larger of the two. Not a 64 MB copy: the models' activations and weights stay in the caches, and a
    DRAM copy on this shared machine read 5.8-13.5 GB/s from run to run where ONNX Runtime's layers ran
    at ~60 GB/s (seen: mobilenet_v2-cifar's memory terms priced 2.4x high, and a one-factor calibration
    of one stage extrapolated a moved cut twice as badly at the low reading).
    """
    import torch

    from edgeplan.graph.trace import trace

    torch.manual_seed(0)
    flops: dict[str, float] = {}
    best_bw = 0.0
    with tempfile.TemporaryDirectory(prefix="edgeplan-calibrate-") as tmp:
        for op_class, (module, shape) in _benchmarks().items():
            if op_class not in classes and (op_class not in MEMORY_BOUND or not bandwidth):
                continue
            graph = trace(module.eval(), shape, op_class).graph
            work = sum(layer.flops_fwd for layer in graph.layers if layer.op_class == op_class)
            if op_class == "data":  # priced by bytes moved, not FLOPs
                work = sum(layer.out_bytes for layer in graph.layers)
            path = Path(tmp) / f"{op_class}.onnx"
            torch.onnx.export(module, (torch.randn(shape),), str(path), dynamo=False, opset_version=17)
            seconds = _time_ort(path, shape, seconds_per_class if op_class in classes
                                else min(seconds_per_class, 0.2), threads)
            if op_class in classes:
                flops[op_class] = max(work, 1) / seconds
            if op_class in MEMORY_BOUND and bandwidth:
                best_bw = max(best_bw, _layer_bytes(graph) / seconds)
    return HostSpeed(tuple(sorted(flops.items())), best_bw if bandwidth else float("nan"))


def conv_flops(seconds: float = 0.5) -> float:
    """Per-core dense-conv FLOP/s: what the emulator sizes CPU quotas by."""
    return measure(seconds, ("conv",), bandwidth=False).of("conv")


def measured_profile_doc(base: str, speed: HostSpeed, threads: int, when: str | None = None) -> dict:
    """A board profile for this machine: ``base``'s figures (RAM, power, ...) with the CPU unit's
    throughput and memory bandwidth replaced by what was measured, each with its provenance under
    ``measured`` (the per-layer and per-call overheads stay the base's estimates, so the profile is not
    ``estimate: false``: `edgeplan calibrate` measures those from runs)."""
    import datetime
    import platform

    from edgeplan.profiles.load import load_profile

    thr = {c: round(f / 1e9, 3) for c, f in speed.flops}
    base_peak = max(u.peak_flops for u in load_profile(base).units if u.name == "cpu") / 1e9
    when = when or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")
    src = f"edgeplan profile on {platform.node() or 'this machine'}"
    measured = {f"throughput_gflops.{c}": {
        "how": f"ONNX Runtime micro-benchmark of a representative {c} layer, best of repeated runs, "
               f"{threads} thread(s)", "when": when, "backend": "onnxruntime", "from": src} for c in thr}
    measured["mem_bandwidth_gbs"] = {
        "how": "ONNX Runtime memory-bound micro-benchmarks (batchnorm; add + relu) on a 0.8 MB activation: bytes "
               f"read + written over the best of repeated runs, {threads} thread(s)",
        "when": when, "backend": "onnxruntime", "from": src}
    return {
        "name": f"this machine, measured ({threads} threads, ONNX Runtime), based on {base}",
        "extends": base,
        "units": {"cpu": {
            "peak_gflops": max(base_peak, max(thr.values())),  # a measurement above the datasheet peak wins
            "throughput_gflops": thr,
            "mem_bandwidth_gbs": round(speed.mem_bandwidth / 1e9, 3),
            "measured": measured,
        }},
    }


def write_measured_profile(path: Path, base: str, seconds_per_class: float = 0.4,
                           threads: int | None = None) -> Path:
    """Measure this machine (all cores by default) and write it as a profile file (atomically)."""
    import os

    import yaml

    threads = threads or os.cpu_count() or 1
    doc = measured_profile_doc(base, measure(seconds_per_class, threads=threads), threads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("# Written by `edgeplan profile`: measured throughput per op class and memory bandwidth\n"
                   "# (edgeplan.testbed.calibrate), provenance under `measured`; everything else comes from the\n"
                   "# base profile named in `extends` (estimates until `edgeplan calibrate` fits them from runs).\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path
