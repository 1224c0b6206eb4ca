"""Board-side loader for TVM Relax stage libraries (``stage.so``).

Works with only ``apache-tvm-ffi`` + ``libtvm_runtime.so`` (copied from the apache-tvm
wheel of the board's architecture) and with full TVM installed. The runtime library
is found, in order, via ``$EDGEPLAN_TVM_RUNTIME_DIR``, a ``lib/`` folder next to the
stage, or the installed ``tvm`` package; it is loaded with RTLD_GLOBAL so the stage
library's VM symbols resolve. Device per target: x86/arm-cpu -> CPU, cuda -> CUDA,
mali -> OpenCL.
"""

import ctypes
import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Sequence, Set

import numpy as np

from .spec import StageSpec

# DLPack device types.
_DEVICE = {"x86": 1, "arm-cpu": 1, "cuda": 2, "mali": 4}
# TVM 0.27 builds each GPU runtime as its own library beside libtvm_runtime.so (build-tvm-runtime.sh copies both)
_EXTRA_LIB = {"cuda": "libtvm_runtime_cuda.so", "mali": "libtvm_runtime_opencl.so"}
_POOLED = 2  # VM allocator: pooled
_loaded: Set[str] = set()


def _runtime_dirs(stage_dir: Optional[Path]) -> List[Path]:
    dirs = []
    if os.environ.get("EDGEPLAN_TVM_RUNTIME_DIR"):
        dirs.append(Path(os.environ["EDGEPLAN_TVM_RUNTIME_DIR"]))
    if stage_dir is not None:
        dirs += [stage_dir / "lib", stage_dir.parent / "lib"]
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) / "lib" for p in spec.submodule_search_locations]
    return dirs


def _load_runtime(target: str, stage_dir: Optional[Path]) -> None:
    """dlopen libtvm_runtime.so (and the CUDA runtime for cuda) globally, once per process.

    tvm_ffi is imported first: it loads libtvm_ffi.so, which libtvm_runtime.so needs and
    which is found by its soname only once loaded (it lives inside the tvm_ffi package).
    """
    import tvm_ffi  # noqa: F401

    wanted = ["libtvm_runtime.so"] + ([_EXTRA_LIB[target]] if target in _EXTRA_LIB else [])
    for name in wanted:
        if name in _loaded:
            continue
        found = next((d / name for d in _runtime_dirs(stage_dir) if (d / name).exists()), None)
        if found is None:
            raise RuntimeError(
                f"{name} not found (looked in $EDGEPLAN_TVM_RUNTIME_DIR, {stage_dir}/lib and the tvm package); "
                "copy it from the apache-tvm wheel for this board into the artifact's lib/ folder"
            )
        ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)
        _loaded.add(name)


ALIGNMENT = 64  # bytes TVM's kernels assume of every argument buffer (its kAllocAlignment)


def aligned(a: np.ndarray) -> np.ndarray:
    """``a`` as a contiguous array whose data starts on a ``ALIGNMENT``-byte boundary.

    Vectorised kernels (AVX2/AVX-512, built for this CPU) load arguments with aligned
    instructions; numpy only guarantees 16 bytes, and a slice of a batch starts anywhere,
    so a misaligned input crashes the module. Copies only when needed.
    """
    a = np.ascontiguousarray(a)
    if a.ctypes.data % ALIGNMENT == 0:
        return a
    raw = np.empty(a.nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _pool_threads(threads: Optional[int]) -> int:
    """TVM's CPU pool size: ``threads`` when given, else TVM_NUM_THREADS or OMP_NUM_THREADS as TVM reads
    them (0: TVM's own choice, the cores)."""
    if threads:
        return int(threads)
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            n = int(os.environ.get(name) or 0)
        except ValueError:
            continue
        if n > 0:
            return n
    return 0


def load_module_file(path: Path, target: str = "x86", threads: Optional[int] = None):
    """Open a stage library and return a Runner: list of arrays in -> list of arrays out (stage order)."""
    path = Path(path)
    if target not in _DEVICE:
        raise ValueError(f"{path}: no TVM device for target {target!r}; expected one of {sorted(_DEVICE)}")
    _load_runtime(target, path.parent)
    import tvm_ffi

    if threads:
        cfg = tvm_ffi.get_global_func("runtime.config_threadpool", allow_missing=True)
        if cfg is not None:
            cfg(-1, int(threads))
    lib = tvm_ffi.load_module(str(path))
    vm = lib["vm_load_executable"]()
    dev_type = _DEVICE[target]
    if dev_type == 1:
        vm["vm_initialization"](1, 0, _POOLED)
    else:  # device plus the CPU host the VM keeps shapes on
        vm["vm_initialization"](dev_type, 0, _POOLED, 1, 0, _POOLED)
    main = vm["main"]
    device = tvm_ffi.Device(dev_type, 0) if dev_type != 1 else None

    def to_device(a: np.ndarray):
        t = tvm_ffi.from_dlpack(aligned(a))
        if device is None:
            return t
        alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
        d = alloc(t.shape, t.dtype, device, None)
        copy(t, d)
        return d

    def to_host(t) -> np.ndarray:
        if device is not None:
            alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
            h = alloc(t.shape, t.dtype, tvm_ffi.Device(1, 0), None)
            tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")(t, h)
            t = h
        return np.from_dlpack(t).copy()  # novermin: numpy 1.22+, as tvm_ffi needs Python 3.9+ anyway

    def run(inputs: Sequence[np.ndarray]) -> list:
        out = main(*[to_device(a) for a in inputs])
        if isinstance(out, (tuple, list)) or type(out).__name__ == "Array":
            return [to_host(t) for t in out]
        return [to_host(out)]

    # one worker thread on the CPU: TVM's pool runs the tasks on the calling thread (worker 0 is the caller),
    # so the worker charges the call on that thread's CPU clock (worker.module_cpu_clock)
    run.calling_thread = dev_type == 1 and _pool_threads(threads) == 1
    return run


def load(stage_dir: Path, spec: StageSpec):
    return load_module_file(Path(stage_dir) / spec.module, spec.target)
