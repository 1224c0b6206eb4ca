"""Open Inference Protocol (KServe v2 REST) endpoint over a running pipeline, with starlette.

Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
``.../ready``, ``POST .../infer`` (JSON tensors and Triton's binary-tensor extension, so
``tritonclient.http`` and ``curl`` both work) and ``/metrics`` (Prometheus text).

Every bad request gets a 4xx with one line naming what is wrong (``{"error": ...}``,
as the protocol says) and the server keeps serving: wrong shape/dtype/byte count ->
400 naming the input and the expected shape; unknown model -> 404; body over
``max_request_bytes`` -> 413 (the body is read, and gzip/deflate inflated, in chunks and
dropped past the limit; JSON text may use 1/16 of it, as its Python objects take ~16x),
so no request allocates much more; a full queue -> 503 with Retry-After.

Imported only on the serving side: starlette is imported here, never by the worker.
"""

import asyncio
import json
import logging
import math
import re
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import BadInput, Batcher, Busy, RequestFailed
from .compat import prod, zip_strict

# KServe v2 datatypes <-> numpy
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64"}
_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
log = logging.getLogger("edgeplan.serve")
HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
JSON_EXPANSION = 16  # bytes of Python objects per byte of JSON text, about, for number lists


def model_name(name: str) -> str:
    """The protocol-safe model name: characters outside [A-Za-z0-9_.-] become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "model"


def v2_datatype(dtype) -> str:
    try:
        return _TO_V2[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message.replace("\n", " ")}, status, headers=headers)


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body (gzip/deflate bodies decompressed, as tritonclient sends them when asked), or 413 as
    soon as it, declared, streamed or decompressed, passes ``limit`` bytes: nothing larger is held."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise HTTPError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes "
                                 "(serve --max-request-bytes)")
    enc = request.headers.get("content-encoding", "identity").lower().strip()
    if enc in ("identity", ""):
        inflate = None
    elif enc in ("gzip", "deflate"):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    else:
        raise HTTPError(415, f"Content-Encoding {enc!r} is not supported; send it uncompressed, gzip or deflate")
    chunks, total = [], 0
    too_big = HTTPError(413, f"request body exceeds the limit of {limit} bytes (serve --max-request-bytes)")
    try:
        async for chunk in request.stream():
            if inflate is not None:
                chunk = inflate.decompress(chunk, limit - total + 1)  # never more than the limit allows
                if inflate.unconsumed_tail:
                    raise too_big
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        if inflate is not None:
            if not inflate.eof:
                raise HTTPError(400, f"{enc} body is truncated")
            if inflate.unused_data:
                raise HTTPError(400, f"{len(inflate.unused_data)} bytes after the end of the {enc} stream")
    except zlib.error as e:
        raise HTTPError(400, f"body is not valid {enc} ({e})") from None
    return b"".join(chunks)


class Endpoint:
    """The routes over one :class:`Batcher`; ``status`` feeds /metrics (``head.status()``)."""

    def __init__(self, batcher: Batcher, name: str, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 version: str = "1"):
        self.batcher = batcher
        self.head = batcher.head
        self.name = model_name(name)
        self.version = version
        self.max_request_bytes = max_request_bytes
        self.max_json_bytes = max(max_request_bytes // JSON_EXPANSION, 4096)
        self.inputs = {n: (shape, dtype) for n, shape, dtype in batcher.input_specs}
        self.outputs = {n: (shape, dtype) for n, shape, dtype in batcher.output_specs}

    # --- metadata and health ------------------------------------------------------------------------

    def metadata(self) -> dict:
        def tensors(specs):
            return [{"name": n, "datatype": v2_datatype(d), "shape": [-1, *s]} for n, s, d in specs]

        return {"name": self.name, "versions": [self.version], "platform": "edgeplan",
                "inputs": tensors(self.batcher.input_specs), "outputs": tensors(self.batcher.output_specs)}

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.name:
            raise HTTPError(404, f"unknown model '{name}'; this server serves '{self.name}'")
        version = request.path_params.get("version")
        if version is not None and version != self.version:
            raise HTTPError(404, f"model '{name}' has no version '{version}'; it has '{self.version}'")

    def _ready(self) -> bool:
        try:
            return bool(self.head.ready())
        except Exception:  # noqa: BLE001 - a head that cannot answer is not ready
            return False

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self._ready()
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "edgeplan", "version": "1", "extensions": ["binary_tensor_data"]})

    async def repository_index(self, request: Request) -> Response:
        # Triton's model-repository extension: lets a client find the one model this server has.
        return JSONResponse([{"name": self.name, "version": self.version, "state": "READY" if self._ready()
                              else "UNAVAILABLE"}])

    async def model_metadata(self, request: Request) -> Response:
        self._model(request)
        return JSONResponse(self.metadata())

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        ok = self._ready()
        return JSONResponse({"name": self.name, "ready": ok}, 200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        from . import metrics  # MON's module: prometheus_client is imported there, on the serving side

        status = await asyncio.get_event_loop().run_in_executor(None, self.head.status)  # the running loop (3.6)
        status = {**status, "serving": dict(self.batcher.stats)}
        text = metrics.exposition(status) + self.serving_metrics()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def serving_metrics(self) -> bytes:
        """The batcher's counters (HTTP side of the head) in Prometheus text format."""
        docs = {"requests_total": "Application requests accepted by the batcher.",
                "samples_total": "Samples in accepted application requests.",
                "batches_total": "Plan-batch requests the batcher sent to the head.",
                "padded_samples_total": "Zero samples that filled partial plan batches.",
                "rejected_total": "Requests refused with 503 because the serving queue was full.",
                "failed_total": "Accepted requests that ended without an answer."}
        lines = []
        for key, doc in docs.items():
            name = f"edgeplan_serving_{key}"
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter", f"{name} {float(self.batcher.stats[key])}"]
        return ("\n".join(lines) + "\n").encode()

    # --- inference ------------------------------------------------------------------------------------

    def parse(self, body: bytes, header_length: Optional[str]) -> Tuple[dict, List[np.ndarray]]:
        """Decode a v2 request (JSON, or JSON header + binary tensors) into the model's input arrays."""
        if header_length is not None:
            try:
                hlen = int(header_length)
            except ValueError:
                raise HTTPError(400, f"{HEADER_LENGTH} {header_length!r} is not a number") from None
            if not 0 < hlen <= len(body):
                raise HTTPError(400, f"{HEADER_LENGTH} {hlen} is outside the body of {len(body)} bytes")
            head_bytes, binary = body[:hlen], memoryview(body)[hlen:]
        else:
            head_bytes, binary = body, memoryview(b"")
        if len(head_bytes) > self.max_json_bytes:
            # Python objects of parsed JSON take ~16x its text: this keeps them within the request limit.
            raise HTTPError(413, f"JSON part of {len(head_bytes)} bytes exceeds {self.max_json_bytes} bytes "
                                 "(1/16 of --max-request-bytes); send the tensors as binary data "
                                 "(parameters.binary_data_size, as tritonclient does by default)")
        try:
            req = json.loads(head_bytes)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"request header is not JSON ({e})") from None
        if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
            raise HTTPError(400, "request JSON needs an 'inputs' list")
        given: Dict[str, np.ndarray] = {}
        offset = 0
        for t in req["inputs"]:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise HTTPError(400, "every entry of 'inputs' needs a 'name'")
            name = t["name"]
            if name not in self.inputs:
                raise HTTPError(400, f"unknown input '{name}'; the model takes {sorted(self.inputs)}")
            if name in given:
                raise HTTPError(400, f"input '{name}' given twice")
            shape, dtype = self.inputs[name]
            expected = _shape_text((-1, *shape))
            dt = t.get("datatype")
            if dt != v2_datatype(dtype):
                raise HTTPError(400, f"input '{name}': datatype {dt!r}, expected {v2_datatype(dtype)} "
                                     f"(shape {expected})")
            got = t.get("shape")
            if (not isinstance(got, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in got)
                    or len(got) != len(shape) + 1 or tuple(got[1:]) != shape or got[0] < 1):
                raise HTTPError(400, f"input '{name}': shape {got}, expected {expected} (batch first)")
            count = prod(got)
            nbytes = count * dtype.itemsize
            params = t.get("parameters") or {}
            if "binary_data_size" in params:
                size = params["binary_data_size"]
                if not isinstance(size, int) or size != nbytes:
                    raise HTTPError(400, f"input '{name}': binary_data_size {size!r}, but shape {got} of "
                                         f"{v2_datatype(dtype)} is {nbytes} bytes (expected shape {expected})")
                if offset + size > len(binary):
                    raise HTTPError(400, f"input '{name}': {size} binary bytes declared, only "
                                         f"{len(binary) - offset} left in the body")
                x = np.frombuffer(binary[offset:offset + size], dtype).reshape(got)
                offset += size
            elif "data" in t:
                try:
                    x = np.asarray(t["data"], dtype=dtype)
                except (ValueError, TypeError) as e:
                    raise HTTPError(400, f"input '{name}': data is not {v2_datatype(dtype)} numbers ({e})") from None
                if x.size != count:
                    raise HTTPError(400, f"input '{name}': {x.size} values for shape {got} ({count} expected; "
                                         f"model shape {expected})")
                x = x.reshape(got)
            else:
                raise HTTPError(400, f"input '{name}': needs 'data' or parameters.binary_data_size")
            given[name] = x
        if offset != len(binary):
            raise HTTPError(400, f"{len(binary) - offset} binary bytes after the last input's data "
                                 "(binary_data_size values do not add up to the body)")
        missing = [n for n in self.inputs if n not in given]
        if missing:
            raise HTTPError(400, f"missing input(s) {missing}; the model takes "
                                 + ", ".join(f"'{n}' {_shape_text((-1, *s))}" for n, (s, _) in self.inputs.items()))
        return req, [given[n] for n in self.inputs]

    def respond(self, req: dict, ys: List[np.ndarray]) -> Response:
        """Outputs as JSON, or binary (extension) when the request asked for it."""
        params = req.get("parameters") or {}
        binary_all = bool(params.get("binary_data_output", False))
        wanted = req.get("outputs")
        names = list(self.outputs)
        if wanted is None:
            chosen = [(n, binary_all) for n in names]
        else:
            if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
                raise HTTPError(400, "'outputs' must be a list of {\"name\": ...}")
            chosen = []
            for o in wanted:
                if o["name"] not in self.outputs:
                    raise HTTPError(400, f"unknown output '{o['name']}'; the model has {names}")
                chosen.append((o["name"], bool((o.get("parameters") or {}).get("binary_data", binary_all))))
        by_name = dict(zip_strict(names, ys))
        outs, blobs = [], []
        for n, binary in chosen:
            y = by_name[n]
            t = {"name": n, "datatype": v2_datatype(y.dtype), "shape": list(y.shape)}
            if binary:
                b = np.ascontiguousarray(y).tobytes()
                t["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                t["data"] = y.reshape(-1).tolist()
            outs.append(t)
        doc = {"model_name": self.name, "model_version": self.version, "outputs": outs}
        if "id" in req:
            doc["id"] = req["id"]
        text = json.dumps(doc, separators=(",", ":")).encode()
        if not blobs:
            return Response(text, media_type="application/json")
        return Response(b"".join([text, *blobs]), media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(text))})

    async def infer(self, request: Request) -> Response:
        self._model(request)
        if not self._ready():
            raise HTTPError(503, "not ready: a pipeline stage has no live replica (see /metrics, "
                                 "edgeplan_worker_up); restart that board's workers", {"Retry-After": "5"})
        body = await _read_body(request, self.max_request_bytes)
        req, xs = self.parse(body, request.headers.get(HEADER_LENGTH.lower()))
        timeout = (req.get("parameters") or {}).get("timeout")  # tritonclient: microseconds
        timeout_s = timeout / 1e6 if isinstance(timeout, (int, float)) and timeout > 0 else None
        try:
            fut = self.batcher.submit(xs, timeout_s)
        except BadInput as e:
            raise HTTPError(400, str(e)) from None
        except Busy as e:
            retry = getattr(e, "retry_after_s", 1.0) or 1.0
            raise HTTPError(503, f"busy: {e}", {"Retry-After": str(max(1, math.ceil(retry)))}) from None
        wait_s = (timeout_s or self.batcher.cfg.request_timeout_s) + 10.0  # a safety net over the deadlines
        try:
            ys = await asyncio.wait_for(asyncio.wrap_future(fut), wait_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"no answer within {wait_s:g}s") from None
        except Busy as e:
            retry = getattr(e, "retry_after_s", 1.0) or 1.0
            raise HTTPError(503, f"busy: {e}", {"Retry-After": str(max(1, math.ceil(retry)))}) from None
        except RequestFailed as e:
            raise HTTPError(500, f"request failed: {getattr(e, 'reason', '') or e}") from None
        return self.respond(req, ys)


def _guard(handler):
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except HTTPError as e:
            return _error(e.status, e.message, e.headers)
        except Exception as e:  # noqa: BLE001 - one request's bug must not stop the server
            log.exception("%s %s", request.method, request.url.path)
            return _error(500, f"internal error: {type(e).__name__}: {e}")

    return route


def make_app(batcher: Batcher, name: str, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Starlette:
    """The starlette application serving ``batcher`` as model ``name`` (sanitised with model_name)."""
    ep = Endpoint(batcher, name, max_request_bytes)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", _guard(ep.live)),
        Route("/v2/health/ready", _guard(ep.ready)),
        Route("/v2", _guard(ep.server_metadata)),
        Route("/v2/repository/index", _guard(ep.repository_index), methods=["POST"]),
        Route("/metrics", _guard(ep.metrics)),
    ]
    for base in (model, versioned):
        routes += [Route(base, _guard(ep.model_metadata)), Route(base + "/ready", _guard(ep.model_ready)),
                   Route(base + "/infer", _guard(ep.infer), methods=["POST"])]

    async def not_found(request: Request, exc) -> Response:
        return _error(getattr(exc, "status_code", 404), f"no route {request.method} {request.url.path}")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.endpoint = ep
    return app
