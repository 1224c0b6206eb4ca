"""Measured vs predicted: the table ``edgeplan run`` prints and the JSON report it writes.

Works on plain dicts (plan.json as read from disk), so it runs on a board too.
Each measured figure stands beside the prediction of the same quantity (issue 14
item 4): the run keeps ``window`` requests in flight, so its p50 latency and
throughput are compared with the plan's figures under that window (pipeline
queueing, profiles/predict.py); the plan's unloaded latency and steady throughput
are printed too, labelled as such. Per stage, the measured figure is each
worker's median module time per micro-batch (its STATS reply); the plan's
``module_s`` is its prediction when plan.json has one, else the plan's
``compute_s`` is shown as "incl. hop" (it also prices the runtime's receive and
send). Per replica the report carries what ``edgeplan calibrate`` reads: CPU
before the first module call, CPU inside module calls, the cgroup CPU quota,
the mean module time and the Monitor's per-peer link throughput.
"""

from typing import Optional

import numpy as np

from . import canonical
from .head import RunResult


def plan_digest(plan: dict) -> str:
    """sha256 of plan.json as edgeplan writes it (canonical.py, which edgeplan.jsonio uses too),
    so ``edgeplan calibrate`` refuses a report of another plan."""
    return canonical.sha256_of(plan)


# The two window formulas of edgeplan/profiles/predict.py (loaded_latency_s, loaded_throughput), inlined
# because the board-side runtime cannot import edgeplan.profiles; a test checks that both agree.
def window_latency_s(latency_s: float, throughput: float, samples_per_request: int, window: int) -> float:
    """Seconds per request with ``window`` requests in flight: ``max(L, W b / X)``."""
    if throughput <= 0:
        return latency_s
    return max(latency_s, window * samples_per_request / throughput)


def window_throughput(latency_s: float, throughput: float, samples_per_request: int, window: int) -> float:
    """Samples/s with ``window`` requests in flight: ``min(X, W b / L)``."""
    if latency_s <= 0:
        return throughput
    return min(throughput, window * samples_per_request / latency_s)


def _pct(values, q) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


def _ratio(measured, predicted) -> Optional[float]:
    if measured is None or not predicted:
        return None
    return measured / predicted


def build(plan: dict, result: RunResult, mode: str = "local") -> dict:
    """The JSON report: end-to-end and per-stage figures, failures and dead workers."""
    lat = [x for x in result.latencies_s if x is not None]
    samples = result.completed * result.samples_per_request
    throughput = samples / result.wall_s if result.wall_s > 0 else None
    pred = plan.get("predicted") or {}
    window = result.window or 2 * max(1, len(plan.get("stages", ())))  # 0: the head's default (head.py)
    p_lat, p_thr, b = pred.get("latency_s"), pred.get("throughput"), result.samples_per_request
    w_lat = w_thr = None
    if p_lat is not None and p_thr is not None:
        w_lat = window_latency_s(p_lat, p_thr, b, window)
        w_thr = window_throughput(p_lat, p_thr, b, window)
    p50 = _pct(lat, 50)
    stages = []
    for st in plan.get("stages", ()):
        replicas = []
        for r in st.get("replicas", ()):
            s = result.stats.get(f"{r['device']}/stage{st['index']}", {})
            replicas.append({
                "device": r["device"], "samples": r.get("samples"),
                "measured_compute_s": s.get("compute_p50_s"), "runs": s.get("runs"),
                "cpu_s": s.get("cpu_s"), "max_rss_bytes": s.get("max_rss_bytes"),
                "bytes_in": s.get("bytes_in"), "bytes_out": s.get("bytes_out"),
                "rejected_frames": s.get("rejected_frames"), "bad_frames": s.get("bad_frames"),
                "measured_mean_compute_s": s.get("compute_mean_s"), "cpu_startup_s": s.get("cpu_startup_s"),
                "compute_cpu_s": s.get("compute_cpu_s"), "compute_cpu_clock": s.get("compute_cpu_clock"),
                "cpu_quota_cores": s.get("cpu_quota_cores"),
                "links": (s.get("monitor") or {}).get("links"),
                # receive side, per sender (wire.Reader.timed): what calibrate fits the head's input link from
                "rx_links": (s.get("monitor") or {}).get("rx_links"),
                "alive": not any(f.device == r["device"] and f.stage == st["index"] for f in result.faults),
            })
        measured = [x["measured_compute_s"] for x in replicas if x["measured_compute_s"] is not None]
        worst = max(measured) if measured else None
        module_only = st.get("module_s") is not None  # else compute_s, which also prices the hop
        predicted = st.get("module_s") if module_only else st.get("compute_s")
        stages.append({
            "index": st["index"], "layers": f"{st.get('first_layer', '?')}..{st.get('last_layer', '?')}",
            "predicted_compute_s": st.get("compute_s"), "predicted_module_s": st.get("module_s"),
            "predicted_basis": "module" if module_only else "compute incl. hop",
            "measured_compute_s": worst, "ratio": _ratio(worst, predicted), "replicas": replicas,
        })
    return {
        "mode": mode, "model": plan.get("model"), "plan_sha256": plan_digest(plan), "window": window,
        "requests": result.n_requests, "completed": result.completed,
        "failed": len(result.failures), "resent": result.resent,
        "samples_per_request": result.samples_per_request, "wall_s": result.wall_s,
        "latency_s": {"p50": p50, "p90": _pct(lat, 90), "p99": _pct(lat, 99),
                      "mean": float(np.mean(lat)) if lat else None, "max": max(lat) if lat else None},
        "throughput": throughput,
        # latency_s / throughput: the plan's unloaded latency and steady throughput; window_*: the same plan
        # under this run's window, the quantities the run measured
        "predicted": {"latency_s": p_lat, "throughput": p_thr, "window_latency_s": w_lat, "window_throughput": w_thr},
        "ratio": {"latency_p50": _ratio(p50, w_lat), "throughput": _ratio(throughput, w_thr),
                  "latency_unloaded": _ratio(p50, p_lat) if window == 1 else None},
        "stages": stages,
        "failures": [{"request": i, "reason": r} for i, r in sorted(result.failures.items())],
        "faults": [{"device": f.device, "stage": f.stage, "address": f.address, "reason": f.reason,
                    "detected_at_s": f.detected_at_s} for f in result.faults],
        "ok": result.ok,
    }


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def _x(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _tp(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(rep: dict) -> str:
    """A fixed-width table: each measured figure beside the prediction of the same quantity."""
    lat, pred, ratio = rep["latency_s"], rep["predicted"], rep["ratio"]
    w = rep.get("window")
    one = w == 1  # a window of 1 measures the unloaded latency itself
    lines = [
        f"{rep['model']}: {rep['completed']}/{rep['requests']} requests answered, {rep['failed']} failed, "
        f"{rep['resent']} re-sent, {rep['wall_s']:.3f}s ({rep['mode']}), window {w} request(s) in flight",
        f"{'':34}{'measured':>12}{'predicted':>12}{'ratio':>8}",
        f"{f'latency p50, window {w} (ms)':34}{_ms(lat['p50']):>12}{_ms(pred.get('window_latency_s')):>12}"
        f"{_x(ratio['latency_p50']):>8}",
        f"{'latency p99 (ms)':34}{_ms(lat['p99']):>12}{'':>12}{'':>8}",
        f"{f'throughput, window {w} (samples/s)':34}{_tp(rep['throughput']):>12}"
        f"{_tp(pred.get('window_throughput')):>12}{_x(ratio['throughput']):>8}",
        f"{'unloaded latency (ms)':34}{_ms(lat['p50'] if one else None):>12}{_ms(pred['latency_s']):>12}"
        f"{_x(ratio.get('latency_unloaded')):>8}" + ("" if one else "  (plan; measure with --window 1)"),
        f"{'steady throughput (samples/s)':34}{'':>12}{_tp(pred['throughput']):>12}{'':>8}  (plan; window unbounded)",
        "",
        f"{'stage':<7}{'layers':<30}{'module ms':>12}{'predicted':>12}{'ratio':>8}  {'predicts':<18}replicas",
    ]
    for st in rep["stages"]:
        reps = ", ".join(f"{r['device']}[{r['samples']}]{'' if r['alive'] else ' DEAD'}" for r in st["replicas"])
        basis = st.get("predicted_basis", "compute incl. hop")
        predicted = st.get("predicted_module_s") if basis == "module" else st["predicted_compute_s"]
        lines.append(f"{st['index']:<7}{st['layers'][:29]:<30}{_ms(st['measured_compute_s']):>12}"
                     f"{_ms(predicted):>12}{_x(st['ratio']):>8}  {basis:<18}{reps}")
    for f in rep["faults"]:
        lines.append(f"FAULT: board {f['device']} stage {f['stage']} ({f['address']}) at {f['detected_at_s']:.2f}s: "
                     f"{f['reason']}")
    if rep["failures"]:
        first = rep["failures"][0]
        lines.append(f"FAILED: {len(rep['failures'])} request(s), e.g. request {first['request']}: {first['reason']}")
    return "\n".join(lines) + "\n"
