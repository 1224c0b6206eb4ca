"""Refit a cluster's training figures from `edgeplan train --report` runs: ``edgeplan calibrate TRAIN-REPORT``.

A training report gives, per stage replica, board seconds (measured x the
testbed's dilation) of: forward and backward module time, the stage calls'
overhead and the point-to-point receive time (with bytes and transfers) per
micro-batch, and per iteration the optimizer step and the gradient all-reduce
(bytes, group). The cost model prices the same quantities
(``training.metrics.predict``) from a unit's figures and its
``TrainingFigures`` (profiles/model.py); the fit finds, per board and unit:

- ``forward_factor`` + ``forward_layer_s`` + ``forward_call_s`` and the same
  for the backward pass: ``measured = factor x (per-sample time + weight reads)
  + layers x per-layer seconds + per-call seconds`` by least squares on
  relative errors where the replicas separate them (their samples, layer mixes
  and layer counts differ; one layer count: factor + per call), else one
  factor (the median of measured / predicted). The backward pass is fitted on
  its own, so the backward/forward ratio is the measured one, not the cost
  model's 2x-forward-FLOPs assumption. A factor that would run a stage's FLOPs
  faster than the unit's peak is clamped to the peak and says so;
- ``call_s`` + ``call_peer_s``: the stage calls' overhead beyond the module
  (slicing, sends, gathers), ``per micro-batch = 2 call + neighbour replicas x
  per-peer`` (least squares where the neighbour counts differ, else the
  per-call cost alone), replacing the inference runtime's hop cost;
- ``optimizer_call_s`` + ``optimizer_s_per_byte``: the optimizer step per step and per parameter byte
  (least squares where the stages' sizes differ, else per byte alone).

Boards of one profile with the same figures are fitted together (the stage a
replica runs, not its board, makes e.g. its call overhead differ).

and, over every board of the reports (they share torch.distributed and the
network), torch.distributed's overhead beyond the link model:

- all-reduce: ``measured - ring(bytes/bw, latency) = 2 (g-1) a + bytes b``;
- point-to-point: ``measured - sum(bytes/bw + latency) = transfers a + bytes b``;

by bounded least squares (``a, b >= 0``) when the observations have at least
two distinct sizes per call, else the per-call term alone (``b = 0``, said in a
note). Fitted figures go to every device of the same profile (the datasheet
error is the board model's).

Refused, with one line that says which: a report that is not a training report,
a plan that is not the report's (plan sha256), a cluster that is not the plan's
(cluster sha256), too few micro-batches or iterations to fit.
Pure numpy: the graph comes in as a LayerGraph, traced by the caller.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeplan import jsonio
from edgeplan.graph.model import LayerGraph
from edgeplan.profiles.calibrate import (
    MAX_FACTOR,
    MAX_HOP_S,
    MAX_OVERHEAD_S,
    Calibration,
    CalibrationError,
    _read_json,
    _separates,
    _write_doc,
    bounded_lstsq,
    calibrated_doc,
    plan_digest,
)
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.model import Cluster, TrainingFigures

REPORT_KIND = "edgeplan-train-report"  # training/launch.py REPORT_KIND
MIN_MICROBATCHES = 20  # micro-batches a replica must have run for its forward/backward medians to be used
MIN_ITERATIONS = 5  # iterations a report must have for its per-iteration figures (optimizer, all-reduce)
MODULE_FIGURES = ("forward_s", "backward_s", "call_s", "optimizer_s", "p2p_s")


def is_train_report(path: str | Path) -> bool:
    """Whether ``path`` is an `edgeplan train --report` file (what the calibrate entry point dispatches on)."""
    try:
        return jsonio.read(path).get("kind") == REPORT_KIND
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class TrainObservation:
    """One stage replica of one training report, measured (board seconds) and predicted before the fit."""

    source: str
    stage: int
    device: str
    unit: str
    samples: int
    microbatches: int
    measured: tuple[tuple[str, float], ...]  # MODULE_FIGURES -> seconds
    predicted: tuple[tuple[str, float], ...]  # the same, on the cluster as given
    peak: tuple[tuple[str, float], ...]  # forward_s/backward_s at the unit's peak FLOP/s (a fit's floor)
    terms: tuple[tuple[str, float, int], ...]  # per pass: seconds at factor 1 without layer overheads, layers
    param_bytes: float
    p2p_bytes: float  # received per micro-batch
    p2p_transfers: float  # received per micro-batch
    p2p_link_s: float  # the link model's part of the predicted p2p seconds
    peers: int = 0  # neighbour replicas it exchanges tensors with


@dataclass(frozen=True)
class AllreduceObservation:
    source: str
    stage: int
    group: tuple[str, ...]
    nbytes: float
    measured_s: float
    link_s: float  # the ring over the links alone


@dataclass(frozen=True)
class TrainUnitFit:
    device: str
    unit: str
    replicas: int  # observations used (0: same profile as a fitted board, not run)
    before: TrainingFigures
    after: TrainingFigures
    notes: tuple[str, ...] = ()
    inferred_from: str | None = None


@dataclass(frozen=True)
class TrainCalibration:
    fits: tuple[TrainUnitFit, ...]
    observations: tuple[TrainObservation, ...]
    allreduces: tuple[AllreduceObservation, ...]
    after: tuple[dict, ...]  # per report: predict() on the calibrated cluster
    reports: tuple[dict, ...]
    cluster: Cluster
    notes: tuple[str, ...] = ()
    reserves: tuple[ReserveFit, ...] = ()  # the training-framework reserve per board (fit_reserve)

    def mape(self, which: str, figures: tuple[str, ...] = ("forward_s", "backward_s")) -> float:
        """Mean absolute percentage error over replicas of ``figures``, ``before`` or ``after`` the fit."""
        errs = []
        for o in self.observations:
            pred = dict(o.predicted) if which == "before" else _after_of(self, o)
            for f in figures:
                m = dict(o.measured)[f]
                if m > 0:
                    errs.append(abs(pred[f] - m) / m)
        return 100.0 * float(np.mean(errs)) if errs else float("nan")

    def iteration_errors(self) -> list[tuple[str, float, float, float]]:
        """(report, measured, predicted before, after) iteration seconds per report."""
        return [(r["source"], r["measured_iter_s"], r["before_iter_s"], a["iter_s"])
                for r, a in zip(self.reports, self.after, strict=True)]


def _after_of(cal: TrainCalibration, o: TrainObservation) -> dict:
    for r, a in zip(cal.reports, cal.after, strict=True):
        if r["source"] == o.source:
            st = a["stages"][o.stage]
            rep = next(x for x in st["replicas"] if x["device"] == o.device and x["unit"] == o.unit)
            return {**{f: rep[f] for f in MODULE_FIGURES if f in rep}}
    raise KeyError(o.source)


# --- reading reports ---------------------------------------------------------------------------


def _read(path: Path) -> dict:
    rep = _read_json(path, "training report")
    if rep.get("kind") != REPORT_KIND:
        raise CalibrationError(f"{path}: not a training report (kind {rep.get('kind')!r}); write one with "
                               f"`edgeplan train ART --report {path.name}`")
    return rep


def _check(rep: dict, plan: dict, cluster: Cluster, source: str, cluster_source: str) -> None:
    if rep.get("plan_sha256") != plan_digest(plan):
        raise CalibrationError(f"{source}: report is a run of plan sha256 {str(rep.get('plan_sha256'))[:12]}, not of "
                               f"the given plan ({plan_digest(plan)[:12]}); give the plan that was run (--plan)")
    want, have = plan.get("cluster_sha256", ""), cluster.digest()
    if want != have:
        raise CalibrationError(f"{source}: plan was made on cluster sha256 {want[:12]}, but {cluster_source} is "
                               f"{have[:12]}; give the cluster file the plan was made with (--cluster)")
    if int(rep.get("iterations") or 0) < MIN_ITERATIONS:
        raise CalibrationError(f"{source}: {rep.get('iterations')} iteration(s) measured, fewer than {MIN_ITERATIONS}; "
                               f"train longer (--max-iters {4 * MIN_ITERATIONS} or more)")


def observations(rep: dict, predicted: dict, source: str) -> tuple[list[TrainObservation],
                                                                   list[AllreduceObservation], list[str]]:
    """The report's usable replicas and all-reduces, and one line per replica left out."""
    pred = {s["stage"]: s for s in predicted["stages"]}
    obs, ars, skipped = [], [], []
    for st in rep.get("stages") or ():
        ps = pred.get(st.get("stage"))
        if ps is None:
            raise CalibrationError(f"{source}: stage {st.get('stage')} is not in the plan; give the plan that was run")
        for r in st["replicas"]:
            pr = next((x for x in ps["replicas"] if x["device"] == r["device"] and x["unit"] == r["unit"]), None)
            if pr is None:
                raise CalibrationError(f"{source}: stage {st['stage']} ran on {r['device']}:{r['unit']}, which the "
                                       "plan does not use there; give the plan that was run")
            where = f"{source}: stage {st['stage']} on {r['device']}:{r['unit']}"
            if r["microbatches"] < MIN_MICROBATCHES:
                skipped.append(f"{where}: {r['microbatches']} micro-batch(es), fewer than {MIN_MICROBATCHES}; not used "
                               "(train more iterations)")
                continue
            obs.append(TrainObservation(
                source=source, stage=int(st["stage"]), device=r["device"], unit=r["unit"], samples=int(r["samples"]),
                microbatches=int(r["microbatches"]),
                measured=tuple((f, float(r[f][0])) for f in MODULE_FIGURES),
                predicted=tuple((f, float(pr[f])) for f in MODULE_FIGURES),
                peak=(("forward_s", float(pr["forward_peak_s"])), ("backward_s", float(pr["backward_peak_s"]))),
                terms=tuple((f, float(pr[f"{f[:-2]}_terms"][0]), int(pr[f"{f[:-2]}_terms"][1]))
                            for f in ("forward_s", "backward_s")),
                param_bytes=float(ps["param_bytes"]), p2p_bytes=float(r["p2p_bytes"]),
                p2p_transfers=float(r["p2p_transfers"]), p2p_link_s=float(pr["p2p_link_s"]),
                peers=int(pr.get("peers", 0))))
        if len(st["replicas"]) > 1 and ps["allreduce_bytes"]:
            ars.append(AllreduceObservation(source, int(st["stage"]), tuple(st["group"]), float(ps["allreduce_bytes"]),
                                            float(st["allreduce_s"][0]), float(ps["allreduce_link_s"])))
    return obs, ars, skipped


# --- the fit ---------------------------------------------------------------------------------


def _overhead(calls: np.ndarray, nbytes: np.ndarray, resid: np.ndarray, measured: np.ndarray, what: str
              ) -> tuple[float, float, str]:
    """(per call, per byte) >= 0 with ``calls a + nbytes b ~ resid``, errors relative to ``measured``; a note
    when the byte counts do not separate the two."""
    if len(np.unique(np.round(nbytes / np.maximum(calls, 1e-12)))) >= 2:  # bytes per call differ: they separate
        w = 1.0 / np.maximum(measured, 1e-9)
        a = np.stack([calls * w, nbytes * w], axis=1)
        x, _ = bounded_lstsq(a, resid * w, np.zeros(2), np.array([MAX_HOP_S, 1e-3]))
        return float(x[0]), float(x[1]), ""
    per_call = float(np.clip(np.median(resid / np.maximum(calls, 1e-12)), 0.0, MAX_HOP_S))
    return per_call, 0.0, (f"{what}: one size per call ({nbytes[0] / max(calls[0], 1e-12):.0f} B) in the reports: a "
                           "per-call cost only (run a plan with other cuts, shares or stage sizes to separate the "
                           "per-byte cost)")


def fit(cluster: Cluster, obs: list[TrainObservation], ars: list[AllreduceObservation],
        skipped: list[str] = ()) -> tuple[tuple[TrainUnitFit, ...], Cluster, tuple[str, ...]]:
    """Fit every board model and unit the observations cover, and the boards' torch.distributed overheads."""
    if not obs:
        raise CalibrationError("no stage replica in the training report(s) ran enough micro-batches to fit ("
                               + "; ".join(skipped) + f"); train at least {MIN_MICROBATCHES} micro-batches")
    notes: list[str] = list(skipped)
    # torch.distributed's overheads: shared by every board of the reports
    p2p = [o for o in obs if o.p2p_transfers > 0]
    p2p_fit = (0.0, 0.0)
    if p2p:
        m = np.array([dict(o.measured)["p2p_s"] for o in p2p])
        a, b, note = _overhead(np.array([o.p2p_transfers for o in p2p]), np.array([o.p2p_bytes for o in p2p]),
                               m - np.array([o.p2p_link_s for o in p2p]), m, "point-to-point")
        p2p_fit = (a, b)
        notes += [note] if note else []
    ar_fit = (0.0, 0.0)
    if ars:
        m = np.array([x.measured_s for x in ars])
        steps = np.array([2.0 * (len(x.group) - 1) for x in ars])
        a, b, note = _overhead(steps, np.array([x.nbytes for x in ars]), m - np.array([x.link_s for x in ars]), m,
                               "all-reduce")
        ar_fit = (a, b)
        notes += [note] if note else []
    devices = {d.name: d for d in cluster.devices}
    missing = sorted({o.device for o in obs} - set(devices))
    if missing:
        raise CalibrationError(f"training report ran on board(s) {', '.join(missing)}, which cluster {cluster.name!r} "
                               "does not have")
    # one fit per board model: boards of one profile with the same figures pool their replicas (a stage's role,
    # not its board, makes its call overhead differ; the datasheet error is the board model's)
    def figures(u):  # a unit's figures, less where its training figures came from
        return dataclasses.replace(u, training=u.training and dataclasses.replace(u.training, source=""),
                                   measured=())

    groups: dict[tuple, list[TrainObservation]] = {}
    for o in obs:
        d = devices[o.device]
        groups.setdefault((d.profile, o.unit, figures(d.unit(o.unit))), []).append(o)
    fits = []
    for (profile, uname, unit), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        before = devices[items[0].device].unit(uname).training or TrainingFigures()
        ran = sorted({o.device for o in items})
        where = f"{'/'.join(ran)}:{uname}"
        unit_notes = []
        factors, layer, per_call = {}, {}, {}
        for f, old, old_layer, old_call in (
                ("forward_s", before.forward_factor, before.forward_layer_s, before.forward_call_s),
                ("backward_s", before.backward_factor, before.backward_layer_s, before.backward_call_s)):
            factors[f], layer[f], per_call[f], clamped = _pass(items, f, old, old_layer, old_call)
            if clamped:
                unit_notes.append(f"{where}: the fit would run the {f[:-2]} pass faster than the unit's peak FLOP/s; "
                                  "clamped to the peak")
        call, call_peer = _call(items, before)
        opt_call, opt_byte = _optimizer(items, before)
        after = TrainingFigures(
            forward_factor=factors["forward_s"], backward_factor=factors["backward_s"],
            forward_layer_s=layer["forward_s"], backward_layer_s=layer["backward_s"],
            forward_call_s=per_call["forward_s"], backward_call_s=per_call["backward_s"], call_s=call,
            call_peer_s=call_peer,
            optimizer_s_per_byte=opt_byte, optimizer_call_s=opt_call,
            p2p_call_s=p2p_fit[0] if p2p else before.p2p_call_s, p2p_s_per_byte=p2p_fit[1] if p2p else
            before.p2p_s_per_byte, allreduce_call_s=ar_fit[0] if ars else before.allreduce_call_s,
            allreduce_s_per_byte=ar_fit[1] if ars else before.allreduce_s_per_byte)
        for d in cluster.devices:
            if d.profile != profile or uname not in {u.name for u in d.units} or figures(d.unit(uname)) != unit:
                continue
            n = sum(o.device == d.name for o in items)
            note = () if n else (f"{d.name}:{uname}: not in the report(s); takes the fit of {where} (same profile "
                                 f"{profile!r})",)
            fits.append(TrainUnitFit(d.name, uname, n, before, after, tuple(unit_notes) + note,
                                     None if n else ran[0]))
    fitted = {(f.device, f.unit): f.after for f in fits}
    new = dataclasses.replace(cluster, devices=tuple(
        dataclasses.replace(d, units=tuple(dataclasses.replace(u, training=fitted.get((d.name, u.name), u.training))
                                           for u in d.units)) for d in cluster.devices))
    return tuple(fits), new, tuple(notes)


def _pass(items: list[TrainObservation], f: str, old: float, old_layer: float | None, old_call: float
          ) -> tuple[float, float | None, float, bool]:
    """(factor, per-layer seconds, per-call seconds, clamped) of one pass (``forward_s`` | ``backward_s``):
    ``measured = factor x (per-sample time + weight reads) + layers x per-layer + per-call`` by bounded least
    squares on relative errors. Where every replica has the same layer count the per-layer and per-call terms
    do not separate: the per-call one is fitted (per-layer 0). On the testbed it is the one that holds: LeNet-5's
    whole 12-layer forward on one board read 2.16 ms against 2.0 for its first 6 layers as a stage and 1.07-1.22
    for the last 6 (2-6 samples): one ~1 ms cost per module call; a per-layer fit priced the one-board layout
    +30% and the 6-layer stages -26%. Where neither separates from the factor, one factor on the whole
    prediction. The factor never makes a stage's FLOPs run faster than the unit's peak (clamped, and said)."""
    t = np.array([dict(o.measured)[f] for o in items])
    cols = np.array([[a, n, 1.0] for o in items for g, a, n in o.terms if g == f], dtype=np.float64)
    floor = max(float(max(dict(o.peak)[f] / a for o in items for g, a, _ in o.terms if g == f and a > 0)),
                1.0 / MAX_FACTOR)
    w = 1.0 / np.maximum(t, 1e-12)
    for keep in ((0, 1, 2), (0, 2)):  # factor + per-layer + per-call, else factor + per-call
        a = cols[:, keep] * w[:, None]
        if _separates(a):
            hi = np.array([MAX_FACTOR, MAX_OVERHEAD_S, MAX_HOP_S])[list(keep)]
            x, _ = bounded_lstsq(a, t * w, np.r_[floor, np.zeros(len(keep) - 1)], hi)
            unclamped = np.linalg.lstsq(a, t * w, rcond=None)[0][0]
            got = dict(zip(keep, x, strict=True))
            return float(got[0]), float(got.get(1, 0.0)), float(got[2]), bool(unclamped < floor)
    pred = np.array([dict(o.predicted)[f] for o in items])
    r = float(np.median(t / np.maximum(pred, 1e-12)))
    low = max(float(max(dict(o.peak)[f] / p for o, p in zip(items, pred, strict=True) if p > 0)), 1.0 / MAX_FACTOR)
    clamped = r < low
    r = max(r, low)
    return (float(np.clip(old * r, 1.0 / MAX_FACTOR, MAX_FACTOR)),
            None if old_layer is None else float(min(old_layer * r, MAX_OVERHEAD_S)),
            float(min(old_call * r, MAX_HOP_S)), clamped)


def _call(items: list[TrainObservation], before: TrainingFigures) -> tuple[float, float]:
    """(per stage call, per neighbour replica per micro-batch) of the calls' overhead: ``measured per micro-batch
    = 2 call + peers x per-peer`` by least squares where the replicas' neighbour counts differ, else the
    per-call cost alone (the per-peer cost kept)."""
    t = np.array([dict(o.measured)["call_s"] for o in items])
    n = np.array([o.peers for o in items], dtype=np.float64)
    if len(np.unique(n)) >= 2:
        w = 1.0 / np.maximum(t, 1e-9)
        x, _ = bounded_lstsq(np.stack([2.0 * w, n * w], axis=1), t * w, np.zeros(2), np.array([MAX_HOP_S] * 2))
        return float(x[0]), float(x[1])
    per_call = float(np.median((t - n * before.call_peer_s) / 2.0))
    return float(np.clip(per_call, 0.0, MAX_HOP_S)), before.call_peer_s


def _optimizer(items: list[TrainObservation], before: TrainingFigures) -> tuple[float, float]:
    """(per step, per parameter byte) of the optimizer step: both where the stages' sizes differ, else the
    per-byte cost alone."""
    obs = [(o.param_bytes, dict(o.measured)["optimizer_s"]) for o in items if o.param_bytes > 0]
    if not obs:
        return before.optimizer_call_s, before.optimizer_s_per_byte
    nbytes, t = np.array(obs).T
    if len(np.unique(np.round(nbytes))) >= 2:
        w = 1.0 / np.maximum(t, 1e-9)
        x, _ = bounded_lstsq(np.stack([w, nbytes * w], axis=1), t * w, np.zeros(2), np.array([MAX_HOP_S, 1e-3]))
        return float(x[0]), float(x[1])
    return 0.0, max(float(np.median(t / nbytes)), 0.0)


# --- the training-framework reserve ---------------------------------------------------------------


@dataclass(frozen=True)
class ReserveFit:
    """A board's ``train_reserve_mb`` from its ranks' peak RSS: peak - the plan's modelled memory (clamped >= 0)."""

    device: str
    ranks: int  # ranks observed (0: same profile as a fitted board, not run)
    peak_bytes: int  # the worst rank's peak resident bytes
    model_bytes: int  # ... and its stage's modelled memory
    reserve_bytes: int
    note: str = ""


def fit_reserve(cluster: Cluster, reports: list[tuple[str, dict]]) -> tuple[ReserveFit, ...]:
    """Per board model, the largest (peak RSS - modelled memory) over its ranks in the reports, given to every
    board of that profile: what each torch training rank held beyond what the planner priced (reports without
    the memory figures, from before `edgeplan train` recorded them, give none)."""
    worst: dict[str, tuple[int, int, int, str]] = {}  # profile -> (reserve, peak, model, device), ranks counted
    counts: dict[str, int] = {}
    devices = {d.name: d for d in cluster.devices}
    for _, rep in reports:
        for st in rep.get("stages") or ():
            for r in st.get("replicas") or ():
                peak, model = (r.get("peak_rss_bytes") or [None])[0], r.get("model_memory_bytes")
                if peak is None or model is None or r.get("device") not in devices:
                    continue
                prof = devices[r["device"]].profile
                counts[r["device"]] = counts.get(r["device"], 0) + 1
                if prof not in worst or peak - model > worst[prof][0]:
                    worst[prof] = (int(peak - model), int(peak), int(model), r["device"])
    out = []
    for d in cluster.devices:
        if d.profile not in worst:
            continue
        gap, peak, model, who = worst[d.profile]
        note = (f"{who}: peak RSS {peak / 2**20:.0f} MB is below the modelled {model / 2**20:.0f} MB; reserve "
                "clamped to 0 (the cost model over-prices this stage's memory)") if gap < 0 else ""
        if gap > d.ram_bytes:  # more than the board has: not this board's process (or not its memory)
            note = (f"{who}: peak RSS {peak / 2**20:.0f} MB - modelled {model / 2**20:.0f} MB exceeds {d.name}'s "
                    f"usable {d.ram_bytes / 2**20:.0f} MB; reserve clamped to it (was the report measured on "
                    "this board?)")
        n = counts.get(d.name, 0)
        out.append(ReserveFit(d.name, n, peak, model, min(max(gap, 0), int(d.ram_bytes)), note if n else ""))
    return tuple(out)


# --- writing the calibrated cluster --------------------------------------------------------------


def _figures_yaml(f: TrainingFigures, source: str) -> dict:
    def num(x: float) -> float:
        return float(f"{x:.6g}")

    layers = {k: num(v * 1e6) for k, v in (("forward_layer_us", f.forward_layer_s),
                                           ("backward_layer_us", f.backward_layer_s)) if v is not None}
    calls = {k: num(v * 1e6) for k, v in (("forward_call_us", f.forward_call_s),
                                          ("backward_call_us", f.backward_call_s)) if v}
    return {"forward_factor": num(f.forward_factor), "backward_factor": num(f.backward_factor), **layers, **calls,
            "call_us": num((f.call_s or 0.0) * 1e6), "call_peer_us": num(f.call_peer_s * 1e6),
            "optimizer_ns_per_byte": num(f.optimizer_s_per_byte * 1e9),
            "optimizer_call_us": num(f.optimizer_call_s * 1e6),
            "p2p_call_us": num(f.p2p_call_s * 1e6), "p2p_ns_per_byte": num(f.p2p_s_per_byte * 1e9),
            "allreduce_call_us": num(f.allreduce_call_s * 1e6),
            "allreduce_ns_per_byte": num(f.allreduce_s_per_byte * 1e9), "from": source}


def write_calibrated(cluster_path: Path, cluster: Cluster, fits: tuple[TrainUnitFit, ...], out_path: Path,
                     sources: str, when: str | None, reserves: tuple[ReserveFit, ...] = ()) -> Cluster:
    """The cluster file with each fitted unit's ``training:`` block (and each board's fitted
    ``train_reserve_mb``, with its provenance) as a device override; loaded back."""
    doc = calibrated_doc(cluster_path, Calibration((), (), (), cluster), out_path, sources=sources, backend="torch",
                         when=when)
    stamp = when or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    for dev in doc["devices"]:
        for f in fits:
            if f.device != dev["name"]:
                continue
            over = dev.get("overrides") or {}
            dev["overrides"] = over
            units = over.setdefault("units", {}) or {}
            over["units"] = units
            how = (f"edgeplan calibrate: fit over {f.replicas} replica(s) of {sources} at {stamp}"
                   if f.inferred_from is None else f"as {f.inferred_from} (same profile, not run): {sources}")
            units[f.unit] = {**(units.get(f.unit) or {}), "training": _figures_yaml(f.after, how)}
        for rf in reserves:
            if rf.device == dev["name"]:
                over = dev.get("overrides") or {}
                dev["overrides"] = over
                over["train_reserve_mb"] = float(f"{rf.reserve_bytes / 2**20:.4g}")
                over["train_reserve_from"] = (
                    f"edgeplan calibrate: peak RSS - modelled memory, worst of {rf.ranks} rank(s) of {sources} at "
                    f"{stamp}" if rf.ranks else f"as a board of the same profile that ran: {sources}")
    return _write_doc(doc, out_path, f"# Written by `edgeplan calibrate` from training report(s) {sources}: fitted "
                      "training figures are device overrides (units.<unit>.training); everything else is as in "
                      f"{cluster_path}.\n")


def _default_predict(plan: dict, graph: LayerGraph, cluster: Cluster) -> dict:
    """The cost model's prices of a training run's figures (training/metrics.predict: planner + profiles,
    pure numpy; imported here because profiles/ comes before the planner)."""
    from edgeplan.planner.plan import Plan
    from edgeplan.training.metrics import predict

    return predict(Plan.from_json(plan), graph, cluster)


def calibrate_files(reports: list[str | Path], plans: list[str | Path], cluster_path: str | Path,
                    out_path: str | Path, load_graph, *, when: str | None = None, predict=None
                    ) -> tuple[TrainCalibration, Cluster]:
    """Fit ``cluster_path``'s training figures from training ``reports`` and write the calibrated cluster.

    Each report embeds its plan; ``plans`` (optional, one for all or one per report) must be that plan.
    ``load_graph(plan) -> LayerGraph`` traces the plan's model; ``predict(plan, graph, cluster)`` prices the
    run's figures (default: training.metrics.predict).
    """
    predict = predict or _default_predict
    cluster_path, out_path = Path(cluster_path), Path(out_path)
    cluster = load_cluster(cluster_path)
    if plans and len(plans) not in (1, len(reports)):
        raise CalibrationError(f"--plan given {len(plans)} times for {len(reports)} reports; give it once or once "
                               "per report, in the same order")
    runs, obs, ars, skipped, names = [], [], [], [], []
    for i, rpath in enumerate(reports):
        source = str(rpath)
        rep = _read(Path(rpath))
        plan = rep.get("plan")
        if plans:
            from edgeplan.profiles.calibrate import read_plan

            plan, _ = read_plan(plans[0] if len(plans) == 1 else plans[i])
        if not isinstance(plan, dict) or plan.get("mode") != "training":
            raise CalibrationError(f"{source}: the report's plan is not a training plan; give the plan it ran (--plan)")
        _check(rep, plan, cluster, source, str(cluster_path))
        graph = load_graph(plan)
        if plan.get("graph_sha256") and graph.digest() != plan["graph_sha256"]:
            raise CalibrationError(f"{source}: the model traced now (graph sha256 {graph.digest()[:12]}) is not "
                                   f"the one planned ({plan['graph_sha256'][:12]}); give the planned model (--model)")
        before = predict(plan, graph, cluster)
        o, a, s = observations(rep, before, source)
        obs += o
        ars += a
        skipped += s
        runs.append((source, plan, graph, rep, before))
        names.append(f"{Path(rpath).name} (plan {plan_digest(plan)[:12]})")
    fits, _fitted, notes = fit(cluster, obs, ars, skipped)
    reserves = fit_reserve(cluster, [(src, rep) for src, _, _, rep, _ in runs])
    new = write_calibrated(cluster_path, cluster, fits, out_path, ", ".join(names), when, reserves)
    after = tuple(predict(plan, graph, new) for _, plan, graph, _, _ in runs)
    summary = tuple({"source": src, "measured_iter_s": float(rep["measured_iter_s"]),
                     "before_iter_s": before["iter_s"]} for src, _, _, rep, before in runs)
    return TrainCalibration(fits, tuple(obs), tuple(ars), after, summary, new, notes, reserves), new


# --- the printed fit ---------------------------------------------------------------------------


def _err(pred: float, meas: float) -> str:
    return f"{100.0 * (pred - meas) / meas:+.0f}%" if meas else "-"


def format_fit(cal: TrainCalibration) -> str:
    """Per unit: training figures before -> after; per replica and figure: measured vs predicted before/after;
    per report: the iteration time."""
    lines = []
    for f in cal.fits:
        b, a = f.before, f.after
        lines.append(f"{f.device}:{f.unit}: " + (f"as {f.inferred_from}:{f.unit} (same profile, not run)"
                                                  if f.inferred_from else f"training fit over {f.replicas} replica(s)"))
        if f.inferred_from is None:
            def per_layer(x: float | None, call: float) -> str:
                return ("" if x is None else f" + {x * 1e6:.3g} us/layer") + (f" + {call * 1e3:.3g} ms/call"
                                                                               if call else "")

            lines.append(f"  forward x{b.forward_factor:.3g} -> x{a.forward_factor:.3g}"
                         f"{per_layer(a.forward_layer_s, a.forward_call_s)}"
                         f"   backward x{b.backward_factor:.3g} -> x{a.backward_factor:.3g}"
                         f"{per_layer(a.backward_layer_s, a.backward_call_s)}   stage call "
                         f"{'hop' if b.call_s is None else f'{b.call_s * 1e3:.3g} ms'} -> "
                         f"{(a.call_s or 0) * 1e3:.3g} ms + {a.call_peer_s * 1e3:.3g} ms/peer"
                         f"   optimizer {a.optimizer_call_s * 1e3:.3g} ms + {a.optimizer_s_per_byte * 1e9:.3g} ns/B")
            lines.append(f"  p2p {a.p2p_call_s * 1e3:.3g} ms + {a.p2p_s_per_byte * 1e9:.3g} ns/B per transfer;  "
                         f"all-reduce {a.allreduce_call_s * 1e3:.3g} ms per ring step + "
                         f"{a.allreduce_s_per_byte * 1e9:.3g} ns/B (beyond the links)")
        lines.extend(f"  {n}" for n in f.notes)
    lines += ["", f"{'report':<20}{'stage':>6}  {'board:unit':<14}{'figure':<13}{'measured ms':>12}{'before':>10}"
                  f"{'err':>8}{'after':>10}{'err':>8}"]
    for o in cal.observations:
        after = _after_of(cal, o)
        for f in MODULE_FIGURES:
            m, p0, p1 = dict(o.measured)[f], dict(o.predicted)[f], after[f]
            lines.append(f"{Path(o.source).name[:19]:<20}{o.stage:>6}  {o.device + ':' + o.unit:<14}{f[:-2]:<13}"
                         f"{m * 1e3:>12.3f}{p0 * 1e3:>10.3f}{_err(p0, m):>8}{p1 * 1e3:>10.3f}{_err(p1, m):>8}")
    for x in cal.allreduces:
        lines.append(f"{Path(x.source).name[:19]:<20}{x.stage:>6}  all-reduce of {x.nbytes / 1e6:.3g} MB over "
                     f"{len(x.group)} board(s): measured {x.measured_s * 1e3:.2f} ms, links alone "
                     f"{x.link_s * 1e3:.2f} ms")
    lines.append(f"per-stage forward/backward MAPE: {cal.mape('before'):.1f}% before, {cal.mape('after'):.1f}% after")
    for src, m, b, a in cal.iteration_errors():
        lines.append(f"{Path(src).name}: iteration measured {m * 1e3:.1f} ms, predicted {b * 1e3:.1f} ms "
                     f"({_err(b, m)}) before, {a * 1e3:.1f} ms ({_err(a, m)}) after")
    for rf in cal.reserves:
        lines.append(f"{rf.device}: training reserve {rf.reserve_bytes / 2**20:.0f} MB per rank (peak RSS "
                     f"{rf.peak_bytes / 2**20:.0f} MB - modelled {rf.model_bytes / 2**20:.0f} MB"
                     + (f", {rf.ranks} rank(s))" if rf.ranks else ", same profile, not run)"))
        lines.extend([f"  {rf.note}"] if rf.note else [])
    lines.extend(cal.notes)
    return "\n".join(lines) + "\n"
