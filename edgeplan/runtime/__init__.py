"""runtime/: what runs on the boards (stage worker, head, monitor, wire format).

This package is copied verbatim into each board's artifact folder as
``edgeplan_runtime/``, so it imports only the standard library and numpy at
module level (backends such as tvm_ffi / onnxruntime lazily) and only relative
imports within itself. No torch for inference.
"""
