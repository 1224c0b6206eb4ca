"""graph/: model -> LayerGraph. ``trace`` (torch.fx tracing, the one run that measures shapes),
``opkinds`` (each fx node's op kind and FLOPs), ``zoo`` and ``load`` import torch; ``order``
(layer order and cut bytes), ``model`` (the frozen data) and ``ops`` are pure Python.
``opkinds.op_kind`` is the one classification of fx nodes into op kinds (the tracer's and
the NPU op check's)."""
