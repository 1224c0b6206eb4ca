"""What the serving layer costs, measured side by side on one compiled model (local workers).

Rows (samples/s and per-request p50 latency):

* head:        ``Head.submit`` of whole plan batches, window full: the pipeline's own rate (baseline);
* connect:     ``edgeplan.connect(art, local=True)``, 1-sample requests, ``--inflight`` at once:
               the dynamic batcher packing single samples into plan batches;
* http-bin:    ``python -m edgeplan_runtime.serve`` (the head board's entry point, its own process) over
               HTTP (``edgeplan.connect(url)``: httpx, a thread per request in flight), binary tensors,
               1-sample requests; "server CPU" is that process's CPU time (HTTP + batcher + head, not the
               workers) per request;
* http-bin-seq: the same, one request at a time (latency of a lone camera frame);
* http-bin-B:  requests of one plan batch each, ``--inflight`` at once;
* http-json:   1-sample requests as JSON tensors;
* tritonclient: ``tritonclient.http`` ``async_infer`` (binary), 1-sample requests; its gevent pool, not
               the server, limits this row (a plain thread-per-request client gets the http-bin rate).

Ratios are to the head row. A last table times decoding one 3x224x224 FP32 request
(602 KB) on the server: binary tensor vs JSON text, the reason for the binary extension.

Run: ``python -m benchmarks.bench_serving [--model lenet5] [--seconds 5] [--inflight 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _compile(model: str, out: Path, batch: int) -> Path:
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.graph.load import build
    from tests.codegen.codegen_helpers import make_plan

    traced = build(model)
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [n // 2], [[("a", batch)], [("b", batch)]])
    return compile_plan(plan, model, out, backend="onnxruntime", traced=traced)


def _drive(submit, make, seconds: float, inflight: int) -> tuple[float, float, int]:
    """Keep ``inflight`` calls of ``submit(make())`` going for ``seconds``; (samples/s, p50 s, requests)."""
    from collections import deque

    pending: deque = deque()
    lat, samples = [], 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or pending:
        while len(pending) < inflight and time.perf_counter() - t0 < seconds:
            x = make()
            pending.append((time.perf_counter(), len(x), submit(x)))
        ts, n, fut = pending.popleft()
        fut.result()
        lat.append(time.perf_counter() - ts)
        samples += n
    wall = time.perf_counter() - t0
    return samples / wall, statistics.median(lat), len(lat)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(art: Path) -> tuple[subprocess.Popen, str]:
    """The board-side entry point, as on a head board: ``python -m edgeplan_runtime.serve`` from a board folder."""
    board = next(p for p in sorted(art.iterdir()) if (p / "edgeplan_runtime").is_dir())
    env = {**os.environ, "PYTHONPATH": str(board)}
    proc = subprocess.Popen([sys.executable, "-m", "edgeplan_runtime.serve", str(art), "--local", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    for line in proc.stdout:
        if line.startswith("serving model"):
            url = next(w for w in line.split() if w.startswith("http://"))
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
            return proc, url
    raise RuntimeError(f"serve exited with code {proc.wait()}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--batch", type=int, default=8, help="plan batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="per row")
    ap.add_argument("--inflight", type=int, default=16)
    a = ap.parse_args(argv)

    import tritonclient.http as triton

    from edgeplan.client import connect
    from edgeplan.runtime.head import Busy
    from edgeplan.runtime.local import start_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        art = _compile(a.model, Path(tmp) / "art", a.batch)
        rows = []  # (row, samples/s, p50 s, requests, server CPU ms per request or None)
        rng = np.random.default_rng(0)
        pl = start_pipeline(art, local=True)
        try:
            head = pl.head
            name_in, shape, dtype = head.input_specs[0]
            name_out = head.output_specs[0][0]

            def sample(n):
                return lambda: rng.standard_normal((n, *shape)).astype(dtype)

            def head_submit(x):
                while True:
                    try:
                        return head.submit([x])
                    except Busy:  # the window is full: try again
                        time.sleep(0.0005)

            rows.append(("head", *_drive(head_submit, sample(head.batch), a.seconds, head.window), None))
        finally:
            pl.close()
        with connect(art, local=True) as pipe:
            rows.append(("connect", *_drive(pipe.submit, sample(1), a.seconds, a.inflight), None))

        proc, url = _start_server(art)
        retried = [0]
        try:
            def measured(row, submit, make, inflight=a.inflight):
                c0 = _cpu_s(proc.pid)
                sps, p50, n = _drive(submit, make, a.seconds, inflight)
                rows.append((row, sps, p50, n, (_cpu_s(proc.pid) - c0) / n))

            with connect(url, concurrency=a.inflight) as remote:  # httpx + a thread per request, binary
                name = remote.model
                measured("http-bin-seq", remote.submit, sample(1), inflight=1)
                measured("http-bin", remote.submit, sample(1))
                measured(f"http-bin-{head.batch}", remote.submit, sample(head.batch))

                def post_json(x):
                    doc = {"inputs": [{"name": name_in, "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}
                    while True:
                        r = remote._http.post(f"/v2/models/{name}/infer", json=doc)
                        if r.status_code != 503:
                            r.raise_for_status()
                            return r.json()
                        retried[0] += 1
                        time.sleep(0.005)

                measured("http-json", lambda x: remote._pool.submit(post_json, x), sample(1))
            client = triton.InferenceServerClient(url.removeprefix("http://"), concurrency=a.inflight)

            def triton_submit(x):
                inp = triton.InferInput(name_in, list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                out = [triton.InferRequestedOutput(name_out)]

                class F:
                    req = client.async_infer(name, [inp], outputs=out)

                    def result(self):
                        while True:  # 503 (queue full): retry, as a client honouring Retry-After would
                            try:
                                return self.req.get_result()
                            except triton.InferenceServerException as e:
                                if e.status() != "503":
                                    raise
                                retried[0] += 1
                                time.sleep(0.005)
                                self.req = client.async_infer(name, [inp], outputs=out)

                return F()

            measured("tritonclient", triton_submit, sample(1))
            client.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        base = rows[0][1]
        print(f"model {a.model}, plan batch {a.batch}, 2 local stages, {a.inflight} requests in flight, "
              f"{a.seconds:g}s per row; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'row':<14}{'samples/s':>11}{'ratio':>8}{'p50 ms':>9}{'requests':>10}{'server CPU ms/req':>19}")
        for r, sps, p50, n, cpu in rows:
            cpu_s = f"{cpu * 1e3:.2f}" if cpu is not None else "-"
            print(f"{r:<14}{sps:>11.1f}{sps / base:>8.2f}{p50 * 1e3:>9.2f}{n:>10}{cpu_s:>19}")
        print(f"HTTP requests retried after 503 (queue full): {retried[0]}")

    # Decoding one 602 KB image request on the server: binary vs JSON.
    from edgeplan.runtime.http import Endpoint

    class _Spec:
        batch = 1
        input_specs = [("x", (3, 224, 224), np.dtype("float32"))]
        output_specs = [("y", (10,), np.dtype("float32"))]
        head = None

    ep = Endpoint(_Spec(), "m")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    raw = x.tobytes()
    hdr = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                  "parameters": {"binary_data_size": len(raw)}}]}).encode()
    body_bin = hdr + raw
    body_json = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                        "data": x.ravel().tolist()}]}).encode()

    def best(f, n=20):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    tb = best(lambda: ep.parse(body_bin, str(len(hdr))))
    tj = best(lambda: ep.parse(body_json, None), 5)
    print(f"\ndecode one 3x224x224 FP32 request: binary {len(body_bin) / 1e3:.0f} KB in {tb * 1e3:.3f} ms, "
          f"JSON {len(body_json) / 1e3:.0f} KB in {tj * 1e3:.1f} ms (JSON/binary {tj / tb:.0f}x time, "
          f"{len(body_json) / len(body_bin):.1f}x bytes)")


if __name__ == "__main__":
    main()
