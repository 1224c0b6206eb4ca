"""Builds the TensorRT engine of an ONNX stage on the board that runs it, and caches it.

An engine is specific to the TensorRT version and the GPU that built it, so it cannot be
made on the compile machine: the board builds it from ``stage.onnx`` at the first start
(minutes on a Nano) and keeps it next to the stage, named by the ONNX file's sha256, the
TensorRT version, the precision and the GPU's compute capability. A new stage.onnx, a
JetPack upgrade or another board therefore builds a new engine instead of loading a
stale one. Build ahead of the first start with::

    python3 -m edgeplan_runtime.trt_build stage1 [stage2 ...]

API levels (TensorRT's Python API changed twice across JetPack releases):
``8.2`` (TensorRT 8.0-8.4, JetPack 4.6.x and 5.0: explicit-batch flag, ``max_workspace_size``, bindings),
``8.5`` (8.5-8.6, JetPack 5.1 and 6.0: memory pools, named I/O tensors, ``execute_async_v3``),
``10`` (JetPack 6.1+: no explicit-batch flag, bindings removed).

Runs on the board's own Python (3.6 on JetPack 4.6): standard library only.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

META = "trt.json"  # written by codegen beside stage.onnx: precision, workspace, the ONNX nodes
ENGINE_DIR_ENV = "EDGEPLAN_ENGINE_DIR"  # where engines go when the stage folder is read-only
OLDEST = (8, 0)  # JetPack 4.6 (4.6.1 and later: 8.2)


class TrtError(RuntimeError):
    """A one-line reason a stage cannot run on TensorRT, naming the stage and the fix."""


def version_tuple(version):
    """``"8.2.1.8"`` -> ``(8, 2)``; unparsable parts count as 0."""
    parts = []
    for p in str(version).split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return tuple(parts)


def api_level(trt, stage="?"):
    """Which of the three API shapes ``trt`` (the imported tensorrt module) has: "8.2", "8.5" or "10"."""
    version = getattr(trt, "__version__", "0")
    v = version_tuple(version)
    if v < OLDEST:
        raise TrtError(f"stage {stage}: TensorRT {version} is older than 8.0; edgeplan needs JetPack 4.6 (TensorRT "
                       "8.0; 4.6.1+: 8.2) or newer: upgrade JetPack, or compile this stage with --backend tvm")
    if v[0] >= 10:
        return "10"
    if v >= (8, 5):
        return "8.5"
    return "8.2"


def file_sha256(path):
    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_name(onnx_sha256, trt_version, precision, sm):
    """The cache key as a file name: ONNX sha256, TensorRT version, precision, compute capability."""
    return f"stage-{onnx_sha256[:16]}-trt{trt_version}-{precision}-sm{sm}.engine"


def read_meta(stage_dir):
    path = Path(stage_dir) / META
    try:
        with open(str(path)) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise TrtError(f"{path}: cannot read the TensorRT stage settings ({e}); copy the stage folder again "
                       "from the compile host") from e
    if meta.get("precision") not in ("fp16", "fp32"):
        raise TrtError("{}: precision {!r} is not fp16 or fp32; re-run `edgeplan compile`".format(
            path, meta.get("precision")))
    return meta


def _node_of(err, nodes):
    """(name, op) of the ONNX node a parser error points at: TensorRT 10 names it, 8.x gives an index."""
    name = op = None
    if hasattr(err, "node_name"):
        name, op = err.node_name() or None, err.node_operator() or None
    idx = err.node() if hasattr(err, "node") else -1
    if (name is None or op is None) and isinstance(idx, int) and 0 <= idx < len(nodes):
        name, op = name or nodes[idx][0], op or nodes[idx][1]
    return idx, name, op


def build(trt, onnx_path, meta, stage, log=None):
    """Serialized engine bytes of ``onnx_path``; TrtError naming the stage, op and fix when TensorRT refuses it."""
    log = log or (lambda line: None)
    level = api_level(trt, stage)
    version = trt.__version__
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if level == "10" else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(str(onnx_path), "rb") as f:
        ok = parser.parse(f.read())
    if not ok:
        nodes = meta.get("nodes") or []
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        if not errors:
            raise TrtError(f"stage {stage}: TensorRT {version} cannot parse {onnx_path} (no parser error given); "
                           "compile this stage with --backend tvm or re-plan it onto the CPU")
        idx, name, op = _node_of(errors[0], nodes)
        desc = str(errors[0].desc()).strip()
        raise TrtError(f"stage {stage}: TensorRT {version} rejects ONNX node {idx} {name!r} (op {op}): {desc}; "
                       "re-plan so this layer runs on the CPU (edgeplan plan --pin), or compile the stage with "
                       "--backend tvm")
    config = builder.create_builder_config()
    workspace = int(meta.get("workspace_mb", 256)) << 20
    if level == "8.2":
        config.max_workspace_size = workspace
    else:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if meta["precision"] == "fp16":
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            log(f"stage {stage}: this GPU has no fast fp16; building in fp32")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtError(f"stage {stage}: TensorRT {version} could not build an engine from {onnx_path} (its log above "
                       "says why: often too little memory; stop other GPU programs or lower workspace_mb in trt.json)")
    return bytes(serialized)


def cached_engine(trt, stage_dir, module, sm, stage, log=None):
    """(engine bytes, path, built now?) for the stage: the cached file for this key, else built and saved.

    The cache lives in the stage folder, or in $EDGEPLAN_ENGINE_DIR when that is set
    (a read-only install); a cache that cannot be written is reported and the engine kept in memory.
    """
    log = log or (lambda line: None)
    stage_dir = Path(stage_dir)
    onnx_path = stage_dir / module
    meta = read_meta(stage_dir)
    api_level(trt, stage)
    name = engine_name(file_sha256(onnx_path), trt.__version__, meta["precision"], sm)
    cache = Path(os.environ[ENGINE_DIR_ENV]) if os.environ.get(ENGINE_DIR_ENV) else stage_dir
    path = cache / name
    if path.is_file():
        return path.read_bytes(), path, False
    log("stage {}: building the TensorRT {} engine from {} ({}; once per ONNX file and TensorRT version)".format(
        stage, trt.__version__, onnx_path.name, meta["precision"]))
    t0 = time.time()
    data = build(trt, onnx_path, meta, stage, log)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / (name + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(str(tmp), str(path))
    except OSError as e:
        log(f"stage {stage}: cannot keep the engine in {cache} ({e}); set {ENGINE_DIR_ENV} to a writable folder")
    log(f"stage {stage}: engine built in {time.time() - t0:.0f} s: {path}")
    return data, path, True


def main(argv=None):
    """Build (or find) the engine of each stage folder given; exit 1 with one line per failing stage."""
    from . import backend_tensorrt

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python3 -m edgeplan_runtime.trt_build STAGE_DIR [STAGE_DIR ...]")
        return 0 if args else 2
    status = 0
    for arg in args:
        stage_dir = Path(arg)
        if stage_dir.name == "stage.json":
            stage_dir = stage_dir.parent
        try:
            path, built = backend_tensorrt.prepare(stage_dir)
            print("{}: {} {}".format(stage_dir, "built" if built else "cached", path))
        except (TrtError, RuntimeError, OSError) as e:
            print(f"{stage_dir}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
