"""Board-side loader for ONNX stage modules (``stage.onnx``) with ONNX Runtime's CPU provider.

Inputs and outputs are positional (``input0``.., ``output0``..), as the x86/arm-cpu
targets export them; threads default to the board's cores (ONNX Runtime's choice).
Denormals are flushed to zero, as on the compile machine when speeds were measured.
"""

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compat import zip_strict
from .spec import StageSpec


def load_model_file(path: Path, threads: Optional[int] = None):
    """Open an ONNX stage and return a Runner: list of arrays in -> list of arrays out (stage order)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # A pipeline worker idles between micro-batches: spinning pool threads would burn the CPU
    # that other stages (and, on an emulated board, its quota) need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]

    # The exporter drops inputs a stage does not read; the names keep each one's position.
    positions = [int(n[len("input"):]) if n.startswith("input") and n[5:].isdigit() else i
                 for i, n in enumerate(in_names)]

    def run(inputs: Sequence[np.ndarray]) -> list:
        if positions and max(positions) >= len(inputs):
            raise ValueError(f"{path}: got {len(inputs)} inputs, the model reads {in_names}")
        feed = {n: np.ascontiguousarray(inputs[p]) for n, p in zip_strict(in_names, positions)}
        return list(sess.run(out_names, feed))

    # one intra-op thread: ONNX Runtime makes no pool and runs every op on the caller's thread, so the
    # worker charges the call on that thread's CPU clock (worker.module_cpu_clock)
    run.calling_thread = threads is not None and int(threads) == 1
    return run


def load(stage_dir: Path, spec: StageSpec):
    # EDGEPLAN_THREADS: set by the launcher environment (the emulated testbed sets it from a board's quota)
    threads = os.environ.get("EDGEPLAN_THREADS")
    return load_model_file(Path(stage_dir) / spec.module, int(threads) if threads else None)
