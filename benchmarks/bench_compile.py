"""Compiled-stage speed and compile time per target, for whole zoo models as one stage.

Prints, from one run on this machine with the same threads for everyone and denormals
flushed (torch.set_flush_denormal(True); ONNX Runtime's set_denormal_as_zero): PyTorch
eager ms, TVM ms (default untuned schedules, and MetaSchedule-tuned when the target's
tuning database exists or --tune-trials > 0), ONNX Runtime ms, and the ratios to eager;
then compile seconds per target (x86, arm-cpu, cuda sm_53/sm_87, mali). The aarch64
builds are not timed (no such CPU/GPU here).

    python benchmarks/bench_compile.py [--models resnet18,mobilenet_v2] [--threads 2] [--tune-trials 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))


def bench_model(name: str, threads: int, tune_trials: int, aarch64: bool, repeat: int) -> dict:
    import torch

    from edgeplan.graph import zoo
    from edgeplan.runtime.backend_onnxruntime import load_model_file
    from edgeplan.runtime.backend_tvm import load_module_file
    from edgeplan.targets import _onnx, _tune, _tvm
    from edgeplan.targets._cpu import measure_ms, numpy_inputs
    from edgeplan.targets.registry import get_target

    entry = zoo.get(name)
    model = entry.build().eval()
    x = torch.randn(*entry.input_shape)
    example = (x,)
    inputs = numpy_inputs(example)
    res: dict = {"model": name, "ms": {}, "compile_s": {}}
    with torch.no_grad():
        res["ms"]["eager"] = measure_ms(lambda _: model(x), inputs, repeat=repeat)
    with tempfile.TemporaryDirectory(prefix="edgeplan-bench-") as tmp:
        d = Path(tmp)
        res["compile_s"]["x86 onnxruntime"] = _onnx.export(model, example, d / "m.onnx", name)
        res["ms"]["onnxruntime"] = measure_ms(load_model_file(d / "m.onnx", threads), inputs, repeat=repeat)
        mod = _tvm.to_relax(model, example, name)
        target = get_target("x86").tvm_target({}, name)  # same key as compile_stage: shares its database
        res["compile_s"]["x86 tvm (default)"] = _tvm.build(mod, target, d / "default.so", name)
        res["ms"]["tvm default"] = measure_ms(load_module_file(d / "default.so", "x86", threads), inputs,
                                              repeat=min(repeat, 3))
        if tune_trials > 0:
            t0 = time.perf_counter()
            _tune.tune(mod, target, tune_trials, name, print)
            res["compile_s"][f"x86 tune {tune_trials} trials"] = time.perf_counter() - t0
        if _tune.has_database(target):
            res["compile_s"]["x86 tvm (tuned db)"] = _tune.compile_tuned(mod, target, d / "tuned.so", name, None)
            res["ms"]["tvm tuned"] = measure_ms(load_module_file(d / "tuned.so", "x86", threads), inputs,
                                                repeat=repeat)
        if aarch64:
            for kind, opts in (("arm-cpu", {"mcpu": "cortex-a72"}), ("cuda", {"arch": "sm_53"}),
                               ("cuda", {"arch": "sm_87"}), ("mali", {})):
                label = f"{kind} {opts.get('arch', opts.get('mcpu', 'g610'))}"
                cs = get_target(kind).compile_stage(model, example, opts, d / label.replace(" ", "_"), "tvm")
                res["compile_s"][label] = cs.compile_s
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials added to the x86 database")
    p.add_argument("--no-aarch64", action="store_true", help="skip the arm-cpu/cuda/mali compile timings")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    import os

    print(f"threads={args.threads} (torch, ONNX Runtime, TVM), denormals flushed, ms = median of up to "
          f"{args.repeat} runs, batch 1; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(other jobs skew eager/ORT most: their thread pools spin)")
    results = [bench_model(m, args.threads, args.tune_trials, not args.no_aarch64, args.repeat)
               for m in args.models.split(",")]
    w = [14, 12, 12, 14]
    print(_row(["model", "backend", "ms", "x eager speed"], w))
    for r in results:
        eager = r["ms"]["eager"]
        for backend, ms in r["ms"].items():
            print(_row([r["model"], backend, f"{ms:.1f}", f"{eager / ms:.2f}x"], w))
    print()
    print(_row(["model", "compile", "seconds", ""], w))
    for r in results:
        for what, s in r["compile_s"].items():
            print(_row([r["model"], what, f"{s:.1f}", ""], [14, 24, 8, 0]))


if __name__ == "__main__":
    main()
