"""Board-side loader for ``cuda`` stages on TensorRT: stage.onnx -> cached engine -> runner.

Jetsons run TensorRT from JetPack (8.2 on JetPack 4.6, 8.5 on 5, 8.6/10.x on 6); the
engine is built on the board at first start (``trt_build``). The runner copies inputs
into pinned host buffers, then host -> device -> engine -> host on one CUDA stream. CUDA
is reached through ``libcudart`` with ctypes, so the board needs no pycuda or
cuda-python (neither ships with JetPack 4.6). Everything that goes wrong at load
(no bindings, engine of another TensorRT, an op TensorRT rejects) raises one line
naming the stage and the fix, so the worker exits non-zero at start, before serving.

Runs on the board's own Python (3.6 on JetPack 4.6): standard library + numpy only.
"""

import ctypes
import ctypes.util
import glob
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np

from .trt_build import TrtError, api_level, cached_engine

_H2D, _D2H = 1, 2  # cudaMemcpyKind
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor
CUDART_ENV = "EDGEPLAN_CUDART"


def _bindings_help(stage):
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return (f"stage {stage}: TensorRT's Python bindings are not importable by {sys.executable} (Python {py}); "
            "install JetPack's with "
            "`sudo apt-get install python3-libnvinfer` and start the worker with the system python3 they are built "
            "for (JetPack 4.6: 3.6, JetPack 5: 3.8, JetPack 6: 3.10; EDGEPLAN_PYTHON in start.sh)")


def import_tensorrt(stage):
    try:
        import tensorrt
    except ImportError as e:
        raise TrtError(f"{_bindings_help(stage)} ({e})") from e
    return tensorrt


class CudaRuntime:
    """The few CUDA runtime calls the runner needs, through ctypes (libcudart from JetPack)."""

    def __init__(self, lib=None):
        self.lib = lib if lib is not None else ctypes.CDLL(self.find())
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                             ctypes.c_void_p]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]

    @staticmethod
    def find():
        if os.environ.get(CUDART_ENV):
            return os.environ[CUDART_ENV]
        name = ctypes.util.find_library("cudart")
        if name:
            return name
        found = sorted(glob.glob("/usr/local/cuda/lib64/libcudart.so*")
                       + glob.glob("/usr/local/cuda-*/targets/aarch64-linux/lib/libcudart.so*"))
        if not found:
            raise TrtError("libcudart.so not found (looked with ldconfig and in /usr/local/cuda*); install JetPack's "
                           f"CUDA runtime (sudo apt-get install cuda-cudart-<version>) or set {CUDART_ENV} to its path")
        return found[0]

    def check(self, rc, what):
        if rc != 0:
            msg = self.lib.cudaGetErrorString(rc)
            raise TrtError("CUDA {} failed: {} ({})".format(what, msg.decode() if msg else "?", rc))

    def malloc(self, nbytes):
        p = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return p.value

    def host_array(self, shape, dtype):
        """A numpy array in pinned (page-locked) host memory: copies to the GPU run at full speed, async."""
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        p = ctypes.c_void_p()
        self.check(self.lib.cudaHostAlloc(ctypes.byref(p), ctypes.c_size_t(nbytes), 0), "cudaHostAlloc")
        buf = (ctypes.c_char * nbytes).from_address(p.value)
        count = int(np.prod(shape))
        return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)

    def stream(self):
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value

    def copy_async(self, dst, src, nbytes, kind, stream):
        self.check(self.lib.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def sync(self, stream):
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def compute_capability(self):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.cudaGetDevice(ctypes.byref(dev)), "cudaGetDevice")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev), "cudaDeviceGetAttribute")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev), "cudaDeviceGetAttribute")
        return f"{major.value}{minor.value}"


def _io(trt, engine, level):
    """[(name, is_input, shape, numpy dtype)] of the engine's I/O tensors, in engine order."""
    out = []
    if level == "8.2":
        for i in range(engine.num_bindings):
            out.append((engine.get_binding_name(i), bool(engine.binding_is_input(i)),
                        tuple(engine.get_binding_shape(i)), np.dtype(trt.nptype(engine.get_binding_dtype(i)))))
    else:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        tuple(engine.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
    return out


def _position(name, prefix, default):
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else default


class Runner:
    """inputs (stage order) -> outputs (stage order) on one engine, one stream, pinned host buffers."""

    def __init__(self, trt, engine, cuda, spec, stage_dir):
        self.level = api_level(trt, spec.stage)
        self.cuda = cuda
        self.stage = spec.stage
        self.context = engine.create_execution_context()
        if self.context is None:
            raise TrtError(f"stage {spec.stage}: TensorRT could not create an execution context (GPU memory "
                           "full?); stop other GPU programs on this board")
        self.stream = cuda.stream()
        io = _io(trt, engine, self.level)
        self.inputs, self.outputs = [], []  # (position, name, host array, device pointer)
        self.bindings = []
        for k, (name, is_input, shape, dtype) in enumerate(io):
            want = spec.inputs if is_input else spec.outputs
            pos = _position(name, "input" if is_input else "output", k)
            if pos >= len(want) or tuple(want[pos].shape) != shape:
                expected = tuple(want[pos].shape) if pos < len(want) else "no such tensor"
                raise TrtError(f"stage {spec.stage}: engine tensor {name!r} has shape {shape}, stage.json expects "
                               f"{expected}; the engine is not this stage's: delete {stage_dir}/*.engine and start "
                               "again")
            host = cuda.host_array(shape, dtype)
            dev = cuda.malloc(host.nbytes)
            (self.inputs if is_input else self.outputs).append((pos, name, host, dev))
            self.bindings.append(dev)
            if self.level != "8.2":
                self.context.set_tensor_address(name, dev)
        self.outputs.sort(key=lambda t: t[0])
        self.lock = threading.Lock()  # one set of pinned buffers and one stream: one call at a time

    def __call__(self, inputs):
        with self.lock:
            return self._run(inputs)

    def _run(self, inputs):
        for pos, _name, host, dev in self.inputs:
            if pos >= len(inputs):
                names = [n for _, n, _, _ in self.inputs]
                raise ValueError(f"stage {self.stage}: got {len(inputs)} inputs, the engine reads {names}")
            np.copyto(host, np.asarray(inputs[pos]).reshape(host.shape), casting="same_kind")
            self.cuda.copy_async(dev, host.ctypes.data, host.nbytes, _H2D, self.stream)
        if self.level == "8.2":
            ok = self.context.execute_async_v2(self.bindings, self.stream)
        else:
            ok = self.context.execute_async_v3(self.stream)
        if not ok:
            raise RuntimeError(f"stage {self.stage}: TensorRT failed to enqueue the engine")
        for _, _, host, dev in self.outputs:
            self.cuda.copy_async(host.ctypes.data, dev, host.nbytes, _D2H, self.stream)
        self.cuda.sync(self.stream)
        return [host.copy() for _, _, host, _ in self.outputs]


def _log(line):
    print(line, file=sys.stderr, flush=True)


def _stage_of(stage_dir):
    with open(str(Path(stage_dir) / "stage.json")) as f:
        d = json.load(f)
    return d["stage"], d["module"]


def prepare(stage_dir, cuda=None):
    """Build or find the stage's engine without running it: (engine path, built now?)."""
    stage, module = _stage_of(stage_dir)
    trt = import_tensorrt(stage)
    cuda = cuda or CudaRuntime()
    _, path, built = cached_engine(trt, stage_dir, module, cuda.compute_capability(), stage, _log)
    return path, built


def load(stage_dir, spec, cuda=None):
    stage_dir = Path(stage_dir)
    trt = import_tensorrt(spec.stage)
    cuda = cuda or CudaRuntime()
    data, path, _ = cached_engine(trt, stage_dir, spec.module, cuda.compute_capability(), spec.stage, _log)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TrtError(f"stage {spec.stage}: {path} is not an engine TensorRT {trt.__version__} can load (built by "
                       f"another TensorRT version or GPU); delete it and start again to rebuild it from {spec.module}")
    return Runner(trt, engine, cuda, spec, stage_dir)
