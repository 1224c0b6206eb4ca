"""graph/: model -> LayerGraph. Only ``trace``/``zoo``/``load`` import torch;
``model`` (the frozen data) and ``ops`` are pure Python."""
