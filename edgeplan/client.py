"""Python client: ``with edgeplan.connect("art/", local=True) as pipe: y = pipe.infer(x)``.

``connect`` gives the same small API over three transports:

* an artifact folder with ``local=True``: every worker starts here as a process;
* an artifact folder with ``cluster=FILE``: the workers deployed on the boards (inside
  ``edgeplan emulate``, neither: the emulated boards);
* ``"http://host:8000"``: an ``edgeplan serve`` endpoint (or any KServe v2 server), binary tensors.

Numpy in, numpy out. ``infer(x)`` takes one array (one-input models), a list in
input order or a dict by input name, each with the batch dimension first (any
number of samples: the batcher packs them into the plan's batch); it returns one
array (one-output models) or a list. ``submit`` returns a ``concurrent.futures.Future``
of the same, for pipelining; it blocks while the serving queue is full (backpressure)
instead of growing memory.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgeplan.errors import ArtifactError, EdgeplanError, RuntimeFault


class InferenceError(EdgeplanError):
    """The pipeline refused a request (bad input) or could not answer it (names the board/stage when known)."""


def _arrays(x, specs) -> list[np.ndarray]:
    names = [n for n, _, _ in specs]
    if isinstance(x, dict):
        unknown = sorted(set(x) - set(names))
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise InferenceError(f"inputs by name: unknown {unknown}, missing {missing}; the model takes {names}")
        xs = [x[n] for n in names]
    elif isinstance(x, (list, tuple)):
        xs = list(x)
    else:
        xs = [x]
    if len(xs) != len(specs):
        raise InferenceError(f"got {len(xs)} input array(s); the model takes {len(specs)} ({', '.join(names)})")
    out = []
    for a, (name, _shape, dtype) in zip(xs, specs, strict=True):
        a = np.asarray(a)
        dt = np.dtype(dtype)
        if a.dtype != dt and not np.can_cast(a.dtype, dt, "same_kind"):
            raise InferenceError(f"input '{name}': dtype {a.dtype} cannot become the model's {dt}")
        out.append(np.array(a, dtype=dt, copy=True))  # a copy: the caller may reuse its buffer after submit()
    return out


def _result(ys: list[np.ndarray]):
    return ys[0] if len(ys) == 1 else ys


class _Base:
    input_specs: list
    output_specs: list

    def infer(self, x, timeout_s: float | None = None):
        """Run ``x`` (see the module docstring) and return the outputs."""
        return self.submit(x, timeout_s).result()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalPipeline(_Base):
    """An artifact folder's pipeline driven from this process (workers local, emulated or deployed)."""

    def __init__(self, artifacts, *, local: bool, secret: bytes | None = None, placement=None,
                 head_host: str = "127.0.0.1", timeout_s: float = 60.0, max_delay_ms: float = 2.0,
                 window: int = 0):
        from edgeplan.runtime.batcher import Batcher, BatcherConfig
        from edgeplan.runtime.head import HeadConfig, PipelineError
        from edgeplan.runtime.local import ArtifactProblem, start_pipeline

        try:
            self.pipeline = start_pipeline(artifacts, local=local, secret=secret, placement=placement,
                                           head_host=head_host, config=HeadConfig(window=window))
        except ArtifactProblem as e:
            raise ArtifactError(str(e)) from None
        except PipelineError as e:
            raise RuntimeFault(str(e)) from None
        self.head = self.pipeline.head
        self.timeout_s = timeout_s
        self.batcher = Batcher(self.head, BatcherConfig(max_delay_s=max_delay_ms / 1e3, request_timeout_s=timeout_s))
        self.input_specs = self.batcher.input_specs
        self.output_specs = self.batcher.output_specs
        self.model = self.head.model

    def submit(self, x, timeout_s: float | None = None) -> Future:
        from edgeplan.runtime.batcher import BadInput, Busy, RequestFailed

        xs = _arrays(x, self.input_specs)
        budget = timeout_s or self.timeout_s
        give_up = time.monotonic() + budget
        while True:
            try:
                inner = self.batcher.submit(xs, budget)
                break
            except BadInput as e:
                raise InferenceError(str(e)) from None
            except Busy as e:  # backpressure: wait for room rather than queue without bound
                if time.monotonic() >= give_up:
                    raise InferenceError(f"the pipeline stayed busy for {budget:g}s: {e}") from None
                time.sleep(min(getattr(e, "retry_after_s", 0.01), 0.01))
        out: Future = Future()

        def done(f: Future) -> None:
            try:
                out.set_result(_result(f.result()))
            except RequestFailed as e:
                out.set_exception(InferenceError(f"request failed: {getattr(e, 'reason', '') or e}"))
            except Exception as e:  # noqa: BLE001 - hand every failure to the caller's future
                out.set_exception(e)

        inner.add_done_callback(done)
        return out

    def status(self) -> dict:
        return self.head.status()

    def close(self) -> None:
        self.batcher.close()
        self.pipeline.close()


_V2_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
              "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
              "FP32": "float32", "FP64": "float64"}


class RemotePipeline(_Base):
    """A KServe v2 endpoint (``edgeplan serve``) over HTTP with binary tensors."""

    def __init__(self, url: str, name: str | None = None, timeout_s: float = 60.0, concurrency: int = 8):
        import httpx

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=concurrency))
        try:
            if name is None:
                r = self._http.post("/v2/repository/index", json={})
                models = [m["name"] for m in r.json()] if r.status_code == 200 else []
                if len(models) != 1:
                    raise InferenceError(f"{self.url}: give name= (the server lists {models or 'no models'})")
                name = models[0]
            r = self._http.get(f"/v2/models/{name}")
        except httpx.HTTPError as e:
            self._http.close()
            raise InferenceError(f"{self.url}: cannot reach the server ({e}); is `edgeplan serve` running?") from None
        if r.status_code != 200:
            self._http.close()
            raise InferenceError(f"{self.url}/v2/models/{name}: {r.status_code} {self._message(r)}")
        meta = r.json()
        self.model = name
        self.input_specs = [(t["name"], tuple(t["shape"][1:]), _V2_DTYPES[t["datatype"]]) for t in meta["inputs"]]
        self.output_specs = [(t["name"], tuple(t["shape"][1:]), _V2_DTYPES[t["datatype"]])
                             for t in meta["outputs"]]
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="edgeplan-client")

    @staticmethod
    def _message(r) -> str:
        try:
            return r.json()["error"]
        except (ValueError, KeyError, TypeError):
            return r.text[:200]

    def _call(self, xs: list[np.ndarray], timeout_s: float):
        dt = {v: k for k, v in _V2_DTYPES.items()}
        blobs = [np.ascontiguousarray(a).tobytes() for a in xs]
        doc = {"inputs": [{"name": n, "datatype": dt[np.dtype(d).name], "shape": list(a.shape),
                           "parameters": {"binary_data_size": len(b)}}
                          for (n, _, d), a, b in zip(self.input_specs, xs, blobs, strict=True)],
               "parameters": {"binary_data_output": True}}
        head = json.dumps(doc).encode()
        give_up = time.monotonic() + timeout_s
        backoff = 0.005
        while True:
            r = self._http.post(f"/v2/models/{self.model}/infer", content=b"".join([head, *blobs]),
                                headers={"Inference-Header-Content-Length": str(len(head)),
                                         "Content-Type": "application/octet-stream"})
            if r.status_code == 503 and time.monotonic() < give_up:
                # Retry-After counts whole seconds; the queue usually drains in milliseconds, so back off
                # exponentially from 5 ms up to it rather than idling a full second.
                try:
                    cap = float(r.headers.get("Retry-After", "1"))
                except ValueError:
                    cap = 1.0
                time.sleep(min(backoff, cap, max(0.0, give_up - time.monotonic())))
                backoff *= 2
                continue
            break
        if r.status_code != 200:
            raise InferenceError(f"{self.url}: {r.status_code} {self._message(r)}")
        hlen = int(r.headers.get("Inference-Header-Content-Length", len(r.content)))
        res = json.loads(r.content[:hlen])
        at, ys = hlen, []
        for t in res["outputs"]:
            dtype = np.dtype(_V2_DTYPES[t["datatype"]])
            if "parameters" in t and "binary_data_size" in t["parameters"]:
                n = t["parameters"]["binary_data_size"]
                ys.append(np.frombuffer(r.content[at:at + n], dtype).reshape(t["shape"]).copy())
                at += n
            else:
                ys.append(np.asarray(t["data"], dtype).reshape(t["shape"]))
        return _result(ys)

    def submit(self, x, timeout_s: float | None = None) -> Future:
        xs = _arrays(x, self.input_specs)
        return self._pool.submit(self._call, xs, timeout_s or self.timeout_s)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()


def connect(target: str | os.PathLike[str], *, local: bool = False, cluster: str | os.PathLike[str] | None = None,
            name: str | None = None, timeout_s: float = 60.0, max_delay_ms: float = 2.0, window: int = 0,
            secret_env: str | None = None, concurrency: int = 8):
    """A pipeline with ``infer``/``submit``/``close`` (a context manager): see the module docstring.

    URL only: ``name`` (default: the server's only model), ``concurrency`` (requests in flight).
    Folder only: ``max_delay_ms`` (batcher), ``window`` (plan batches in flight), ``secret_env``.
    """
    target_s = str(target)
    if target_s.startswith(("http://", "https://")):
        if local or cluster is not None:
            raise InferenceError(f"connect({target_s!r}): a URL takes neither local= nor cluster=")
        return RemotePipeline(target_s, name, timeout_s, concurrency)
    from edgeplan.runtime import wire
    from edgeplan.testbed.emulate import placement_from_env

    if not Path(target_s).is_dir():
        raise ArtifactError(f"{target_s}: not a folder; give an `edgeplan compile` output folder or an http:// URL")
    testbed = placement_from_env() if not local and cluster is None else None
    if testbed is None and local == (cluster is not None):
        raise InferenceError(f"connect({target_s!r}): give exactly one of local=True (workers here) or "
                             "cluster=FILE (deployed boards), or call it inside `edgeplan emulate`")
    if cluster is not None and secret_env is None:
        from edgeplan.profiles.load import load_cluster

        secret_env = load_cluster(cluster).secret_env
    try:
        secret = wire.secret_from_env(secret_env)
    except ValueError as e:
        raise InferenceError(str(e)) from None
    if testbed is not None:
        placement, head_host = testbed
        return LocalPipeline(target_s, local=True, secret=secret, placement=placement, head_host=head_host,
                             timeout_s=timeout_s, max_delay_ms=max_delay_ms, window=window)
    return LocalPipeline(target_s, local=local, secret=secret, timeout_s=timeout_s, max_delay_ms=max_delay_ms,
                         window=window)
