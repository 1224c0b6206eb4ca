"""`edgeplan top`: a live table of what the head's `/metrics` says, per board, stage and link.

It reads the same Prometheus text a Prometheus server scrapes (one measurement path: Monitor ->
Head.status() -> runtime.metrics.exposition() -> /metrics -> here) and parses it with
prometheus_client's parser, so the numbers on screen are the numbers anyone else sees. Rates
(requests/s, recent stage ms) are differences between two polls; the first table shows means since
the workers started.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from edgeplan.errors import EdgeplanError

_clock = time.monotonic  # module-level so tests can drive the poll loop without touching `time`
_sleep = time.sleep


class TopError(EdgeplanError):
    """The metrics endpoint could not be read or is not edgeplan's."""


@dataclass
class Hist:
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative), +Inf last
    sum: float = 0.0
    count: float = 0.0

    def mean_since(self, prev: Hist | None) -> float | None:
        """Mean of the observations since ``prev`` (all of them without one); None when there were none."""
        n = self.count - (prev.count if prev else 0.0)
        s = self.sum - (prev.sum if prev else 0.0)
        return s / n if n > 0 else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket holding rank q x count."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lo_le, lo_n = 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if math.isinf(le):
                    return lo_le  # beyond the last finite bucket: its bound is all we know
                return lo_le + (le - lo_le) * ((rank - lo_n) / (n - lo_n) if n > lo_n else 1.0)
            lo_le, lo_n = le, n
        return lo_le


@dataclass
class Stage:
    board: str
    stage: str
    up: bool = False
    predicted_s: float | None = None
    compute: Hist | None = None
    cpu_ratio: float | None = None
    rss_bytes: float | None = None
    samples_total: float = 0.0
    queues: dict[str, float] = field(default_factory=dict)


@dataclass
class Board:
    cpu_ratio: float | None = None
    cpus: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    power_w: dict[str, float] = field(default_factory=dict)
    npu_ratio: float | None = None


@dataclass
class View:
    """One scrape of /metrics, organised for the table."""

    at: float
    model: str = ""
    plan_sha256: str = ""
    ready: bool = False
    epoch: float | None = None
    inflight: float | None = None
    window: float | None = None
    requests: dict[str, float] = field(default_factory=dict)  # total, completed, failed, resent, rejected
    latency: Hist | None = None
    faults: float = 0.0
    boards: dict[str, Board] = field(default_factory=dict)
    stages: dict[tuple[str, str], Stage] = field(default_factory=dict)
    links: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    # receive side, (receiver board, its stage, sending peer) -> rx_timed_bytes / rx_timed_seconds / rx_whole_bytes
    rx_links: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)


def _hist(samples, base: str) -> Hist:
    h = Hist()
    for s in samples:
        if s.name == base + "_bucket":
            h.buckets.append((float(s.labels["le"]), s.value))
        elif s.name == base + "_sum":
            h.sum = s.value
        elif s.name == base + "_count":
            h.count = s.value
    h.buckets.sort()
    return h


def parse(text: str, at: float | None = None) -> View:
    """A View of one /metrics text (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    v = View(at=_clock() if at is None else at)
    seen_edgeplan = False

    def stage(labels) -> Stage:
        key = (labels["board"], labels["stage"])
        if key not in v.stages:
            v.stages[key] = Stage(*key)
        return v.stages[key]

    def board(labels) -> Board:
        return v.boards.setdefault(labels["board"], Board())

    for fam in text_string_to_metric_families(text):
        name = fam.name
        if not name.startswith("edgeplan_"):
            continue
        seen_edgeplan = True
        if fam.type == "histogram":
            if name == "edgeplan_request_latency_seconds":
                v.latency = _hist(fam.samples, name)
            elif name == "edgeplan_stage_compute_seconds":
                groups: dict[tuple[str, str], list] = {}
                for s in fam.samples:
                    groups.setdefault((s.labels["board"], s.labels["stage"]), []).append(s)
                for (b, st), samples in groups.items():
                    stage({"board": b, "stage": st}).compute = _hist(samples, name)
            continue
        for s in fam.samples:
            lab, val = s.labels, s.value
            if name == "edgeplan_plan_info":
                v.model, v.plan_sha256 = lab.get("model", ""), lab.get("plan_sha256", "")
            elif name == "edgeplan_ready":
                v.ready = val >= 1
            elif name == "edgeplan_routing_epoch":
                v.epoch = val
            elif name == "edgeplan_inflight_requests":
                v.inflight = val
            elif name == "edgeplan_inflight_limit_requests":
                v.window = val
            elif name == "edgeplan_faults":
                v.faults = val
            elif name.startswith("edgeplan_requests") and s.name.endswith("_total"):
                kind = s.name[len("edgeplan_requests_"):-len("_total")] or "total"
                v.requests[kind] = val
            elif name == "edgeplan_worker_up":
                stage(lab).up = val >= 1
            elif name == "edgeplan_stage_predicted_seconds":
                stage(lab).predicted_s = val
            elif name == "edgeplan_process_cpu_ratio":
                stage(lab).cpu_ratio = val
            elif name == "edgeplan_process_resident_memory_bytes":
                stage(lab).rss_bytes = val
            elif name == "edgeplan_stage_samples":
                stage(lab).samples_total = val
            elif name == "edgeplan_queue_depth":
                stage(lab).queues[lab["queue"]] = val
            elif name.startswith("edgeplan_link_rx_"):
                key = (lab["board"], lab["stage"], lab["peer"])
                v.rx_links.setdefault(key, {})[name[len("edgeplan_link_"):]] = val
            elif name.startswith("edgeplan_link_"):
                key = (lab["board"], lab["stage"], lab["peer"])
                v.links.setdefault(key, {})[name[len("edgeplan_link_"):]] = val
            elif name == "edgeplan_board_cpu_ratio":
                board(lab).cpu_ratio = val
            elif name == "edgeplan_board_cpus":
                board(lab).cpus = val
            elif name == "edgeplan_board_memory_used_bytes":
                board(lab).memory_used = val
            elif name == "edgeplan_board_memory_total_bytes":
                board(lab).memory_total = val
            elif name == "edgeplan_board_power_watts":
                board(lab).power_w[lab["rail"]] = val
            elif name == "edgeplan_board_npu_load_ratio":
                board(lab).npu_ratio = val
    if not seen_edgeplan:
        raise TopError("the endpoint answered but has no edgeplan_* metrics; is it an `edgeplan serve` head?")
    return v


def scrape(url: str, timeout_s: float = 5.0) -> View:
    """GET ``url``/metrics and parse it; a TopError naming the URL when it cannot be read."""
    metrics_url = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        raise TopError(f"{metrics_url} answered HTTP {e.code}; is it an `edgeplan serve` head?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TopError(f"cannot reach {metrics_url} ({reason}); start the head with `edgeplan serve` "
                       "(or pass the right --url / --port)") from None
    return parse(text)


def head_url(cluster_file, port: int, head: str | None = None) -> str:
    """The head's URL: the address of the cluster's head device (``head``; default the first device, as
    for `edgeplan plan --head`), without the SSH user or port it may carry, at ``port``."""
    from edgeplan.profiles.load import load_cluster

    clu = load_cluster(cluster_file)
    off_board = getattr(clu.head, "address", None)  # the cluster's `head:` host, off the boards
    if off_board and head in (None, clu.head.name):
        host = off_board
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if head is None:
        device = clu.device(clu.head) if isinstance(clu.head, str) else clu.devices[0]
    else:
        try:
            device = clu.device(head)
        except KeyError as e:
            raise TopError(f"{cluster_file}: {e.args[0]}; pass the plan's --head device") from None
    host = device.address.rpartition("@")[2]
    if host.startswith("["):  # [v6]:port
        host = host[1:host.index("]")]
    elif host.count(":") == 1:  # host:ssh-port
        host = host.partition(":")[0]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- rendering --------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str, scale: float = 1.0, none: str = "-") -> str:
    return none if x is None else format(x * scale, spec)


def render(v: View, prev: View | None = None):
    """rich renderables for one View; rates and recent means use ``prev`` (the previous poll)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    dt = (v.at - prev.at) if prev is not None else 0.0
    req = v.requests
    rate = "-"
    if prev is not None and dt > 0:
        rate = f"{(req.get('completed', 0.0) - prev.requests.get('completed', 0.0)) / dt:.1f}/s"
    lat = v.latency
    lat_mean = lat.mean_since(prev.latency if prev else None) if lat else None
    head = Text.assemble(
        (f"{v.model or '?'} ", "bold"), f"plan {v.plan_sha256[:12]}  ",
        ("ready" if v.ready else "NOT READY", "green" if v.ready else "bold red"),
        f"  epoch {_fmt(v.epoch, '.0f')}  in flight {_fmt(v.inflight, '.0f')}/{_fmt(v.window, '.0f')}  ",
        f"requests {req.get('total', 0):.0f}, completed {req.get('completed', 0):.0f}, ",
        (f"failed {req.get('failed', 0):.0f}", "red" if req.get("failed") else ""),
        f", rejected {req.get('rejected', 0):.0f}  rate {rate}  latency mean {_fmt(lat_mean, '.1f', 1e3)} ms",
        f" p99 {_fmt(lat.quantile(0.99) if lat else None, '.1f', 1e3)} ms",
        (f"  faults {v.faults:.0f}" if v.faults else "", "red"))

    boards = Table(title="boards", title_justify="left", expand=False)
    for col in ("board", "CPU %", "cores", "memory used", "memory total", "power W", "NPU %"):
        boards.add_column(col, justify="left" if col == "board" else "right")
    for name in sorted({b for b, _ in v.stages} | set(v.boards)):
        b = v.boards.get(name, Board())
        boards.add_row(name, _fmt(b.cpu_ratio, ".0f", 100), _fmt(b.cpus, ".0f"),
                       _fmt(b.memory_used, ".0f", 1 / 2**20) + (" MiB" if b.memory_used is not None else ""),
                       _fmt(b.memory_total, ".0f", 1 / 2**20) + (" MiB" if b.memory_total is not None else ""),
                       _fmt(sum(b.power_w.values()) if b.power_w else None, ".2f"),
                       _fmt(b.npu_ratio, ".0f", 100))

    stages = Table(title="stages (ms per stage call: measured vs plan)", title_justify="left")
    for col in ("board", "stage", "up", "measured ms", "predicted ms", "meas/pred", "calls", "samples",
                "CPU cores", "RSS MiB", "queues"):
        stages.add_column(col, justify="left" if col in ("board", "queues", "up") else "right")
    for key in sorted(v.stages, key=lambda k: (int(k[1]) if k[1].isdigit() else 0, k[0])):
        st = v.stages[key]
        old = prev.stages.get(key) if prev else None
        measured = st.compute.mean_since(old.compute if old else None) if st.compute else None
        if measured is None and st.compute:
            measured = st.compute.mean_since(None)  # nothing new since the last poll: the mean so far
        ratio = measured / st.predicted_s if measured is not None and st.predicted_s else None
        stages.add_row(
            st.board, st.stage, Text("up", "green") if st.up else Text("DOWN", "bold red"),
            _fmt(measured, ".2f", 1e3), _fmt(st.predicted_s, ".2f", 1e3), _fmt(ratio, ".2f"),
            _fmt(st.compute.count if st.compute else None, ".0f"), f"{st.samples_total:.0f}",
            _fmt(st.cpu_ratio, ".2f"), _fmt(st.rss_bytes, ".0f", 1 / 2**20),
            " ".join(f"{q}={d:.0f}" for q, d in sorted(st.queues.items())) or "-")

    links = Table(title="links (passive: bytes / send time of large sends)", title_justify="left")
    for col in ("from", "to", "Mbit/s", "sent MB", "received MB"):
        links.add_column(col, justify="left" if col in ("from", "to") else "right")
    for (b, st, peer), d in sorted(v.links.items()):
        tput = d.get("throughput_bytes_per_second")
        links.add_row(f"{b}/stage{st}", peer, _fmt(tput, ".1f", 8 / 1e6),
                      _fmt(d.get("sent_bytes"), ".1f", 1e-6), _fmt(d.get("received_bytes"), ".1f", 1e-6))
    if not v.rx_links:
        return Group(head, boards, stages, links)
    rx = Table(title="links (receive side: bytes / arrival time of large frames; since the last poll when live)",
               title_justify="left")
    for col in ("from", "to", "Mbit/s", "timed MB", "whole MB"):
        rx.add_column(col, justify="left" if col in ("from", "to") else "right")
    for (b, st, peer), d in sorted(v.rx_links.items()):
        old = prev.rx_links.get((b, st, peer), {}) if prev else {}
        nb = d.get("rx_timed_bytes", 0.0) - old.get("rx_timed_bytes", 0.0)
        ns = d.get("rx_timed_seconds", 0.0) - old.get("rx_timed_seconds", 0.0)
        rx.add_row(peer, "head" if b == "head" else f"{b}/stage{st}", _fmt(nb / ns if ns > 0 else None, ".1f", 8 / 1e6),
                   _fmt(d.get("rx_timed_bytes"), ".1f", 1e-6), _fmt(d.get("rx_whole_bytes"), ".1f", 1e-6))
    return Group(head, boards, stages, links, rx)


def run(url: str, interval_s: float = 1.0, once: bool = False, console=None) -> None:
    """Print one table (``once``) or refresh a live one every ``interval_s`` until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # scripts and logs: do not squeeze the columns to 80
    view = scrape(url)
    if once:
        console.print(render(view))
        return
    prev = None
    try:
        with Live(render(view), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                _sleep(interval_s)
                prev, view = view, scrape(url)
                live.update(render(view, prev))
    except KeyboardInterrupt:
        pass
