"""Measured vs predicted: the table ``edgeplan run`` prints and the JSON report it writes.

Works on plain dicts (plan.json as read from disk), so it runs on a board too.
Predicted per-stage figures are the plan's ``compute_s`` (one micro-batch on
the slowest replica); measured ones are each worker's median module time per
micro-batch, from its STATS reply.
"""

from __future__ import annotations

import numpy as np

from .head import RunResult


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _ratio(measured, predicted) -> float | None:
    if measured is None or not predicted:
        return None
    return measured / predicted


def build(plan: dict, result: RunResult, mode: str = "local") -> dict:
    """The JSON report: end-to-end and per-stage figures, failures and dead workers."""
    lat = [x for x in result.latencies_s if x is not None]
    samples = result.completed * result.samples_per_request
    throughput = samples / result.wall_s if result.wall_s > 0 else None
    pred = plan.get("predicted") or {}
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
                "alive": not any(f.device == r["device"] and f.stage == st["index"] for f in result.faults),
            })
        measured = [x["measured_compute_s"] for x in replicas if x["measured_compute_s"] is not None]
        worst = max(measured) if measured else None
        stages.append({
            "index": st["index"], "layers": f"{st.get('first_layer', '?')}..{st.get('last_layer', '?')}",
            "predicted_compute_s": st.get("compute_s"), "measured_compute_s": worst,
            "ratio": _ratio(worst, st.get("compute_s")), "replicas": replicas,
        })
    return {
        "mode": mode, "model": plan.get("model"), "requests": result.n_requests, "completed": result.completed,
        "failed": len(result.failures), "resent": result.resent,
        "samples_per_request": result.samples_per_request, "wall_s": result.wall_s,
        "latency_s": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99),
                      "mean": float(np.mean(lat)) if lat else None, "max": max(lat) if lat else None},
        "throughput": throughput,
        "predicted": {"latency_s": pred.get("latency_s"), "throughput": pred.get("throughput")},
        "ratio": {"latency_p50": _ratio(_pct(lat, 50), pred.get("latency_s")),
                  "throughput": _ratio(throughput, pred.get("throughput"))},
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


def format_table(rep: dict) -> str:
    """A fixed-width table: measured beside predicted, end to end and per stage."""
    lat, pred = rep["latency_s"], rep["predicted"]
    tp, ptp = rep["throughput"], pred["throughput"]
    tp_s = "-" if tp is None else f"{tp:.1f}"
    ptp_s = "-" if ptp is None else f"{ptp:.1f}"
    lines = [
        f"{rep['model']}: {rep['completed']}/{rep['requests']} requests answered, {rep['failed']} failed, "
        f"{rep['resent']} re-sent, {rep['wall_s']:.3f}s ({rep['mode']})",
        f"{'':24}{'measured':>12}{'predicted':>12}{'ratio':>8}",
        f"{'latency p50 (ms)':24}{_ms(lat['p50']):>12}{_ms(pred['latency_s']):>12}"
        f"{_x(rep['ratio']['latency_p50']):>8}",
        f"{'latency p99 (ms)':24}{_ms(lat['p99']):>12}{'':>12}{'':>8}",
        f"{'throughput (samples/s)':24}{tp_s:>12}{ptp_s:>12}{_x(rep['ratio']['throughput']):>8}",
        "",
        f"{'stage':<7}{'layers':<30}{'compute ms':>12}{'predicted':>12}{'ratio':>8}  replicas",
    ]
    for st in rep["stages"]:
        reps = ", ".join(f"{r['device']}[{r['samples']}]{'' if r['alive'] else ' DEAD'}" for r in st["replicas"])
        lines.append(f"{st['index']:<7}{st['layers'][:29]:<30}{_ms(st['measured_compute_s']):>12}"
                     f"{_ms(st['predicted_compute_s']):>12}{_x(st['ratio']):>8}  {reps}")
    for f in rep["faults"]:
        lines.append(f"FAULT: board {f['device']} stage {f['stage']} ({f['address']}) at {f['detected_at_s']:.2f}s: "
                     f"{f['reason']}")
    if rep["failures"]:
        first = rep["failures"][0]
        lines.append(f"FAILED: {len(rep['failures'])} request(s), e.g. request {first['request']}: {first['reason']}")
    return "\n".join(lines) + "\n"
