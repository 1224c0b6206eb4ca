"""runtime/: what runs on the boards, and the head that serves a running pipeline.

- ``worker``: one stage worker process per (device, stage); ``spec`` is its stage.json contract.
- ``backends`` + ``backend_<name>``: the board-side module loaders (onnxruntime, tvm, rknn,
  openvino, tensorrt; ``trt_build`` builds and caches a TensorRT engine on the board).
- ``wire`` (frames: header, raw tensor bytes, optional HMAC authentication; no pickle) and
  ``net`` (connect/listen/accept, per-peer sender threads with bounded queues): plain sockets.
- ``head``: the long-lived service that feeds requests into the pipeline and answers each one.
- ``batcher`` (requests -> the plan's fixed batch), ``http`` (Open Inference Protocol / KServe v2
  REST, starlette), ``serve`` (``python -m edgeplan_runtime.serve ART_DIR``, uvicorn).
- ``monitor`` (what each worker measures about itself and its board) and ``metrics`` (the head's
  status as Prometheus metrics, prometheus_client).
- ``local`` (run an artifact folder: workers as local processes or on the deployed boards) and
  ``report`` (measured vs predicted, for ``edgeplan run``); ``canonical`` (the deterministic JSON and
  digest that plan.json, golden files and run reports share).

This package is copied verbatim into each board's artifact folder as
``edgeplan_runtime/``, so it imports only the standard library and numpy at
module level (backends, prometheus_client and uvicorn lazily; starlette only in
``http``, which only the serving side imports) and only relative imports within
itself. No torch for inference. It runs on Python 3.6 and newer (JetPack 4.6's python3; the
``dataclasses`` backport there): typing forms or string annotations instead of ``X | None`` and
``list[int]``, and ``compat`` for the few newer built-ins (``tests/targets/test_board_python.py``).
"""
