"""Fake ``tensorrt`` modules with the API shapes of TensorRT 8.2, 8.5 and 10.x, and a fake CUDA runtime.

No GPU here, so the tests stop "at the line where a GPU is needed" by replacing the
two things that need one: the ``tensorrt`` module (injected through ``sys.modules``)
and ``backend_tensorrt.CudaRuntime``. Everything else runs for real: the engine cache,
the version branches, the pinned-buffer copies (real pointers: "device" memory is host
memory here) and the numbers. The fake engine executes the stage's ONNX file with ONNX
Runtime, reading its inputs from and writing its outputs to the device pointers it was
given, so a wrong pointer, shape or order shows up as a wrong answer.

Each API shape has only the calls that TensorRT version has: 8.2 has no memory pools
and no named I/O tensors; 10 has no bindings, no ``max_workspace_size`` and no
explicit-batch flag; a call a version lacks raises AttributeError, as the real one does.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


def nptype(dt):
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32}[dt]


class Logger:
    WARNING = 2

    def __init__(self, severity=2):
        self.severity = severity


class BuilderFlag(enum.IntEnum):
    FP16 = 0


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


class ParserError:
    def __init__(self, idx, name, op, desc, named):
        self._idx, self._name, self._op, self._desc, self._named = idx, name, op, desc, named

    def node(self):
        return self._idx

    def desc(self):
        return self._desc

    def code(self):
        return 8  # UNSUPPORTED_NODE


class NamedParserError(ParserError):
    """TensorRT 10's error also names the node and its operator."""

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op


def make(version: str, *, fast_fp16: bool = True, reject_op: str | None = None) -> types.ModuleType:
    """A fake ``tensorrt`` module of ``version`` ("8.2.1.8", "8.5.2.2", "10.3.0.30"); ``log`` records calls."""
    major, minor = (int(p) for p in version.split(".")[:2])
    tensor_api = (major, minor) >= (8, 5)
    bindings_api = major < 10
    pools = (major, minor) >= (8, 4)
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.log = []  # (call, detail) for the tests to check which API branch ran
    mod.builds = 0
    for cls in (DataType, Logger, BuilderFlag, TensorIOMode, MemoryPoolType):
        setattr(mod, cls.__name__, cls)
    mod.nptype = nptype
    if major < 10:
        mod.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.onnx = None

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        def parse(self, data):
            if reject_op is None:  # (onnx is not installed on the aarch64 guest; only rejection needs it)
                self.network.onnx = data
                return True
            import onnx

            model = onnx.load_from_string(data)
            for i, n in enumerate(model.graph.node):
                if n.op_type == reject_op:
                    cls = NamedParserError if major >= 10 else ParserError
                    self.errors.append(cls(i, n.name, n.op_type, f"No importer registered for op: {n.op_type}",
                                           major >= 10))
                    return False
            self.network.onnx = data
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Config:
        def __init__(self):
            self.flags = set()
            self._workspace = None

        def set_flag(self, flag):
            self.flags.add(flag)

        if pools:
            def set_memory_pool_limit(self, pool, size):
                mod.log.append(("set_memory_pool_limit", size))

        if bindings_api:
            @property
            def max_workspace_size(self):
                return self._workspace

            @max_workspace_size.setter
            def max_workspace_size(self, size):
                mod.log.append(("max_workspace_size", size))
                self._workspace = size

    class Builder:
        def __init__(self, logger):
            self.platform_has_fast_fp16 = fast_fp16

        def create_network(self, flags=0):
            mod.log.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            mod.builds += 1
            precision = b"fp16" if BuilderFlag.FP16 in config.flags else b"fp32"
            return b"FAKETRT|" + version.encode() + b"|" + precision + b"|" + network.onnx

    class Engine:
        def __init__(self, onnx_bytes):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.io = ([(i.name, True, tuple(i.shape)) for i in self.sess.get_inputs()]
                       + [(o.name, False, tuple(o.shape)) for o in self.sess.get_outputs()])

        def create_execution_context(self):
            return Context(self)

        if bindings_api:
            @property
            def num_bindings(self):
                return len(self.io)

            def get_binding_name(self, i):
                return self.io[i][0]

            def binding_is_input(self, i):
                return self.io[i][1]

            def get_binding_shape(self, i):
                return self.io[i][2]

            def get_binding_dtype(self, i):
                return DataType.FLOAT

        if tensor_api:
            @property
            def num_io_tensors(self):
                return len(self.io)

            def get_tensor_name(self, i):
                return self.io[i][0]

            def _entry(self, name):
                return next(e for e in self.io if e[0] == name)

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if self._entry(name)[1] else TensorIOMode.OUTPUT

            def get_tensor_shape(self, name):
                return self._entry(name)[2]

            def get_tensor_dtype(self, name):
                return DataType.FLOAT

    def _read(ptr, shape):
        n = int(np.prod(shape))
        return np.frombuffer((ctypes.c_char * (4 * n)).from_address(ptr), dtype=np.float32).reshape(shape).copy()

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.addresses = {}

        def _run(self, addresses):
            feed = {name: _read(addresses[name], shape) for name, is_in, shape in self.engine.io if is_in}
            outs = self.engine.sess.run(None, feed)
            for (name, _, _), out in zip([e for e in self.engine.io if not e[1]], outs, strict=True):
                out = np.ascontiguousarray(out, dtype=np.float32)
                ctypes.memmove(addresses[name], out.ctypes.data, out.nbytes)
            return True

        if major < 10:
            def execute_async_v2(self, bindings, stream_handle):
                mod.log.append(("execute_async_v2", stream_handle))
                return self._run({e[0]: ptr for e, ptr in zip(self.engine.io, bindings, strict=True)})

        if tensor_api:
            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr

            def execute_async_v3(self, stream_handle):
                mod.log.append(("execute_async_v3", stream_handle))
                return self._run(self.addresses)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            parts = bytes(data).split(b"|", 3)
            if len(parts) != 4 or parts[0] != b"FAKETRT" or parts[1] != version.encode():
                return None  # what TensorRT does with another version's engine (after logging an error)
            return Engine(parts[3])

    mod.Builder, mod.OnnxParser, mod.Runtime = Builder, OnnxParser, Runtime
    return mod


class FakeCuda:
    """CUDA runtime stand-in: "device" and pinned memory are ctypes buffers, copies are memmove."""

    def __init__(self, sm: str = "53"):
        self.sm = sm
        self.keep = []
        self.copies = 0
        self.syncs = 0

    def _alloc(self, nbytes):
        buf = ctypes.create_string_buffer(max(1, nbytes))
        self.keep.append(buf)
        return ctypes.addressof(buf)

    def malloc(self, nbytes):
        return self._alloc(nbytes)

    def host_array(self, shape, dtype):
        n = int(np.prod(shape))
        ptr = self._alloc(n * np.dtype(dtype).itemsize)
        buf = (ctypes.c_char * max(1, n * np.dtype(dtype).itemsize)).from_address(ptr)
        return np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)

    def stream(self):
        return 0x5EED

    def copy_async(self, dst, src, nbytes, kind, stream):
        assert stream == 0x5EED
        self.copies += 1
        ctypes.memmove(dst, src, nbytes)

    def sync(self, stream):
        self.syncs += 1

    def compute_capability(self):
        return self.sm
