"""Serving end to end on real compiled artifacts (LeNet-5, ONNX Runtime stages, local workers).

Two stages, stage 0 on a replica group (a: 2 samples, b: 2), plan batch 4. Every
answer is compared with the PyTorch model within 1e-4: tritonclient.http (binary
and JSON tensors), edgeplan.connect (local and URL), `edgeplan infer` on .npy and
images, and `edgeplan run --check` (pass, and fail against other weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeplan.cli import app
from edgeplan.codegen.compile import compile_plan
from edgeplan.graph.load import build, load_model
from edgeplan.infer_files import load_image
from edgeplan.runtime.head import HeadConfig
from edgeplan.runtime.serve import Server

from ..codegen.codegen_helpers import make_plan

TOL = 1e-4
MODEL = "lenet5"


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    traced = build(MODEL)
    n = len(traced.graph.layers)
    plan = make_plan(traced.graph, [n // 2], [[("a", 2), ("b", 2)], [("b", 4)]])
    return compile_plan(plan, MODEL, tmp_path_factory.mktemp("serving") / "art", backend="onnxruntime",
                        traced=traced)


@pytest.fixture(scope="module")
def torch_model():
    return load_model(MODEL).module.eval()


@pytest.fixture(scope="module")
def server(art):
    with Server(art, local=True, port=0) as s:
        yield s


def _ref(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_answers_equal_torch(server, torch_model, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
        xs = [_x(n, seed) for seed, n in enumerate([1, 3, 4, 6, 1, 2, 9, 1])]
        pending = []
        for x in xs:  # concurrent: the batcher packs samples of several requests into one plan batch
            inp = triton.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=binary)
            pending.append(client.async_infer(MODEL, [inp], outputs=[out]))
        for x, p in zip(xs, pending, strict=True):
            y = p.get_result().as_numpy(meta["outputs"][0]["name"])
            assert y.shape == (len(x), 10)
            assert float(np.abs(y - _ref(torch_model, x)).max()) < TOL
        with pytest.raises(triton.InferenceServerException, match=r"'x'.*\[-1, 1, 32, 32\]"):
            bad = triton.InferInput("x", [1, 1, 28, 28], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32), binary_data=binary)
            client.infer(MODEL, [bad])
        assert client.is_server_ready()
        x = _x(2, 99)
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = client.infer(MODEL, [inp], request_compression_algorithm="gzip",
                           response_compression_algorithm="gzip")
        assert float(np.abs(res.as_numpy(meta["outputs"][0]["name"]) - _ref(torch_model, x)).max()) < TOL
    finally:
        client.close()


def test_connect_url_and_local_equal_torch(server, art, torch_model):
    import edgeplan

    x = _x(5, 42)
    with edgeplan.connect(server.url) as pipe:  # the server's only model, found through the repository index
        assert float(np.abs(pipe.infer(x) - _ref(torch_model, x)).max()) < TOL
        futs = [pipe.submit(_x(2, i)) for i in range(6)]
        for i, f in enumerate(futs):
            assert float(np.abs(f.result() - _ref(torch_model, _x(2, i))).max()) < TOL
    with edgeplan.connect(art, local=True) as pipe:
        assert float(np.abs(pipe.infer({"x": x}) - _ref(torch_model, x)).max()) < TOL
        futs = [pipe.submit(_x(1, i).astype(np.float64)) for i in range(20)]  # more than the queue holds
        for i, f in enumerate(futs):
            assert float(np.abs(f.result(timeout=60) - _ref(torch_model, _x(1, i))).max()) < TOL
        with pytest.raises(edgeplan.client.InferenceError, match=r"'x'.*\[-1, 1, 32, 32\]"):
            pipe.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_infer_files_npy_and_images(art, torch_model, tmp_path):
    from PIL import Image

    x = _x(7, 3)
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    r = runner.invoke(app, ["infer", str(art), "--local", "--inputs", str(tmp_path / "x.npy"),
                            "--outputs", str(tmp_path / "out" / "y.npy")])
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "out" / "y.npy")
    assert y.shape == (7, 10) and float(np.abs(y - _ref(torch_model, x)).max()) < TOL
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["y.npy"]  # no temp file left behind

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    r = runner.invoke(app, ["infer", str(art), "--local", "--inputs", str(frames), "--outputs",
                            str(tmp_path / "preds.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "preds.npz") as z:
        (name,) = z.files
        got = z[name]
    imgs = np.stack([load_image(frames / f"f{i}.png", (1, 32, 32)) for i in range(3)])
    assert float(np.abs(got - _ref(torch_model, imgs)).max()) < TOL


def test_load_image_converts_resizes_and_normalises(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((10, 20, 3), (255, 0, 128), np.uint8)).save(tmp_path / "a.png")
    grey = load_image(tmp_path / "a.png", (1, 4, 8))
    assert grey.shape == (1, 4, 8) and grey.dtype == np.float32
    # Pillow's L = (299 R + 587 G + 114 B) / 1000
    assert grey[0, 0, 0] == pytest.approx(round((299 * 255 + 114 * 128) / 1000) / 255, abs=1e-6)
    rgb = load_image(tmp_path / "a.png", (3, 5, 5))
    assert rgb[:, 2, 2] == pytest.approx([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
                                         abs=1e-5)
    assert load_image(tmp_path / "a.png", (3, 5, 5), "raw")[:, 0, 0] == pytest.approx([255, 0, 128])


def test_run_check_passes_on_the_model_and_fails_on_other_weights(art, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(art), "--local", "--requests", "3", "--check", "--model", MODEL])
    assert r.exit_code == 0, r.output
    assert "max abs error" in r.output and "ok" in r.output
    other = tmp_path / "other.py"
    other.write_text("import torch\nfrom edgeplan.graph.zoo import LeNet5\n\n\ndef make():\n"
                     "    torch.manual_seed(1)\n    return LeNet5()\n")
    r = runner.invoke(app, ["run", str(art), "--local", "--requests", "2", "--check", "--model", f"{other}:make"])
    assert r.exit_code != 0
    assert "FAILED" in r.output and "--tolerance" in r.output


def test_run_check_uses_the_model_the_plan_records(art, tmp_path):
    import json
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    plan = json.loads((copy / "plan.json").read_text())
    plan["model_ref"] = ""
    (copy / "plan.json").write_text(json.dumps(plan))
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(copy), "--local", "--requests", "1", "--check"])
    assert r.exit_code != 0 and "--model" in r.output and "plan.json" in r.output
    plan["model_ref"] = MODEL
    (copy / "plan.json").write_text(json.dumps(plan))
    r = runner.invoke(app, ["run", str(copy), "--local", "--requests", "2", "--check"])
    assert r.exit_code == 0, r.output
    assert "max abs error" in r.output


def test_serve_cli_then_infer_url_then_ctrl_c_stops_everything(art, torch_model, tmp_path):
    """`edgeplan serve` as a user runs it; `edgeplan infer --url` against it; SIGINT ends it with code 0."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "edgeplan.cli", "serve", str(art), "--local", "--port", "0",
                             "--name", "my model"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            for word in log.read_text().split():
                if word.startswith("http://") and word.count(":") == 2:
                    url = word.rstrip(";,)")
                    break
            time.sleep(0.1)
        assert "serving model 'my_model'" in log.read_text()
        assert httpx.get(f"{url}/v2/models/my_model/ready").status_code == 200
        x = _x(3, 11)
        np.save(tmp_path / "x.npy", x)
        r = CliRunner().invoke(app, ["infer", url, "--url", "--inputs", str(tmp_path / "x.npy"),
                                     "--outputs", str(tmp_path / "y.npz")])
        assert r.exit_code == 0, r.output
        with np.load(tmp_path / "y.npz") as z:
            y = z["fc3"]
        assert float(np.abs(y - _ref(torch_model, x)).max()) < TOL
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "stopping" in log.read_text()


def test_serving_survives_a_replica_death_and_says_which_stage_is_gone(art, torch_model):
    """Kill stage 0's replica on board a: board b takes its samples and answers stay right. Kill the only
    stage-1 worker: requests get 503 (not ready) or 500 naming the board, never a hang or a crash."""
    import time

    import httpx

    # dead after 4 s without heartbeats: with 0.5 s (and once with 2 s, at load 17 on 2 cores) board b's live
    # stage-0 worker, starved of CPU, was declared dead too, and then no answer comes back
    cfg = HeadConfig(dead_after_s=4.0, request_timeout_s=5)
    with Server(art, local=True, port=0, head_config=cfg) as s, httpx.Client(base_url=s.url) as http:
        def infer(x):
            return http.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
                {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}, timeout=30)

        x = _x(3, 21)
        assert infer(x).status_code == 200
        (a0,) = [w for w in s.pipeline.workers if (w.device, w.stage) == ("a", 0)]
        a0.process.kill()
        a0.process.wait()
        for i in range(5):
            r = infer(_x(3, 30 + i))
            assert r.status_code == 200, r.text
            y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, 10)
            assert float(np.abs(y - _ref(torch_model, _x(3, 30 + i))).max()) < TOL
        (b1,) = [w for w in s.pipeline.workers if (w.device, w.stage) == ("b", 1)]
        b1.process.kill()
        b1.process.wait()
        deadline = time.monotonic() + 15
        while http.get("/v2/health/ready").status_code == 200:
            assert time.monotonic() < deadline, "the head never noticed the dead stage-1 worker"
            time.sleep(0.1)
        r = infer(x)
        assert r.status_code == 503 and "no live replica" in r.json()["error"]
        metrics = http.get("/metrics").text
        assert 'edgeplan_worker_up{board="b",stage="1"} 0.0' in metrics


def test_serve_on_a_taken_port_fails_at_once_with_one_line(art):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(art), "--local", "--port", str(port)])
    assert r.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.output and "--port" in r.output
