"""The head's status() as Prometheus metrics (text format), built with prometheus_client.

One measurement path: workers' Monitor snapshots -> Head.status() -> ``exposition()`` -> ``/metrics``,
which ``edgeplan top`` and any Prometheus server read. Names follow Prometheus conventions: base units
(seconds, bytes, ratios 0..1, watts), ``_total`` for counters, labels ``board``/``stage`` (and ``peer``,
``queue``, ``rail``); rates are the query's job, except the passive link throughput, which a worker
can only measure as a smoothed rate.

This module lives in runtime/ beside the head but only the head/serving side calls it:
prometheus_client is imported inside ``exposition()``, so boards never need it.
"""

import re
from typing import Dict, List, Set, Tuple

# The classic Prometheus text format that prometheus_client's generate_latest() writes; every
# Prometheus version and `edgeplan top` read it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _rx_links(fam, receiver: List[str], rx) -> None:
    """Receive-side link figures (a snapshot's or the head's ``rx_links``: frames of >= 64 KiB timed as they
    arrived, wire.Reader.timed) per sending peer; ``board``/``stage`` name the receiver (the head: ``head``),
    ``peer`` the sender. The link's throughput as it arrives is rate(timed bytes) / rate(timed seconds)."""
    lab = ("board", "stage", "peer")
    for peer, ln in sorted((rx or {}).items()):
        v = receiver + [str(peer)]
        fam("counter", "edgeplan_link_rx_timed_bytes_total",
            "Bytes of large frames from the peer timed from their arrival to their last byte.", lab).add_metric(
            v, float(ln.get("rx_timed_bytes_total", 0)))
        fam("counter", "edgeplan_link_rx_timed_seconds_total",
            "Time those frames took to arrive (receive side).", lab).add_metric(
            v, float(ln.get("rx_timed_seconds_total", 0.0)))
        fam("counter", "edgeplan_link_rx_whole_bytes_total",
            "Bytes of large frames from the peer that had arrived whole before the receiver asked (the link "
            "kept up).", lab).add_metric(v, float(ln.get("rx_whole_bytes_total", 0)))


def _buckets(hist: dict) -> List[Tuple[str, float]]:
    """A status/snapshot histogram ({"buckets": [[le, cumulative]], "sum", "count"}) as
    prometheus_client buckets, ending with +Inf = count (snapshots omit +Inf: JSON has no Infinity)."""
    from prometheus_client.utils import floatToGoString

    out = []
    for le, n in hist.get("buckets", []):
        if float(le) != float("inf"):
            out.append((floatToGoString(float(le)), float(n)))
    out.append(("+Inf", float(hist.get("count", 0))))
    return out


def _families(status: dict) -> list:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    fams: Dict[str, object] = {}

    def fam(kind, name: str, doc: str, labels: Tuple[str, ...] = ()):
        if name not in fams:
            cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}[kind]
            fams[name] = cls(name, doc, labels=list(labels))
        return fams[name]

    # -- head --
    fam("gauge", "edgeplan_plan_info", "The plan being served (value 1).", ("model", "plan_sha256")).add_metric(
        [str(status.get("model", "")), str(status.get("plan_sha256", ""))], 1.0)
    fam("gauge", "edgeplan_ready", "1 when every stage has at least one live replica.").add_metric(
        [], 1.0 if status.get("ready") else 0.0)
    if "epoch" in status:
        fam("gauge", "edgeplan_routing_epoch", "Current routing epoch.").add_metric([], float(status["epoch"]))
    if "inflight" in status:
        fam("gauge", "edgeplan_inflight_requests", "Requests in flight now.").add_metric([], float(status["inflight"]))
    if "window" in status:
        fam("gauge", "edgeplan_inflight_limit_requests", "In-flight window (Busy beyond it).").add_metric(
            [], float(status["window"]))
    for key, name, doc in (
            ("requests_total", "edgeplan_requests_total", "Requests submitted to the head."),
            ("completed_total", "edgeplan_requests_completed_total", "Requests answered."),
            ("failed_total", "edgeplan_requests_failed_total", "Requests that ended without an answer."),
            ("resent_total", "edgeplan_requests_resent_total", "Request attempts sent again after a fault."),
            ("rejected_total", "edgeplan_requests_rejected_total", "Requests refused with Busy."),
            ("rejoined_total", "edgeplan_workers_rejoined_total", "Workers taken back into routing after a fault.")):
        if key in status:
            fam("counter", name, doc).add_metric([], float(status[key]))
    if status.get("latency_seconds"):
        h = status["latency_seconds"]
        fam("histogram", "edgeplan_request_latency_seconds", "Request latency at the head (submit to answer).") \
            .add_metric([], _buckets(h), float(h.get("sum", 0.0)))
    if "faults" in status:
        fam("gauge", "edgeplan_faults", "Worker faults the head currently knows of.").add_metric(
            [], float(len(status["faults"])))

    _rx_links(fam, ["head", "head"], status.get("rx_links"))  # results as the head received them

    # -- workers --
    boards_seen: Set[str] = set()
    for _key, w in sorted((status.get("workers") or {}).items()):
        board, stage = str(w["device"]), str(w["stage"])
        bs = [board, stage]
        fam("gauge", "edgeplan_worker_up", "1 when the head reaches the stage worker.", ("board", "stage")) \
            .add_metric(bs, 1.0 if w.get("alive") else 0.0)
        if w.get("predicted_compute_s") is not None:
            fam("gauge", "edgeplan_stage_predicted_seconds", "Plan's predicted compute time per stage call.",
                ("board", "stage")).add_metric(bs, float(w["predicted_compute_s"]))
        m = w.get("monitor")
        if not m:
            continue
        fam("gauge", "edgeplan_worker_uptime_seconds", "Seconds since the worker's monitor started.",
            ("board", "stage")).add_metric(bs, float(m.get("uptime_s", 0.0)))
        fam("counter", "edgeplan_process_cpu_seconds_total", "CPU time of the worker process.",
            ("board", "stage")).add_metric(bs, float(m.get("process_cpu_seconds_total", 0.0)))
        fam("gauge", "edgeplan_process_cpu_ratio", "Worker CPU use since its previous snapshot, in cores.",
            ("board", "stage")).add_metric(bs, float(m.get("process_cpu_ratio", 0.0)))
        fam("gauge", "edgeplan_process_resident_memory_bytes", "Resident memory of the worker process.",
            ("board", "stage")).add_metric(bs, float(m.get("process_resident_memory_bytes", 0)))
        if m.get("compute_seconds"):
            h = m["compute_seconds"]
            fam("histogram", "edgeplan_stage_compute_seconds", "Measured compute time per stage call.",
                ("board", "stage")).add_metric(bs, _buckets(h), float(h.get("sum", 0.0)))
        fam("counter", "edgeplan_stage_samples_total", "Samples the stage computed.", ("board", "stage")) \
            .add_metric(bs, float(m.get("samples_total", 0)))
        for peer, ln in sorted((m.get("links") or {}).items()):
            bsp = bs + [str(peer)]
            lab = ("board", "stage", "peer")
            fam("counter", "edgeplan_link_sent_bytes_total", "Bytes sent to the peer.", lab).add_metric(
                bsp, float(ln.get("sent_bytes_total", 0)))
            fam("counter", "edgeplan_link_send_seconds_total", "Time spent in sends to the peer.", lab).add_metric(
                bsp, float(ln.get("send_seconds_total", 0.0)))
            fam("counter", "edgeplan_link_received_bytes_total", "Bytes received from the peer.", lab).add_metric(
                bsp, float(ln.get("received_bytes_total", 0)))
            if ln.get("throughput_bytes_per_second") is not None:
                fam("gauge", "edgeplan_link_throughput_bytes_per_second",
                    "Passive link throughput to the peer: smoothed bytes / send time of large sends.", lab) \
                    .add_metric(bsp, float(ln["throughput_bytes_per_second"]))
        _rx_links(fam, bs, m.get("rx_links"))
        for queue, depth in sorted((m.get("queues") or {}).items()):
            fam("gauge", "edgeplan_queue_depth", "Items waiting in a worker queue.", ("board", "stage", "queue")) \
                .add_metric(bs + [str(queue)], float(depth))
        for cname, value in sorted((m.get("counters") or {}).items()):
            base = _NAME_RE.sub("_", cname)
            base = base[:-len("_total")] if base.endswith("_total") else base
            fam("counter", f"edgeplan_worker_{base}_total", f"Worker counter {cname}.", ("board", "stage")) \
                .add_metric(bs, float(value))
        if board in boards_seen:  # several stages on one board report the same board figures
            continue
        boards_seen.add(board)
        b = [board]
        fam("gauge", "edgeplan_board_cpu_ratio", "Board CPU use over all cores, 0..1.", ("board",)).add_metric(
            b, float(m.get("board_cpu_ratio", 0.0)))
        fam("gauge", "edgeplan_board_cpus", "CPU cores of the board.", ("board",)).add_metric(
            b, float(m.get("board_cpus", 0)))
        fam("gauge", "edgeplan_board_memory_used_bytes", "Board memory in use (total - available).",
            ("board",)).add_metric(b, float(m.get("board_memory_used_bytes", 0)))
        fam("gauge", "edgeplan_board_memory_total_bytes", "Board memory.", ("board",)).add_metric(
            b, float(m.get("board_memory_total_bytes", 0)))
        for rail, watts in sorted((m.get("power_watts") or {}).items()):
            fam("gauge", "edgeplan_board_power_watts", "Power of a board rail (Jetson INA3221).",
                ("board", "rail")).add_metric([board, str(rail)], float(watts))
        if m.get("npu_load_ratio") is not None:
            fam("gauge", "edgeplan_board_npu_load_ratio", "NPU load, mean over its cores, 0..1.",
                ("board",)).add_metric(b, float(m["npu_load_ratio"]))
    return list(fams.values())


class _StatusCollector:
    def __init__(self, status: dict):
        self._status = status

    def collect(self):
        return _families(self._status)


def exposition(status: dict) -> bytes:
    """Prometheus text format (CONTENT_TYPE) of a Head.status() dict; a fresh registry per call, so
    nothing global is kept between scrapes."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry)
