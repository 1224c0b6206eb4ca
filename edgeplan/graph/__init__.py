"""graph/: model -> LayerGraph. Only ``trace``/``opkinds``/``zoo``/``load`` import torch;
``model`` (the frozen data) and ``ops`` are pure Python. ``opkinds.op_kind`` is the one
classification of fx nodes into op kinds (the tracer's and the NPU op check's)."""
