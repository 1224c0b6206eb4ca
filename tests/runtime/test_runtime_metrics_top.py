"""`edgeplan top`: reads /metrics from a real HTTP server serving metrics.exposition() and renders it."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeplan import top
from edgeplan.cli import app
from edgeplan.runtime.metrics import CONTENT_TYPE, exposition
from tests.runtime.test_runtime_metrics import sample_status


class MetricsServer:
    """127.0.0.1 HTTP server whose /metrics is exposition(self.status)."""

    def __init__(self, status: dict):
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = exposition(outer.status)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = MetricsServer(sample_status())
    yield s
    s.close()


def row(out: str, *cells: str) -> str:
    """The one table line holding all ``cells`` in order."""
    pat = re.compile(".*".join(re.escape(c) for c in cells))
    lines = [ln for ln in out.splitlines() if pat.search(ln)]
    assert len(lines) == 1, f"expected one line with {cells}, got {lines}\n{out}"
    return lines[0]


def test_scrape_reads_back_the_status(server: MetricsServer):
    v = top.scrape(server.url)
    st = server.status
    assert v.model == "resnet18" and not v.ready and v.epoch == 3
    assert v.requests == {"total": 120, "completed": 110, "failed": 4, "resent": 2, "rejected": 1}
    s0 = v.stages[("pi-a", "0")]
    assert s0.up and s0.predicted_s == 0.0105
    assert s0.compute.mean_since(None) == pytest.approx(0.03 / 3)
    assert s0.queues == {"ready": 2}
    assert not v.stages[("pi-b", "1")].up and v.stages[("pi-b", "1")].compute is None
    mon = st["workers"]["pi-a/stage0"]["monitor"]
    assert v.boards["pi-a"].memory_total == mon["board_memory_total_bytes"]
    assert v.links[("pi-a", "0", "pi-b/stage1")]["throughput_bytes_per_second"] == pytest.approx(12.5e6)
    assert v.boards["nano"].power_w == {"POM_5V_IN": 4.5, "POM_5V_GPU": 1.25}
    # latency p99 by histogram_quantile: rank 112.86 of 114 lies past the 1 s bucket (110) -> its bound
    assert v.latency.quantile(0.99) == 1.0
    assert v.latency.quantile(0.5) == pytest.approx(0.01 + (0.1 - 0.01) * (57 - 3) / (90 - 3))


def test_recent_means_and_rates_come_from_two_polls(server: MetricsServer):
    first = top.parse(exposition(server.status).decode(), at=10.0)
    w = server.status["workers"]["pi-a/stage0"]["monitor"]["compute_seconds"]
    w["count"] += 2
    w["sum"] += 0.1  # two more calls of 50 ms each
    w["buckets"] = [[le, n + 2 if le >= 0.05 else n] for le, n in w["buckets"]]
    server.status["completed_total"] += 30
    second = top.parse(exposition(server.status).decode(), at=12.0)
    s0 = second.stages[("pi-a", "0")]
    assert s0.compute.mean_since(first.stages[("pi-a", "0")].compute) == pytest.approx(0.05)
    text = render_text(second, first)
    assert "rate 15.0/s" in text
    assert row(text, "pi-a", "0", "up", "50.00", "10.50", "4.76")


def render_text(view, prev=None) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(top.render(view, prev))
    return console.export_text()


def test_cli_once_prints_measured_vs_predicted(server: MetricsServer):
    res = CliRunner().invoke(app, ["top", "--url", server.url, "--once"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "resnet18" in out and "NOT READY" in out and "requests 120, completed 110" in out
    # stage rows: mean of 4, 6, 20 ms = 10.00 ms measured vs 10.50 predicted
    assert row(out, "pi-a", "0", "up", "10.00", "10.50", "0.95", "3", "12")
    assert row(out, "pi-b", "1", "DOWN", "-", "20.00")
    # link: 2 MB in 0.16 s = 100 Mbit/s
    assert row(out, "pi-a/stage0", "pi-b/stage1", "100.0", "2.0")
    mon = server.status["workers"]["pi-a/stage0"]["monitor"]
    mib = f"{mon['board_memory_total_bytes'] / 2**20:.0f} MiB"
    assert row(out, "pi-a", f"{mon['board_cpus']}", mib)
    assert row(out, "nano", "5.75")  # 4.5 + 1.25 W of rails
    assert row(out, "rock5b", "MiB", " 35 │")  # NPU %, the boards table's last cell (the stage row's RSS may hold "35")


def test_cli_with_cluster_polls_the_head_device_at_port(server: MetricsServer, tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\ndevices:\n"
                    "  - {name: far, profile: rpi4b-4gb, address: 10.255.255.1}\n"
                    "  - {name: here, profile: rpi4b-4gb, address: 'edge@127.0.0.1:2222'}\n"  # SSH user/port dropped
                    "network:\n  default: {bandwidth_mbps: 100, latency_ms: 1}\n")
    assert top.head_url(path, 8000) == "http://10.255.255.1:8000"  # the first device, as for `plan --head`
    assert top.head_url(path, 8000, "here") == "http://127.0.0.1:8000"
    res = CliRunner().invoke(app, ["top", "--cluster", str(path), "--head", "here", "--port", str(server.port),
                                   "--once"])
    assert res.exit_code == 0, res.output
    assert "resnet18" in res.output
    res = CliRunner().invoke(app, ["top", "--cluster", str(path), "--head", "nope", "--once"])
    assert res.exit_code != 0 and "no device 'nope'" in res.output and "--head" in res.output


def test_unreachable_endpoint_is_one_line_naming_url_and_serve():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(app, ["top", "--url", f"http://127.0.0.1:{port}", "--once"])
    assert res.exit_code != 0
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1, msg
    assert f"http://127.0.0.1:{port}/metrics" in msg and "edgeplan serve" in msg


def test_endpoint_without_edgeplan_metrics_is_refused(server: MetricsServer):
    server.status = {}
    with pytest.raises(top.TopError):
        top.parse("# TYPE other_metric gauge\nother_metric 1.0\n")


def test_live_mode_refreshes_with_rates_until_ctrl_c(server: MetricsServer, monkeypatch):
    from rich.console import Console

    polls = []
    real_scrape = top.scrape

    def scrape(url):
        polls.append(url)
        server.status["completed_total"] += 20  # 20 more answers between polls
        return real_scrape(url)

    clock = iter(range(0, 1000, 2))  # polls 2 s apart

    def sleep(_s):
        if len(polls) >= 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(top, "scrape", scrape)
    monkeypatch.setattr(top, "_sleep", sleep)
    monkeypatch.setattr(top, "_clock", lambda: float(next(clock)))
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    top.run(server.url, interval_s=2.0, console=console)  # returns on Ctrl-C
    assert len(polls) == 3
    assert "rate 10.0/s" in console.export_text()
