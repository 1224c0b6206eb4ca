"""Op kinds and the op classes the cost model prices them by.

A layer's ``op`` is a fine-grained kind (what an NPU profile lists as supported);
its op class is the coarse bucket a device profile gives a throughput for.
"""

from __future__ import annotations

# Coarse buckets with one throughput figure each in device profiles.
OP_CLASSES: tuple[str, ...] = (
    "conv",  # dense convolution (groups == 1 or few groups)
    "dwconv",  # depthwise / grouped-per-channel convolution
    "gemm",  # linear, matmul, bmm, attention products
    "norm",  # batch/layer/group norm
    "pool",  # max/avg/adaptive pooling
    "elementwise",  # activations, add, mul, dropout (identity at inference)
    "reduce",  # softmax, mean, sum
    "data",  # reshape, flatten, cat, getitem, permute: no FLOPs, moves bytes
)

OP_CLASS_OF: dict[str, str] = {
    "conv2d": "conv",
    "conv1d": "conv",
    "dwconv2d": "dwconv",
    "linear": "gemm",
    "matmul": "gemm",
    "attention": "gemm",
    "batchnorm": "norm",
    "layernorm": "norm",
    "groupnorm": "norm",
    "maxpool": "pool",
    "avgpool": "pool",
    "adaptive_avgpool": "pool",
    "relu": "elementwise",
    "relu6": "elementwise",
    "gelu": "elementwise",
    "silu": "elementwise",
    "sigmoid": "elementwise",
    "hardswish": "elementwise",
    "tanh": "elementwise",
    "add": "elementwise",
    "mul": "elementwise",
    "sub": "elementwise",
    "div": "elementwise",
    "dropout": "elementwise",
    "identity": "data",
    "softmax": "reduce",
    "mean": "reduce",
    "sum": "reduce",
    "flatten": "data",
    "reshape": "data",
    "permute": "data",
    "transpose": "data",
    "cat": "data",
    "getitem": "data",
    "slice": "data",
    "expand": "data",
    "contiguous": "data",
    "output": "data",
    # added by graph/trace.py
    "pad": "data",
    "split": "data",
    "custom": "elementwise",  # an op the tracer has no formula for: priced as elementwise
}


def op_class(op: str) -> str:
    """The cost bucket of an op kind; unknown kinds are priced as elementwise."""
    return OP_CLASS_OF.get(op, "elementwise")
