"""KServe v2 routes over a fake head (starlette TestClient): every route and every bad-input case."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import numpy as np
import pytest
from starlette.testclient import TestClient

from edgeplan.runtime.batcher import Batcher, BatcherConfig
from edgeplan.runtime.http import HEADER_LENGTH, make_app, model_name

from .fake_head import FakeHead, reference

NAME = "fake"


@pytest.fixture
def served():
    head = FakeHead(batch=4, window=4)
    batcher = Batcher(head, BatcherConfig(max_delay_s=0.002))
    with TestClient(make_app(batcher, NAME, max_request_bytes=4096)) as client:
        yield client, head, batcher
    batcher.close()


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)


def _binary_body(x: np.ndarray, extra: dict | None = None, size: int | None = None) -> tuple[bytes, dict]:
    raw = x.tobytes()
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                       "parameters": {"binary_data_size": len(raw) if size is None else size}}],
           "parameters": {"binary_data_output": True}, **(extra or {})}
    head = json.dumps(doc).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def _decode_binary(r) -> dict:
    hlen = int(r.headers[HEADER_LENGTH])
    doc = json.loads(r.content[:hlen])
    at = hlen
    out = {}
    for t in doc["outputs"]:
        n = t["parameters"]["binary_data_size"]
        dt = {"FP32": np.float32, "FP64": np.float64}[t["datatype"]]
        out[t["name"]] = np.frombuffer(r.content[at:at + n], dt).reshape(t["shape"])
        at += n
    assert at == len(r.content)
    return out


def test_model_name_replaces_characters_outside_the_protocol_set():
    assert model_name("torchvision:resnet18") == "torchvision_resnet18"
    assert model_name("nets/my net.py:make") == "nets_my_net.py_make"
    assert model_name("resnet18-cifar") == "resnet18-cifar"


def test_health_metadata_and_readiness(served):
    client, head, _ = served
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "s", "datatype": "FP64", "shape": [-1, 1]}]
    assert client.get(f"/v2/models/{NAME}/versions/1").status_code == 200
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    head.closed = True
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get(f"/v2/models/{NAME}/ready").status_code == 503


def test_json_tensors_in_and_out(served):
    client, _, _ = served
    x = _x(2)
    r = client.post(f"/v2/models/{NAME}/infer", json={
        "id": "req-7", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_name"] == NAME
    y, s = doc["outputs"]
    ref = reference(x)
    assert y["shape"] == [2, 3] and s["shape"] == [2, 1] and s["datatype"] == "FP64"
    np.testing.assert_array_equal(np.array(y["data"], np.float32).reshape(2, 3), ref[0])
    np.testing.assert_array_equal(np.array(s["data"]).reshape(2, 1), ref[1])
    # nested data is accepted as well
    r = client.post(f"/v2/models/{NAME}/versions/1/infer", json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}],
        "outputs": [{"name": "s"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["s"]


def test_binary_tensors_in_and_out(served):
    client, _, _ = served
    x = _x(6, 3)  # larger than the plan batch of 4: split over two head requests
    body, headers = _binary_body(x)
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = _decode_binary(r)
    ref = reference(x)
    np.testing.assert_array_equal(out["y"], ref[0])
    np.testing.assert_array_equal(out["s"], ref[1])
    # binary in, one output as JSON and one binary
    body, headers = _binary_body(x[:1], {"parameters": {}, "outputs": [
        {"name": "y", "parameters": {"binary_data": False}}, {"name": "s", "parameters": {"binary_data": True}}]})
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    hlen = int(r.headers[HEADER_LENGTH])
    doc = json.loads(r.content[:hlen])
    assert doc["outputs"][0]["data"] == ref[0][:1].ravel().tolist()
    assert np.frombuffer(r.content[hlen:], np.float64)[0] == ref[1][0, 0]


def _post_json(client, tensor: dict):
    return client.post(f"/v2/models/{NAME}/infer", json={"inputs": [tensor]})


@pytest.mark.parametrize("tensor, words", [
    ({"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}, ["'x'", "[1, 4]", "[-1, 3]"]),
    ({"name": "x", "datatype": "FP32", "shape": [1, 3, 1], "data": [0.0] * 3}, ["'x'", "[-1, 3]"]),
    ({"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [0.0] * 3}, ["'x'", "FP64", "FP32", "[-1, 3]"]),
    ({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0.0] * 5}, ["'x'", "5 values", "[-1, 3]"]),
    ({"name": "x", "datatype": "FP32", "shape": [0, 3], "data": []}, ["'x'", "[-1, 3]"]),
    ({"name": "x", "datatype": "FP32", "shape": [1, 3], "data": ["a", "b", "c"]}, ["'x'", "FP32"]),
    ({"name": "z", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3}, ["'z'", "'x'"]),
    ({"name": "x", "datatype": "FP32", "shape": [1, 3]}, ["'x'", "data"]),
])
def test_wrong_json_tensor_gets_400_naming_the_input_and_serving_goes_on(served, tensor, words):
    client, _, _ = served
    r = _post_json(client, tensor)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    ok = _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_requests_are_inflated_within_the_limit(served, encoding):
    client, _, _ = served
    x = _x(3, 5)
    body, headers = _binary_body(x)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = client.post(f"/v2/models/{NAME}/infer", content=packed, headers={**headers, "Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(_decode_binary(r)["y"], 2 * x + 1)
    bomb = b'{"inputs": []}' + b" " * 1_000_000  # 1 MB of JSON whitespace: ~1 KB compressed, limit 4,096
    packed = gzip.compress(bomb) if encoding == "gzip" else zlib.compress(bomb)
    assert len(packed) < 4096
    r = client.post(f"/v2/models/{NAME}/infer", content=packed, headers={"Content-Encoding": encoding})
    assert r.status_code == 413 and "4096" in r.json()["error"]


def test_wrong_binary_byte_count_gets_400(served):
    client, _, _ = served
    x = _x(2)
    body, headers = _binary_body(x, size=20)  # 2 x 3 FP32 is 24 bytes
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 400 and "'x'" in r.json()["error"] and "24 bytes" in r.json()["error"]
    body, headers = _binary_body(x)
    r = client.post(f"/v2/models/{NAME}/infer", content=body[:-4], headers=headers)  # truncated body
    assert r.status_code == 400 and "'x'" in r.json()["error"]
    r = client.post(f"/v2/models/{NAME}/infer", content=body + b"xxxx", headers=headers)  # trailing bytes
    assert r.status_code == 400 and "binary bytes" in r.json()["error"]


@pytest.mark.parametrize("body, headers, words", [
    (b"{not json", {}, ["not JSON"]),
    (b"[1, 2]", {}, ["'inputs'"]),
    (b'{"inputs": [{"datatype": "FP32"}]}', {}, ["'name'"]),
    (b'{"inputs": []}', {}, ["missing", "'x'", "[-1, 3]"]),
    (b"\xff\xfe\x00", {}, ["not JSON"]),
    (b"{}", {HEADER_LENGTH: "999"}, [HEADER_LENGTH]),
    (b"{}", {HEADER_LENGTH: "ten"}, [HEADER_LENGTH]),
    (b"{}", {"Content-Encoding": "br"}, ["Content-Encoding"]),
    (b"{}", {"Content-Encoding": "gzip"}, ["gzip"]),
    (gzip.compress(b'{"inputs": []}')[:-6], {"Content-Encoding": "gzip"}, ["truncated"]),
])
def test_malformed_body_gets_one_line_4xx(served, body, headers, words):
    client, _, _ = served
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    for w in words:
        assert w in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_json_part_over_a_sixteenth_of_the_limit_gets_413():
    batcher = Batcher(FakeHead())
    try:
        with TestClient(make_app(batcher, NAME, max_request_bytes=160_000)) as client:
            n = 1000  # 3,000 values of ~20 characters: ~60 KB of JSON > 10,000 bytes
            data = _x(n).astype(np.float64).ravel().tolist()
            r = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [n, 3], "data": data}]})
            assert r.status_code == 413 and "binary" in r.json()["error"]
            body, headers = _binary_body(_x(n))  # the same tensor as binary data fits
            assert client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers).status_code == 200
    finally:
        batcher.close()


def test_infer_while_not_ready_gets_503(served):
    client, head, _ = served
    head.closed = True
    r = _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3})
    assert r.status_code == 503 and "Retry-After" in r.headers and "not ready" in r.json()["error"]


def test_mutated_requests_never_crash_the_server(served):
    """Random byte flips, truncations and header-length changes of a valid binary request:
    every answer is 200 or a one-line 4xx, and the server keeps answering correctly."""
    client, _, _ = served
    rng = np.random.default_rng(0)
    body, headers = _binary_body(_x(2))
    statuses = set()
    for _ in range(300):
        b = bytearray(body)
        h = dict(headers)
        kind = rng.integers(0, 3)
        if kind == 0:
            for i in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
                b[i] = int(rng.integers(0, 256))
        elif kind == 1:
            b = b[:int(rng.integers(0, len(b)))]
        else:
            h[HEADER_LENGTH] = str(int(rng.integers(-5, len(b) + 5)))
        r = client.post(f"/v2/models/{NAME}/infer", content=bytes(b), headers=h)
        statuses.add(r.status_code)
        assert r.status_code == 200 or (400 <= r.status_code < 500 and "\n" not in r.json()["error"]), r.text
    assert statuses - {200}
    x = _x(3, 9)
    body, headers = _binary_body(x)
    np.testing.assert_array_equal(_decode_binary(client.post(f"/v2/models/{NAME}/infer", content=body,
                                                             headers=headers))["y"], 2 * x + 1)


def test_unknown_model_and_route_get_404(served):
    client, _, _ = served
    r = client.post("/v2/models/other/infer", json={"inputs": []})
    assert r.status_code == 404 and "'other'" in r.json()["error"] and f"'{NAME}'" in r.json()["error"]
    assert client.get("/v2/models/other").status_code == 404
    assert client.get(f"/v2/models/{NAME}/versions/2").status_code == 404
    assert client.get("/v3/nothing").status_code == 404
    assert client.get(f"/v2/models/{NAME}/infer").status_code == 405


def test_oversized_request_gets_413_declared_or_streamed(served):
    client, _, _ = served
    x = _x(400)  # 4,800 bytes > the 4,096-byte limit of the fixture
    body, headers = _binary_body(x)
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 413 and "4096" in r.json()["error"]

    def chunks():  # no Content-Length: the server counts while it reads
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    r = client.post(f"/v2/models/{NAME}/infer", content=chunks(), headers=headers)
    assert r.status_code == 413
    assert client.post(f"/v2/models/{NAME}/infer", content=_binary_body(_x(1))[0],
                       headers=_binary_body(_x(1))[1]).status_code == 200


def test_busy_head_gets_503_with_retry_after(served):
    client, head, batcher = served
    head.always_busy = True
    batcher.cfg = BatcherConfig(max_delay_s=0.0, busy_wait_s=0.05)
    r = _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
    head.always_busy = False
    assert _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3}).status_code == 200


def test_full_queue_gets_503_at_once():
    head = FakeHead(batch=4)
    head.always_busy = True
    batcher = Batcher(head, BatcherConfig(max_delay_s=0.0, max_queued_samples=4, busy_wait_s=30.0))
    try:
        with TestClient(make_app(batcher, NAME)) as client:
            batcher.submit([_x(4)])  # held by the loop, retrying the busy head
            deadline = time.monotonic() + 5
            while not head.busy_raised and time.monotonic() < deadline:
                time.sleep(0.001)
            batcher.submit([_x(4)])  # fills the queue
            r = _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3})
            assert r.status_code == 503 and "Retry-After" in r.headers and "queue is full" in r.json()["error"]
    finally:
        head.always_busy = False
        batcher.close()


def test_failed_request_gets_500_with_the_reason(served):
    client, head, _ = served
    head.fail_with = "board pi stage 1: connection closed"
    r = _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3})
    assert r.status_code == 500 and "board pi stage 1" in r.json()["error"]


def test_metrics_route_returns_prometheus_text_with_head_and_batcher_counters(served):
    from prometheus_client.parser import text_string_to_metric_families

    client, head, _ = served
    for n in (1, 2, 6):
        assert _post_json(client, {"name": "x", "datatype": "FP32", "shape": [n, 3], "data": [0.0] * 3 * n}) \
            .status_code == 200
    _post_json(client, {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4})  # 400: not counted
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
    assert values["edgeplan_serving_requests_total"] == 3
    assert values["edgeplan_serving_samples_total"] == 9
    assert values["edgeplan_serving_batches_total"] == len(head.submitted) >= 3
    assert values["edgeplan_serving_padded_samples_total"] == 4 * len(head.submitted) - 9
    assert values["edgeplan_requests_completed_total"] == head.completed  # the head's own status
