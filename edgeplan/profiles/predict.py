"""Predict what `edgeplan run` measures: latency and throughput with a window of requests in flight.

A plan predicts the unloaded latency ``L`` of one request (it alone in the
pipeline) and the steady-state throughput ``X`` (samples/s, bounded by the
slowest stage or link). `edgeplan run` keeps ``W`` requests of ``b`` samples in
flight (a closed loop; the head's window, default twice the stages), so it
measures neither figure alone: with the bottleneck serving one request every
``P = b / X`` seconds, Little's law gives

- throughput ``min(X, W b / L)``: the window cannot fill the pipeline when
  ``W P < L``;
- latency ``max(L, W P)``: once ``W P >= L`` the window saturates the
  pipeline and every request waits behind the ``W - 1`` others at the
  bottleneck, so p50 latency ~ window x bottleneck period.

Comparing a measured p50 under load with ``L`` reads as 3-4x "error" that is
queueing, not a wrong cost model. Plain floats in and out (no numpy), so the
board-side run report can use the same formulas.
"""

from __future__ import annotations


def default_window(n_stages: int) -> int:
    """The head's window when none is given (runtime/head.py: 2 x stages)."""
    return 2 * max(1, n_stages)


def loaded_throughput(latency_s: float, throughput: float, samples_per_request: int, window: int) -> float:
    """Samples/s with ``window`` requests in flight (module docstring)."""
    if latency_s <= 0:
        return throughput
    return min(throughput, window * samples_per_request / latency_s)


def loaded_latency_s(latency_s: float, throughput: float, samples_per_request: int, window: int) -> float:
    """Seconds per request with ``window`` requests in flight: ``max(L, W b / X)`` (module docstring)."""
    if throughput <= 0:
        return latency_s
    return max(latency_s, window * samples_per_request / throughput)


def paired(report: dict, window: int | None = None) -> dict[str, tuple[float | None, float | None]]:
    """Each end-to-end figure of a run report beside the prediction of the same quantity.

    ``window`` defaults to the report's ``window`` (when it records one), else the head's default for its
    stages. Returns ``{name: (measured, predicted)}`` for latency under load (p50), throughput under load,
    and the plan's unloaded figures (measured only when the run had a window of 1).
    """
    pred = report.get("predicted") or {}
    lat, thr = pred.get("latency_s"), pred.get("throughput")
    b = int(report.get("samples_per_request") or 1)
    w = window or report.get("window") or default_window(len(report.get("stages", ())))
    measured_p50 = (report.get("latency_s") or {}).get("p50")
    out = {"window": (float(w), float(w))}
    if lat is None or thr is None:
        return out
    out["latency_p50_loaded_s"] = (measured_p50, loaded_latency_s(lat, thr, b, w))
    out["throughput_loaded"] = (report.get("throughput"), loaded_throughput(lat, thr, b, w))
    out["latency_unloaded_s"] = (measured_p50 if w == 1 else None, lat)
    return out
