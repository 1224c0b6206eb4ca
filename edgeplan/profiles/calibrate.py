"""Refit a cluster's per-unit figures from run reports: ``edgeplan calibrate``.

A run report gives, per stage replica, the module time of one call (the
board seconds a call costs back to back, ``board_module_s``: the mean wall
time, or CPU / quota under a CPU quota), the calls made (``runs``), the
worker's CPU seconds and bytes in/out. The cost model prices the same call as (profiles/cost.py)::

    module_s = sum over the stage's layers of  k * max(flops / thr[class], bytes / bw)
                                             + layer_overhead + param_bytes / bw
    hop_s    = hop_overhead + hop_byte * bytes received + hop_send_byte * bytes sent
               (cost.hop_byte_s: hop_byte_ns, else 2 copies; cost.hop_send_byte_s: hop_send_byte_ns, else hop_byte)

With ``k`` the replica's samples. Splitting each layer's term by what bounds it
gives, per call ``i``, columns that are linear in the unknowns:
``C[i, c]`` (compute-bound seconds of op class ``c``), ``M[i]`` (memory-bound
seconds: streaming layers and weight reads) and ``N[i]`` (layers). The fit
finds time factors ``a_c`` (new ``thr[c] = thr[c] / a_c``), ``a_m`` (new
``bw = bw / a_m``) and the per-layer overhead ``b`` minimising the relative
error ``sum_i ((C a + M a_m + N b - t_i) / t_i)^2`` within bounds, per board and
unit. Three designs, the richest the data separate (full column rank, more
calls than unknowns):

- ``per-class``: one factor per op class that carries >= 5% of the time, one
  for memory, plus the overhead (classes below 5% take the time-weighted mean
  of the fitted class factors);
- ``factor+overhead``: one factor for all layer time, plus the overhead;
- ``factor``: one factor for the whole module time (overhead scaled with it).

A unit's factor may not make any op class faster than the unit's peak FLOP/s:
such a fit is clamped to the peak and says so. The hop cost (board seconds per call
beyond the module: CPU per call - module time per call) is fitted per unit by least
squares over its replicas (``fit_hop``): per call, per byte received and per byte sent
when their mixes of bytes in and out differ (``MIN_DIRECTION_POINTS`` replicas whose
columns are conditioned within ``DIRECTION_COND``); else per call and one factor on the
unit's per-byte price when their bytes per call differ enough (``MIN_HOP_POINTS``
replicas, the largest ``MIN_BYTE_SPREAD`` x the smallest: several plans or models), so
a file's ratio of sending to receiving is kept; each within ``[0, MAX_HOP_S]`` /
``[0, MAX_HOP_BYTE_S]`` (a clamp says so); otherwise only the per-call part, as the
median of (hop - the unit's per-byte price of the call's bytes in and out), and a note
says why, unless the unit's twins (boards of the same profile and figures: one run
gives each a different cut) separate it together: their slope, its own per call.
A replica's
optional ``compute_cpu_s`` (CPU spent inside module calls: the calling thread's
when the module runs on it, ``compute_cpu_clock: thread``, else all threads') replaces
the module's wall time there (a multi-threaded module uses more CPU than wall
time); its optional ``cpu_startup_s`` (worker CPU before its first call) is left out and
its optional ``cpu_quota_cores`` (a CPU quota, e.g. the emulated testbed's)
turns CPU seconds into the board's seconds; without them the start-up CPU is
spread over the calls (more requests give a truer figure) and one core is assumed.

Link bandwidths come from each replica's optional ``links`` (the worker
Monitor's passive per-peer send throughput): the median per device pair, down
to 10x below the cluster file, written as ``network.links`` entries. A rate
above the file's is not used: a send that fits in the socket buffers returns
after a memory copy, so a fast send times the copy, not the link. An off-board
head's link (the cluster's ``head:`` host: no board sends on it) comes from the
first stage's receive-side figures (``rx_links``: how fast its large inputs
arrived), one median for the link to every board, written as
``head.bandwidth_mbps``, from input frames long enough to time the link
(``MIN_HEAD_RX_S`` at the file's bandwidth; shorter ones time the reader's
scheduling, and the file's figure stays with a note that says so).

A board no report ran takes a fitted board's figures when both have the same
profile and the same figures, or figures that are one scale of them (every
throughput and the memory bandwidth x r, the per-layer and per-call costs / r:
the emulated testbed's boards, one CPU under different quotas); each figure
changes by the factor the fit found, as an estimate that names its source. A
scaled twin takes only what makes it slower: it is another board whose file is
one scale of the fitted one's, so the transfer is a guess, and a re-plan must
not move onto a board no run timed because a guess made it look faster (a figure
the fit would make faster stays the file's, and the note says which). Identical
boards are one board model, and take the fit either way.

Reports are checked against the plan (model, stages, replicas, plan sha256 when
the report carries one) and the plan against the cluster (cluster sha256): a
report from another plan or cluster is refused with both hashes. Replicas with
fewer than ``MIN_RUNS`` calls are not used; when no unit has any, the fit is
refused. Pure numpy: the graph comes in as a LayerGraph, traced by the caller.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from edgeplan import jsonio
from edgeplan.errors import ProfileError
from edgeplan.graph.model import LayerGraph
from edgeplan.graph.ops import OP_CLASSES
from edgeplan.profiles.cost import hop_byte_s, hop_send_byte_s
from edgeplan.profiles.load import load_cluster
from edgeplan.profiles.merge import BOARDS_DIR
from edgeplan.profiles.model import Cluster, ComputeUnit, HeadHost

MIN_RUNS = 20  # calls a replica must have made for its median to be used
MIN_SHARE = 0.05  # an op class gets its own factor only when it carries this share of the measured time
MAX_FACTOR = 1000.0  # a unit may be fitted at most this much slower than its profile says
MIN_BW_FACTOR = 0.1  # ... and its memory at most 10x faster than the profile's bandwidth
MAX_OVERHEAD_S = 0.05  # per-layer overhead bound
MAX_HOP_S = 0.5  # per-call runtime cost bound
MAX_HOP_BYTE_S = 1e-6  # per-byte runtime cost bound (1 MB/s of runtime CPU: slower than any board's socket path)
MIN_HOP_POINTS = 3  # replicas a per-byte hop fit needs (more than its two unknowns)
MIN_BYTE_SPREAD = 1.5  # ... whose largest bytes per call is at least this times the smallest
MIN_DIRECTION_POINTS = 4  # replicas a per-direction fit (per call, per byte in, per byte out) needs
DIRECTION_COND = 30.0  # ... whose [1, in, out] columns (each scaled to unit length) are conditioned at most this
COND_LIMIT = 1e6  # a design whose (weighted) columns are worse conditioned than this does not separate them


class CalibrationError(ProfileError):
    """A run report cannot be used to calibrate (another plan or cluster, too few samples)."""


@dataclass(frozen=True)
class Observation:
    """One stage replica of one run: what it ran and what it measured (per call)."""

    source: str  # report file
    stage: int
    device: str
    unit: str
    start: int
    stop: int
    samples: int
    runs: int
    module_s: float  # median module time per call
    cpu_per_call_s: float | None  # worker CPU seconds per call / its CPU quota (None: not in the report)
    bytes_per_call: float | None  # bytes received + sent per call
    hop_s: float | None = None  # the runtime's board seconds per call beyond the module (None: no CPU figure)
    bytes_in_per_call: float | None = None  # of which received (None: not split in the report)
    bytes_out_per_call: float | None = None  # ... and sent


@dataclass(frozen=True)
class Terms:
    """A call's cost-model columns at a unit's current figures (module docstring)."""

    compute: tuple[tuple[str, float], ...]  # (op class, compute-bound seconds)
    memory_s: float
    layers: int
    overhead_s: float  # layers x the unit's layer_overhead

    @property
    def total_s(self) -> float:
        return sum(v for _, v in self.compute) + self.memory_s + self.overhead_s


@dataclass(frozen=True)
class UnitFit:
    """The fitted figures of one board's unit and how they were found."""

    device: str
    unit: str
    design: str  # per-class | factor+overhead | factor
    calls: int  # observations used
    before: ComputeUnit
    after: ComputeUnit
    notes: tuple[str, ...] = ()  # clamps, unfitted parts
    hop_fitted: bool = False  # the reports had CPU time and bytes per call
    inferred_from: str | None = None  # not run: figures taken from this fitted board of the same profile
    hop_byte_fitted: bool = False  # ... with bytes per call that differed enough to fit the per-byte part too
    hop_byte_pooled: str = ""  # the per-byte part came from the replicas of these boards together (same profile)
    hop_direction_fitted: bool = False  # ... per direction: bytes in and bytes out each their own figure


@dataclass(frozen=True)
class StageRow:
    """Predicted (before, after) vs measured for one observation: module time and hop time per call."""

    obs: Observation
    before_s: float
    after_s: float
    hop_measured_s: float | None
    hop_before_s: float | None
    hop_after_s: float | None


@dataclass(frozen=True)
class LinkFit:
    """A pair's bandwidth as the workers measured it sending (median over the reports' replicas)."""

    a: str
    b: str
    before: float  # bytes/s in the cluster file
    after: float
    sends: int  # replica measurements used
    note: str = ""


MAX_LINK_FACTOR = 10.0  # a measured link may be at most this factor slower than the cluster file


def link_fits(cluster: Cluster, runs: tuple) -> tuple[LinkFit, ...]:
    """Bandwidth per device pair from each replica's optional ``links`` (the worker Monitor's per-peer
    ``throughput_bytes_per_second``, timed on sends too large for the socket buffer): peers are
    ``device/stageK`` or ``head`` (the plan's head device); pairs on one device are skipped."""
    seen: dict[frozenset, list[float]] = {}
    host = cluster.head if isinstance(cluster.head, HeadHost) else None
    short: list[float] = []  # bytes per call of head input frames too short to time the link (MIN_HEAD_RX_S)
    for _source, plan, rep, graph in runs:
        for st in rep.get("stages", ()):
            for r in st.get("replicas", ()):
                for peer, ln in (r.get("links") or {}).items():
                    rate = (ln or {}).get("throughput_bytes_per_second")
                    other = plan.get("head") if peer == "head" else str(peer).split("/")[0]
                    if rate and rate > 0 and other and other != r.get("device"):
                        seen.setdefault(frozenset((r["device"], other)), []).append(float(rate))
                rx = _received_rate((r.get("rx_links") or {}).get("head"))
                if host and rx and plan.get("head") == host.name:  # the input arriving from the off-board head
                    frame = _head_frame_bytes(plan, st, r, graph)
                    if frame is not None and frame / host.bandwidth < MIN_HEAD_RX_S:
                        short.append(frame)
                    else:
                        seen.setdefault(frozenset((r["device"], host.name)), []).append(rx)
    out = []
    names = {d.name for d in cluster.devices}
    head_rates = [x for pair, rates in seen.items() if host and host.name in pair for x in rates]
    if head_rates:  # one link to every board: one figure, the median over the boards it fed
        seen = {k: v for k, v in seen.items() if host.name not in k}
        seen[frozenset((host.name, HEAD_LINK))] = head_rates
    elif short:  # timed, but every frame too short to time the link: the file's figure, and why
        frame = float(np.median(short))
        out.append(LinkFit(host.name, HEAD_LINK, host.bandwidth, host.bandwidth, 0, (
            f"link {host.name} <-> every board (head): the first stage's input frames ({frame / 1e3:.4g} KB per "
            f"call) take {frame / host.bandwidth * 1e3:.3g} ms at the file's {host.bandwidth * 8 / 1e6:.4g} Mbit/s, "
            f"under the {MIN_HEAD_RX_S * 1e3:g} ms a receive timing needs to time the link, not the reader's "
            "scheduling; kept")))
    for pair, rates in sorted(seen.items(), key=lambda kv: sorted(kv[0])):
        a, b = sorted(pair)
        if host and host.name in pair:
            a, b, before = host.name, HEAD_LINK, host.bandwidth
        elif a not in names or b not in names:
            continue
        else:
            before = cluster.link(a, b).bandwidth
        got = float(np.median(rates))
        after = min(max(got, before / MAX_LINK_FACTOR), before)
        if got > before:  # a send that fits in the socket buffers returns after a copy (seen: 1.7 GB/s timed
            # on a 62 MB/s shaped link, and the clamp at 10x made the link 10x fast): not evidence of the link
            note = (f"link {a} <-> {b}: sends ran at {got * 8 / 1e6:.4g} Mbit/s, faster than the file's "
                    f"{before * 8 / 1e6:.4g}: they fit in the socket buffers and time a copy, not the link; kept")
        else:
            note = "" if after == got else (f"link {a} <-> {b}: measured {got * 8 / 1e6:.4g} Mbit/s is more than "
                                            f"{MAX_LINK_FACTOR:g}x below the file's {before * 8 / 1e6:.4g}; clamped")
        out.append(LinkFit(a, b, before, after, len(rates), note))
    return tuple(out)


HEAD_LINK = "*"  # LinkFit.b of the off-board head's link (cluster ``head:``): one link to every board


def _received_rate(rx: dict | None) -> float | None:
    """Bytes/s of the large frames a replica received from one sender (its Monitor's ``rx_links`` entry,
    wire.Reader.timed): the head's input link, which no board sends on. Frames that had arrived whole before
    the reader asked are not timed (the link kept up with the reader), so they do not count."""
    n, t = (rx or {}).get("rx_timed_bytes_total"), (rx or {}).get("rx_timed_seconds_total")
    return float(n) / float(t) if n and t and t > 0 else None


# A head input frame is timed for the head link only when it takes at least this long at the file's bandwidth.
# The receive timing runs from the reader's first recv to the frame's last byte, so it also holds every wait of
# the reader for the CPU: under a CPU quota (the testbed's: a 20 ms CFS period, a 0.5-core board throttled for
# up to 10 ms of each) a frame that arrives inside one period is timed at the scheduler's pace (resnet32-cifar,
# 98 KB frames, 4.4 ms at 180 Mbit/s: fitted 2.1x slow), while one spanning several periods carries at most
# one throttle at its end (wide_stem, 1.5 MiB, 70 ms: fitted within 10%). Two periods bound that error to
# half a period's throttle per frame (<= 25% at 0.5 cores, less for longer frames); without a quota a short
# frame times a wake-up and the clock, as wire.MIN_TIMED_RECV_BYTES says of smaller ones. A link much slower
# than its file on short frames stays unfitted: calibrate then from a model with larger inputs.
MIN_HEAD_RX_S = 0.040


def _head_frame_bytes(plan: dict, stage: dict, replica: dict, graph: LayerGraph | None) -> float | None:
    """Bytes of one call's input from the head to a first-stage ``replica``: the graph's tensors entering the
    stage (``cut_bytes`` at its start, per sample) x the replica's samples; else the bytes it received per
    call; None when neither is known."""
    ps = next((s for s in plan.get("stages", ()) if s.get("index") == stage.get("index")), None)
    samples = replica.get("samples") or next((p.get("samples") for p in (ps or {}).get("replicas", ())
                                               if p.get("device") == replica.get("device")), None)
    if graph is not None and ps is not None and samples and len(graph.cut_bytes) > int(ps.get("start", 0)):
        return graph.cut_bytes[int(ps.get("start", 0))] / max(1, graph.batch) * int(samples)
    runs, b_in = replica.get("runs"), replica.get("bytes_in")
    return float(b_in) / runs if runs and b_in is not None else None


@dataclass(frozen=True)
class Calibration:
    fits: tuple[UnitFit, ...]
    rows: tuple[StageRow, ...]
    notes: tuple[str, ...]  # replicas left out and why
    cluster: Cluster  # the calibrated cluster
    runs: tuple = ()  # (report file, plan dict, report dict, LayerGraph) per report fitted from
    before: Cluster | None = None  # the cluster as it was
    links: tuple[LinkFit, ...] = ()  # link bandwidths from the monitor's passive send measurements

    def mape(self, which: str) -> float:
        """Mean absolute percentage error of the module-time predictions, ``before`` or ``after``."""
        errs = [abs(getattr(r, f"{which}_s") - r.obs.module_s) / r.obs.module_s for r in self.rows]
        return 100.0 * float(np.mean(errs)) if errs else float("nan")


# --- reading reports ---------------------------------------------------------------------------


def plan_digest(plan: dict) -> str:
    """sha256 of a plan as written (the same as Plan.digest(), computed on the plain dict)."""
    return jsonio.sha256_of(plan)


def check_plan_cluster(plan: dict, cluster: Cluster, plan_source: str, cluster_source: str) -> None:
    """Refuse a plan made on another cluster (its recorded cluster sha256 differs)."""
    want, have = plan.get("cluster_sha256", ""), cluster.digest()
    if want and want != have:
        raise CalibrationError(
            f"{plan_source}: plan was made on cluster sha256 {want[:12]}, but {cluster_source} is {have[:12]}; "
            "give the cluster file the plan was made with (--cluster)")


def observations(plan: dict, report: dict, source: str) -> tuple[list[Observation], list[str]]:
    """The report's usable stage replicas, and one line per replica left out.

    Raises CalibrationError when the report is not a run of ``plan``.
    """
    want = report.get("plan_sha256")
    if want is not None and want != plan_digest(plan):
        raise CalibrationError(f"{source}: report is a run of plan sha256 {str(want)[:12]}, not of the given plan "
                               f"({plan_digest(plan)[:12]}); give the plan that was run (--plan)")
    if report.get("model") != plan.get("model"):
        raise CalibrationError(f"{source}: report is a run of model {report.get('model')!r}, the plan is of "
                               f"{plan.get('model')!r}; give the plan that was run (--plan)")
    stages = {s["index"]: s for s in plan.get("stages", ())}
    got = report.get("stages")
    if not isinstance(got, list) or len(got) != len(stages):
        raise CalibrationError(f"{source}: report has {len(got) if isinstance(got, list) else 'no'} stages, the "
                               f"plan {len(stages)}; give the plan that was run (--plan)")
    out, skipped = [], []
    for st in got:
        ps = stages.get(st.get("index"))
        layers = f"{ps['first_layer']}..{ps['last_layer']}" if ps else None
        if ps is None or st.get("layers") != layers:
            raise CalibrationError(f"{source}: stage {st.get('index')} ran layers {st.get('layers')!r}, the plan's "
                                   f"are {layers!r}; give the plan that was run (--plan)")
        units = {r["device"]: r for r in ps["replicas"]}
        for r in st.get("replicas", ()):
            pr = units.get(r.get("device"))
            if pr is None:
                raise CalibrationError(f"{source}: stage {st['index']} ran on {r.get('device')!r}, which the plan "
                                       f"does not use there; give the plan that was run (--plan)")
            where = f"{source}: stage {st['index']} on {pr['device']}:{pr['unit']}"
            runs, t = r.get("runs") or 0, r.get("measured_compute_s")
            if t is None or t <= 0 or runs < MIN_RUNS:
                skipped.append(f"{where}: {runs} call(s) measured, fewer than {MIN_RUNS}; not used "
                               "(run more requests)")
                continue
            cpu, b_in, b_out = r.get("cpu_s"), r.get("bytes_in"), r.get("bytes_out")
            hop = None
            module_s = board_module_s(r)
            if cpu is not None:  # board time per call: CPU past start-up, on the cores the board may use
                quota = float(r.get("cpu_quota_cores") or 1.0)
                cpu = (float(cpu) - float(r.get("cpu_startup_s") or 0.0)) / quota
                module_cpu = r.get("compute_cpu_s")  # CPU of the module calls (worker.module_cpu_clock), when reported
                hop = ((cpu - float(module_cpu) / quota) / runs if module_cpu is not None
                       else cpu / runs - module_s)
            out.append(Observation(
                source=source, stage=int(st["index"]), device=pr["device"], unit=pr["unit"],
                start=int(ps["start"]), stop=int(ps["stop"]), samples=int(pr["samples"]), runs=int(runs),
                module_s=module_s,
                cpu_per_call_s=float(cpu) / runs if cpu is not None else None,
                bytes_per_call=(float(b_in) + float(b_out)) / runs if b_in is not None and b_out is not None
                else None, hop_s=hop,
                bytes_in_per_call=float(b_in) / runs if b_in is not None else None,
                bytes_out_per_call=float(b_out) / runs if b_out is not None else None))
    return out, skipped


def board_module_s(replica: dict) -> float | None:
    """The board seconds one module call of a report replica costs when the stage is kept busy: what the
    cost model's module time prices and what bounds a pipeline's throughput.

    The mean wall time per call, except under a CPU quota (``cpu_quota_cores``, the emulated testbed's):
    a short call runs at full core speed on what is left of the quota, so its wall time is the burst
    speed; back to back, calls cost their CPU / quota (a 0.3-core board: 1 ms of CPU every 3.3 ms).

    - A quota of at most one core binds every call, whatever its threads: the figure is CPU / quota. A
      mean wall time above it is time the call waited on the board's other work (the runtime's receive
      and send threads spending the same quota and holding the GIL), which the hop term prices already
      (seen: vit-tiny on a 0.15-core board, wall 29.4 ms, CPU / quota 27.0 ms, hop 3.7 ms: taking the
      wall priced each call 2.4 ms above the board's 30.6 ms of CPU / quota per call).
    - Above one core the figure is the larger of the two: a call with fewer threads than the quota's
      cores cannot use all of it, so CPU / quota falls below its wall time, which stays.

    None when the replica has no module time.
    """
    t = replica.get("measured_mean_compute_s") or replica.get("measured_compute_s")
    if t is None:
        return None
    quota, cpu, runs = replica.get("cpu_quota_cores"), replica.get("compute_cpu_s"), replica.get("runs")
    if quota and cpu is not None and runs:
        per_call = float(cpu) / float(quota) / int(runs)
        return per_call if float(quota) <= 1.0 else max(float(t), per_call)
    return float(t)


# --- the cost model's columns ------------------------------------------------------------------


class _Layers:
    """Per-sample layer figures of a graph, in the cost model's units (profiles/cost.py)."""

    def __init__(self, graph: LayerGraph):
        batch = max(1, graph.batch)
        sizes = {t.name: t.nbytes for t in graph.inputs}
        sizes.update({layer.name: layer.out_bytes for layer in graph.layers})
        self.flops = np.array([la.flops_fwd for la in graph.layers], dtype=np.float64) / batch
        self.bytes = np.array([sum(sizes.get(n, 0) for n in dict.fromkeys(la.inputs)) + la.out_bytes
                               for la in graph.layers], dtype=np.float64) / batch
        self.params = np.array([la.param_bytes for la in graph.layers], dtype=np.float64)
        self.classes = np.array([la.op_class for la in graph.layers])

    def terms(self, unit: ComputeUnit, start: int, stop: int, k: int) -> Terms:
        sl = slice(start, stop)
        thr = np.array([unit.flops_per_s(c) for c in self.classes[sl]])
        comp = self.flops[sl] / thr
        mem = self.bytes[sl] / unit.mem_bandwidth
        bound = comp >= mem
        by_class = {c: float(k * comp[bound & (self.classes[sl] == c)].sum()) for c in OP_CLASSES}
        memory = float(k * mem[~bound].sum() + self.params[sl].sum() / unit.mem_bandwidth)
        n = stop - start
        return Terms(tuple(by_class.items()), memory, n, n * unit.layer_overhead_s)

    def module_s(self, unit: ComputeUnit, start: int, stop: int, k: int) -> float:
        """The cost model's module time of one call (equals k * fwd_s.sum() + fixed_s.sum() of cost.py)."""
        return self.terms(unit, start, stop, k).total_s


# --- the fit ---------------------------------------------------------------------------------


def bounded_lstsq(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """min ||a x - b|| with lo <= x <= hi; returns x and which bounds are active.

    Active set: solve on the free variables, fix the worst violator at its bound, repeat; a fixed
    variable is released when the gradient pulls it back inside. Small problems (a few unknowns).
    """
    n = a.shape[1]
    fixed = np.zeros(n, dtype=bool)
    x = np.clip(np.zeros(n), lo, hi)
    for _ in range(4 * n + 4):
        free = ~fixed
        rhs = b - a[:, fixed] @ x[fixed]
        if free.any():
            x[free] = np.linalg.lstsq(a[:, free], rhs, rcond=None)[0]
        viol = np.maximum(lo - x, 0) + np.maximum(x - hi, 0)
        viol[fixed] = 0
        if viol.max(initial=0.0) > 0:
            j = int(np.argmax(viol))
            x[j] = lo[j] if x[j] < lo[j] else hi[j]
            fixed[j] = True
            continue
        grad = a.T @ (a @ x - b)  # release a bound whose gradient points inside
        release = [j for j in np.flatnonzero(fixed)
                   if (x[j] == lo[j] and grad[j] < 0) or (x[j] == hi[j] and grad[j] > 0)]
        if not release:
            break
        fixed[release[0]] = False
    return x, fixed


def _separates(a: np.ndarray) -> bool:
    if a.shape[0] <= a.shape[1]:
        return False
    norms = np.linalg.norm(a, axis=0)
    if (norms == 0).any():
        return False
    return bool(np.linalg.cond(a / norms) < COND_LIMIT)


def _scaled(unit: ComputeUnit, class_factor: dict[str, float], mem_factor: float, overhead_s: float) -> ComputeUnit:
    return dataclasses.replace(
        unit, throughput=tuple((c, f / class_factor.get(c, 1.0)) for c, f in unit.throughput),
        mem_bandwidth=unit.mem_bandwidth / mem_factor, layer_overhead_s=overhead_s)


def _fit_module(unit: ComputeUnit, obs: list[Observation], layers: _Layers, where: str
                ) -> tuple[ComputeUnit, str, list[str]]:
    """Fit the module-time figures of one unit (module docstring), iterating so the roofline split
    follows the new figures."""
    t = np.array([o.module_s for o in obs])
    w = 1.0 / t  # relative error
    peak = unit.peak_flops or np.inf
    notes: list[str] = []
    current = unit
    design = "factor"
    for iteration in range(3):
        # factor (relative to the current figures) below which a class would run faster than the peak
        floor = {c: (f / peak if np.isfinite(peak) else 0.0) for c, f in current.throughput}
        terms = [layers.terms(current, o.start, o.stop, o.samples) for o in obs]
        comp = np.array([[dict(tm.compute)[c] for c in OP_CLASSES] for tm in terms])
        mem = np.array([tm.memory_s for tm in terms])
        nl = np.array([tm.layers for tm in terms], dtype=np.float64)
        share = comp.sum(axis=0) / max(float(t.sum()), 1e-12)
        big = [i for i, c in enumerate(OP_CLASSES) if share[i] >= MIN_SHARE]
        cols = [comp[:, i] for i in big] + [mem, nl]
        a_full = np.stack(cols, axis=1) * w[:, None]
        a_two = np.stack([comp.sum(axis=1) + mem, nl], axis=1) * w[:, None]
        if big and _separates(a_full):
            design = "per-class"
            bw_lo = MIN_BW_FACTOR * current.mem_bandwidth / unit.mem_bandwidth  # bounds stay relative to the profile
            lo = np.array([max(floor[OP_CLASSES[i]], 1.0 / MAX_FACTOR) for i in big] + [bw_lo, 0.0])
            hi = np.array([MAX_FACTOR] * len(big) + [MAX_FACTOR, MAX_OVERHEAD_S])
            x, active = bounded_lstsq(a_full, t * w, lo, hi)
            cf = {OP_CLASSES[i]: float(x[k]) for k, i in enumerate(big)}
            rest = float(np.average(x[:len(big)], weights=share[big]))  # minor classes: the time-weighted mean
            for c in OP_CLASSES:
                cf.setdefault(c, max(rest, floor[c]))
            mf, ov = float(x[len(big)]), float(x[-1])
            clamped = [OP_CLASSES[i] for k, i in enumerate(big) if active[k] and x[k] == lo[k] == floor[OP_CLASSES[i]]]
        else:
            with_overhead = _separates(a_two)
            design = "factor+overhead" if with_overhead else "factor"
            f, ov = _fit_one_factor(comp, mem, nl, t, floor, current.layer_overhead_s, with_overhead)
            if iteration:  # a uniform factor keeps the roofline split: one pass (a second would compound bounds)
                break
            cf = {c: max(f, floor[c]) for c in OP_CLASSES}
            mf = max(f, MIN_BW_FACTOR)
            clamped = [c for c in OP_CLASSES if floor[c] > f and share[OP_CLASSES.index(c)] > 0]
        new = _scaled(current, cf, mf, min(max(ov, 0.0), MAX_OVERHEAD_S))
        if np.isfinite(peak):  # a floor can only be approximate after the roofline split moved
            new = dataclasses.replace(new, throughput=tuple((c, min(f, peak)) for c, f in new.throughput))
        if clamped:
            notes = [f"{where}: the fit would run {', '.join(clamped)} faster than the unit's peak "
                     f"{peak / 1e9:g} GFLOP/s; clamped to the peak"]
        if all(abs(v - 1.0) < 1e-6 for v in cf.values()) and abs(mf - 1.0) < 1e-6:
            current = new
            break
        current = new
    return current, design, notes


def _fit_one_factor(comp: np.ndarray, mem: np.ndarray, nl: np.ndarray, t: np.ndarray, floor: dict[str, float],
                    overhead_s: float, with_overhead: bool) -> tuple[float, float]:
    """One time factor ``f`` for all layer time, each class capped at its peak (its factor never below
    ``floor[c]``), plus the per-layer overhead (fitted when ``with_overhead``, else scaled by ``f``).

    The capped prediction is piecewise linear in ``f``, so ``f`` is found by a log-spaced search refined
    around the best point; the overhead for a given ``f`` is a bounded 1-D least squares.
    """
    w = 1.0 / t
    fl = np.array([floor[c] for c in OP_CLASSES])

    def solve(f: float) -> tuple[float, float]:
        layer = comp @ np.maximum(f, fl) + mem * max(f, MIN_BW_FACTOR)
        if with_overhead:
            denom = float(np.sum((nl * w) ** 2))
            ov = float(np.clip(np.sum((t - layer) * nl * w * w) / denom, 0.0, MAX_OVERHEAD_S)) if denom else 0.0
        else:
            ov = min(overhead_s * f, MAX_OVERHEAD_S)
        return float(np.sum(((layer + nl * ov - t) * w) ** 2)), ov

    # sane lower bound: no faster than the point where every class runs at the peak (or 1/MAX_FACTOR)
    grid = np.geomspace(max(float(fl.min()), 1.0 / MAX_FACTOR), MAX_FACTOR, 241)
    errs = [solve(f)[0] for f in grid]
    k = int(np.argmin(errs))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    for _ in range(60):  # golden-section on log f inside the bracket
        a, b = np.exp(np.log(lo) + 0.382 * np.log(hi / lo)), np.exp(np.log(lo) + 0.618 * np.log(hi / lo))
        if solve(a)[0] <= solve(b)[0]:
            hi = b
        else:
            lo = a
    f = float(np.sqrt(lo * hi))
    return f, solve(f)[1]


def byte_cost_s(unit: ComputeUnit, o: Observation) -> float:
    """The unit's per-byte hop seconds for one call of ``o``: each byte received at ``hop_byte_s``, each byte
    sent at ``hop_send_byte_s`` (both at the first when the report does not split them)."""
    if o.bytes_in_per_call is None or o.bytes_out_per_call is None:
        return hop_byte_s(unit) * float(o.bytes_per_call or 0.0)
    return hop_byte_s(unit) * o.bytes_in_per_call + hop_send_byte_s(unit) * o.bytes_out_per_call


@dataclass(frozen=True)
class HopFit:
    """A unit's fitted hop: per call, and per byte received / sent when the replicas separate them."""

    per_call_s: float
    byte_in_s: float | None = None  # None: the unit's per-byte figures kept
    byte_out_s: float | None = None  # None with byte_in_s set: one figure prices both directions
    notes: tuple[str, ...] = ()
    per_direction: bool = False  # bytes in and out separated by the replicas (else the file's ratio kept)

    @property
    def byte_fitted(self) -> bool:
        return self.byte_in_s is not None


def fit_hop(unit: ComputeUnit, obs: list[Observation], where: str) -> HopFit | None:
    """The runtime's hop on one unit (module docstring); None when no replica has CPU time and bytes per call.

    The richest the replicas separate: per call, per byte received and per byte sent (replicas whose mix of
    bytes in and out differs: each direction its own figure, as a veth's sender pays for the receiver's
    protocol work); else per call and one factor on the unit's per-byte pricing (bytes per call differ:
    the file's in/out ratio kept); else per call alone, the per-byte figures kept, with a note."""
    pts = [o for o in obs if o.hop_s is not None and o.bytes_per_call is not None]
    if not pts:
        return None
    hop = np.array([o.hop_s for o in pts], dtype=np.float64)
    priced = np.array([byte_cost_s(unit, o) for o in pts], dtype=np.float64)  # at the file's per-byte figures
    nbytes = np.array([o.bytes_per_call for o in pts], dtype=np.float64)
    split = [o for o in pts if o.bytes_in_per_call is not None and o.bytes_out_per_call is not None]
    if len(split) == len(pts) and len(pts) >= MIN_DIRECTION_POINTS:
        a = np.array([[1.0, o.bytes_in_per_call / 1e6, o.bytes_out_per_call / 1e6] for o in pts])
        norms = np.linalg.norm(a, axis=0)
        if (norms > 0).all() and np.linalg.cond(a / norms) <= DIRECTION_COND:
            x, active = bounded_lstsq(a, hop, np.zeros(3), np.array([MAX_HOP_S] + [MAX_HOP_BYTE_S * 1e6] * 2))
            notes = []
            if active.any():
                notes.append(f"{where}: the per-direction hop fit hit a bound ({x[0] * 1e3:.3g} ms per call, "
                             f"{x[1] * 1e3:.3g} ns/B in, {x[2] * 1e3:.3g} ns/B out; each within [0, "
                             f"{MAX_HOP_S * 1e3:g} ms] / [0, {MAX_HOP_BYTE_S * 1e9:g} ns/B]): noisy CPU figures, "
                             "run more requests")
            return HopFit(float(x[0]), float(x[1]) / 1e6, float(x[2]) / 1e6, tuple(notes), per_direction=True)
    if len(pts) >= MIN_HOP_POINTS and nbytes.max() >= MIN_BYTE_SPREAD * max(float(nbytes.min()), 1.0) \
            and priced.max() > 0:
        scale = float(priced.max())  # columns of like size for the solver: seconds per call, x the file's price
        x, active = bounded_lstsq(np.stack([np.ones_like(priced), priced / scale], axis=1), hop, np.zeros(2),
                                  np.array([MAX_HOP_S, scale * MAX_HOP_BYTE_S / max(hop_byte_s(unit),
                                                                                   hop_send_byte_s(unit))]))
        per_call, factor = float(x[0]), float(x[1]) / scale
        notes = []
        if active[1]:
            free = np.polyfit(priced, hop, 1)[0] * hop_byte_s(unit)  # per byte received, unbounded
            notes.append(f"{where}: the per-byte hop fit reads {free * 1e9:.3g} ns/B, outside [0, "
                         f"{MAX_HOP_BYTE_S * 1e9:g}]; clamped to {factor * hop_byte_s(unit) * 1e9:g} (noisy CPU "
                         "figures: run more requests)")
        if active[0]:
            notes.append(f"{where}: the per-call hop fit is outside [0, {MAX_HOP_S * 1e3:g} ms]; clamped to "
                         f"{per_call * 1e3:g} ms")
        out = factor * hop_send_byte_s(unit) if unit.hop_send_byte_s is not None else None
        return HopFit(per_call, factor * hop_byte_s(unit), out, tuple(notes))
    rate = (f"{hop_byte_s(unit) * 1e9:.3g} ns/B" if unit.hop_send_byte_s is None else
            f"{hop_byte_s(unit) * 1e9:.3g} ns/B in, {hop_send_byte_s(unit) * 1e9:.3g} out")
    note = (f"{where}: per-byte hop not fitted ({len(pts)} replica(s), {nbytes.min():.4g}-{nbytes.max():.4g} bytes "
            f"per call; it needs {MIN_HOP_POINTS}+ whose largest is {MIN_BYTE_SPREAD:g}x the smallest: calibrate "
            f"from runs of several plans or models); per call fitted at {rate} kept")
    raw = float(np.median(hop - priced))
    notes = (note,) if raw >= 0 else (note, (
        f"{where}: the per-byte figures alone price {float(np.median(priced)) * 1e3:.3g} ms of a hop measured at "
        f"{float(np.median(hop)) * 1e3:.3g} ms per call; per call clamped to 0 (they price this board's bytes too "
        "high: calibrate from runs whose bytes per call differ to fit them)"))
    return HopFit(float(min(max(raw, 0.0), MAX_HOP_S)), notes=notes)


def _hop_measured(o: Observation) -> float | None:
    return None if o.hop_s is None else max(o.hop_s, 0.0)


def _hop_pred(unit: ComputeUnit, o: Observation) -> float | None:
    if o.bytes_per_call is None:
        return None
    return unit.hop_overhead_s + byte_cost_s(unit, o)


def fit(cluster: Cluster, runs: list[tuple[dict, LayerGraph, list[Observation]]], skipped: list[str] = ()
        ) -> Calibration:
    """Fit every (board, unit) the observations cover; ``runs``: (plan, its graph, its observations)."""
    by_unit: dict[tuple[str, str], list[tuple[Observation, _Layers]]] = {}
    for _plan, graph, obs in runs:
        layers = _Layers(graph)
        for o in obs:
            by_unit.setdefault((o.device, o.unit), []).append((o, layers))
    if not by_unit:
        raise CalibrationError("no stage replica in the report(s) made enough calls to fit (" + "; ".join(skipped)
                               + f"); run at least {MIN_RUNS} requests")
    fits, rows = [], []
    devices = {d.name: d for d in cluster.devices}
    pooled = _pooled_hop_byte(cluster, by_unit)
    for (dev, uname), items in sorted(by_unit.items()):
        if dev not in devices:
            raise CalibrationError(f"report ran on board {dev!r}, which cluster {cluster.name!r} does not have")
        before = devices[dev].unit(uname)
        where = f"{dev}:{uname}"
        obs = [o for o, _ in items]
        after, design, notes = _fit_multi(before, items, where)
        hf = fit_hop(after, obs, where)
        pool = pooled.get((dev, uname)) if hf is not None and not hf.byte_fitted else None
        if pool is not None:  # this board's bytes did not vary, its twins' did: their slope, its own per call
            shared, boards = pool
            priced = _with_bytes(after, shared)
            pts = [o.hop_s - byte_cost_s(priced, o) for o in obs
                   if o.hop_s is not None and o.bytes_per_call is not None]
            hf = dataclasses.replace(shared, per_call_s=float(min(max(np.median(pts), 0.0), MAX_HOP_S)), notes=(
                f"{where}: per-byte hop fitted over the replicas of {boards} (same profile and figures): "
                f"{_byte_rates(shared)}; per call from this board's own",))
        if hf is None:
            notes.append(f"{where}: the report(s) have no CPU time or bytes per call; hop_overhead_us kept")
        else:
            notes += hf.notes
            after = dataclasses.replace(_with_bytes(after, hf), hop_overhead_s=hf.per_call_s)
        fits.append(UnitFit(dev, uname, design, len(obs), before, after, tuple(notes), hf is not None,
                            hop_byte_fitted=hf is not None and hf.byte_fitted, hop_byte_pooled=pool[1] if pool else "",
                            hop_direction_fitted=hf is not None and hf.per_direction))
        for o, la in items:
            rows.append(StageRow(
                o, la.module_s(before, o.start, o.stop, o.samples), la.module_s(after, o.start, o.stop, o.samples),
                _hop_measured(o), _hop_pred(before, o), _hop_pred(after, o)))
    fits += _same_profile_peers(cluster, fits)
    new_devices = []
    fitted = {(f.device, f.unit): f.after for f in fits}
    for d in cluster.devices:
        units = tuple(fitted.get((d.name, u.name), u) for u in d.units)
        new_devices.append(dataclasses.replace(d, units=units))
    rows.sort(key=lambda r: (r.obs.source, r.obs.stage, r.obs.device))
    return Calibration(tuple(fits), tuple(rows), tuple(skipped), dataclasses.replace(cluster,
                                                                                      devices=tuple(new_devices)))


def _with_bytes(unit: ComputeUnit, hf: HopFit) -> ComputeUnit:
    """``unit`` with the per-byte figures ``hf`` fitted (unchanged where it fitted none)."""
    if not hf.byte_fitted:
        return unit
    return dataclasses.replace(unit, hop_byte_s=hf.byte_in_s, hop_send_byte_s=hf.byte_out_s)


def _byte_rates(hf: HopFit) -> str:
    return (f"{hf.byte_in_s * 1e9:.3g} ns/B" if hf.byte_out_s is None else
            f"{hf.byte_in_s * 1e9:.3g} ns/B in, {hf.byte_out_s * 1e9:.3g} ns/B out")


def _pooled_hop_byte(cluster: Cluster, by_unit: dict) -> dict[tuple[str, str], tuple[HopFit, str]]:
    """(board, unit) -> (the per-byte hop, the boards pooled) for units whose own replicas do not separate the
    per-byte part but whose twins' replicas (boards of the same profile with the same figures) do together:
    one run over several identical boards gives each a different cut, so bytes per call differ among them."""
    devices = {d.name: d for d in cluster.devices}
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for dev, uname in by_unit:
        if dev in devices:
            groups.setdefault((devices[dev].profile, devices[dev].unit(uname)), []).append((dev, uname))
    out = {}
    for (_profile, unit), members in groups.items():
        if len(members) < 2:
            continue
        shared = fit_hop(unit, [o for m in members for o, _ in by_unit[m]], "")
        if shared is None or not shared.byte_fitted:
            continue
        names = ", ".join(d for d, _ in sorted(members))
        for m in members:
            own = fit_hop(unit, [o for o, _ in by_unit[m]], "")
            if own is not None and not own.byte_fitted:
                out[m] = (shared, names)
    return out


TWIN_TOLERANCE = 0.02  # figures of two units within this of one scale are a scaled twin (rounding in a file)


def _twin_scale(fitted: ComputeUnit, u: ComputeUnit) -> float | None:
    """``r`` when ``u``'s figures are ``fitted``'s scaled as one board at ``r`` times its speed (every class's
    throughput and the memory bandwidth x r, the per-layer and per-call costs / r: the emulated testbed's
    boards, one CPU under different quotas), 1.0 when equal; else None."""
    if (u.kind, u.target, u.supported_ops) != (fitted.kind, fitted.target, fitted.supported_ops):
        return None
    a, b = dict(fitted.throughput), dict(u.throughput)
    if set(a) != set(b) or fitted.mem_bandwidth <= 0:
        return None
    r = u.mem_bandwidth / fitted.mem_bandwidth
    pairs = [(b[c], a[c] * r) for c in a] + [(u.layer_overhead_s * r, fitted.layer_overhead_s),
                                            (u.hop_overhead_s * r, fitted.hop_overhead_s)]
    for name in ("hop_byte_s", "hop_send_byte_s"):
        mine, theirs = getattr(u, name), getattr(fitted, name)
        if (mine is None) != (theirs is None):
            return None
        if mine is not None:
            pairs.append((mine * r, theirs))
    ok = all(abs(x - y) <= TWIN_TOLERANCE * max(abs(x), abs(y)) for x, y in pairs)
    return r if ok else None


def _rescaled(before: ComputeUnit, after: ComputeUnit, u: ComputeUnit, r: float) -> ComputeUnit:
    """``after``'s fitted figures moved onto ``u`` (``before`` scaled by ``r``): each figure changes by the
    factor the fit found; a throughput stays within ``u``'s peak (the clamp the fit itself applies)."""
    if r == 1.0:
        return after
    peak = u.peak_flops or np.inf
    thr_b, thr_a = dict(before.throughput), dict(after.throughput)
    return dataclasses.replace(
        u, throughput=tuple((c, min(f * thr_a[c] / thr_b[c], peak) if thr_b[c] else f) for c, f in u.throughput),
        mem_bandwidth=after.mem_bandwidth * r, layer_overhead_s=after.layer_overhead_s / r,
        hop_overhead_s=after.hop_overhead_s / r,
        hop_byte_s=None if after.hop_byte_s is None else after.hop_byte_s / r,
        hop_send_byte_s=None if after.hop_send_byte_s is None else after.hop_send_byte_s / r)


NOTE_REL = 1e-3
TRANSFER_RULE = "a transfer never makes an unseen board look faster: a re-plan must not move onto it on a guess"


def _no_faster(own: ComputeUnit, guess: ComputeUnit) -> tuple[ComputeUnit, tuple[str, ...]]:
    """``guess`` (a fitted board's figures moved onto ``own``'s board) where it makes the board slower, ``own``
    where it would make it faster, per figure: each class's throughput and the memory bandwidth the lower,
    the per-layer, per-call and per-byte costs the higher. Returns the unit and the figures kept (YAML names).

    A transfer is a guess: the fit saw one board, and what made it fast (its own hop path, a lighter load)
    need not hold on another. Slower is safe (the planner only avoids the board); faster is not: the vit-tiny
    re-plan on rpi4-jetson moved onto three rpi boards that had taken the jetson's per-call hop (0.62x the
    file's) for a 0.4% predicted gain and measured 34.9 samples/s against 112 (+222% throughput error)."""
    kept: list[str] = []  # named only past NOTE_REL: a file's rounding (twins within TWIN_TOLERANCE) is no finding
    g_thr = dict(guess.throughput)
    thr = []
    def same(mine: float, theirs: float) -> bool:  # within a file's rounding: the file's own figure stays
        return abs(theirs - mine) <= NOTE_REL * max(abs(mine), abs(theirs))

    for c, f in own.throughput:
        g = g_thr.get(c, f)
        thr.append((c, f if same(f, g) else min(f, g)))
        if g > f and not same(f, g):
            kept.append(f"throughput_gflops.{c}")

    def slower(name: str, mine: float, theirs: float, higher_is_slower: bool) -> float:
        if same(mine, theirs):
            return mine
        if (theirs < mine) if higher_is_slower else (theirs > mine):
            kept.append(name)
        return max(mine, theirs) if higher_is_slower else min(mine, theirs)

    bw = slower("mem_bandwidth_gbs", own.mem_bandwidth, guess.mem_bandwidth, False)
    layer = slower("layer_overhead_us", own.layer_overhead_s, guess.layer_overhead_s, True)
    hop = slower("hop_overhead_us", own.hop_overhead_s, guess.hop_overhead_s, True)
    per_byte = None  # both unset: HOP_COPIES copies at the (lower) bandwidth, never cheaper than own's
    if own.hop_byte_s is not None or guess.hop_byte_s is not None:
        per_byte = slower("hop_byte_ns", hop_byte_s(own), hop_byte_s(guess), True)
    per_sent = None  # both unset: the per-byte figure prices sends too
    if own.hop_send_byte_s is not None or guess.hop_send_byte_s is not None:
        per_sent = slower("hop_send_byte_ns", hop_send_byte_s(own), hop_send_byte_s(guess), True)
    classes = [f"throughput_gflops.{c}" for c, _ in own.throughput]
    if all(c in kept for c in classes):  # one name for all of them (a note per class reads as noise)
        kept = ["throughput_gflops.*"] + [k for k in kept if k not in classes]
    return dataclasses.replace(guess, throughput=tuple(thr), mem_bandwidth=bw, layer_overhead_s=layer,
                               hop_overhead_s=hop, hop_byte_s=per_byte, hop_send_byte_s=per_sent), tuple(kept)


def _same_profile_peers(cluster: Cluster, fits: list[UnitFit]) -> list[UnitFit]:
    """Units no report ran, on boards of the same profile with the same figures as a fitted one, or those figures
    scaled as one board at another speed (``_twin_scale``: the testbed's boards under different quotas): they take
    its fitted figures, scaled alike (the datasheet error is the board model's), as estimates that say where
    they came from; a scaled twin only where that makes it slower (``_no_faster``: a figure the fit would make
    faster stays the file's, and the note names it). Without the scaled twins a one-board run calibrated that board
    only, and a re-plan moved to an uncalibrated one (wide_stem on three-node-hetero: 12 ms predicted, 103 ms
    measured); with faster figures taken too, a re-plan moved onto boards the run never timed on a guess."""
    done = {(f.device, f.unit) for f in fits}
    out = []
    for d in cluster.devices:
        for u in d.units:
            if (d.name, u.name) in done:
                continue
            peers = [(f, r) for f in fits if f.inferred_from is None and f.unit == u.name
                     and cluster.device(f.device).profile == d.profile
                     and (r := (1.0 if f.before == u else _twin_scale(f.before, u))) is not None]
            if peers:
                best, r = max(peers, key=lambda fr: (fr[1] == 1.0, fr[0].calls, fr[0].device))
                how = f"same profile {d.profile!r} and figures" if r == 1.0 else (
                    f"same profile {d.profile!r}, figures x {r:.3g}")
                # Identical boards (r == 1) are one board model: its fit is the best evidence either way. A scaled
                # twin is another board whose file is only proportional: its error is a guess (``_no_faster``).
                after, kept = ((best.after, ()) if r == 1.0
                               else _no_faster(u, _rescaled(best.before, best.after, u, r)))
                notes = [f"{d.name}:{u.name}: not in the report(s); takes {best.device}:{u.name}'s fitted "
                         f"figures ({how}), still estimates"]
                if kept:
                    notes.append(f"{d.name}:{u.name}: keeps its file's {', '.join(kept)} (the fit on {best.device} "
                                 f"would make them faster): {TRANSFER_RULE}")
                out.append(UnitFit(d.name, u.name, best.design, 0, u, after, tuple(notes),
                                   best.hop_fitted, best.device, best.hop_byte_fitted,
                                   hop_direction_fitted=best.hop_direction_fitted))
    return out


def _fit_multi(unit: ComputeUnit, items: list[tuple[Observation, _Layers]], where: str):
    """Fit one unit on observations that may come from runs of several graphs (models, batch sizes):
    each observation indexes its own graph's slice of the tables laid end to end."""
    merged = _Combined([la for _, la in items])
    obs = [dataclasses.replace(o, start=merged.offset(i) + o.start, stop=merged.offset(i) + o.stop)
           for i, (o, _) in enumerate(items)]
    return _fit_module(unit, obs, merged, where)


class _Combined(_Layers):
    """Several graphs' layer tables end to end (observation ``i`` indexes into its own slice)."""

    def __init__(self, tables: list[_Layers]):  # no super().__init__: built from tables, not a graph
        self._offsets = np.cumsum([0] + [len(t.flops) for t in tables])
        self.flops = np.concatenate([t.flops for t in tables])
        self.bytes = np.concatenate([t.bytes for t in tables])
        self.params = np.concatenate([t.params for t in tables])
        self.classes = np.concatenate([t.classes for t in tables])

    def offset(self, i: int) -> int:
        return int(self._offsets[i])


# --- writing the calibrated cluster --------------------------------------------------------------


def _gflops(x: float) -> float:
    return float(f"{x / 1e9:.6g}")


def _unit_overrides(fit_: UnitFit, stamp: dict) -> dict:
    u = fit_.after
    peak = u.peak_flops / 1e9 if u.peak_flops else float("inf")
    thr = {c: min(_gflops(f), peak) for c, f in u.throughput}  # rounding must not pass the peak the file allows
    body = {
        "throughput_gflops": thr,
        "mem_bandwidth_gbs": float(f"{u.mem_bandwidth / 1e9:.6g}"),
        "layer_overhead_us": float(f"{u.layer_overhead_s * 1e6:.6g}"),
    }
    figures = [f"throughput_gflops.{c}" for c in thr] + ["mem_bandwidth_gbs", "layer_overhead_us"]
    if fit_.hop_fitted:
        body["hop_overhead_us"] = float(f"{u.hop_overhead_s * 1e6:.6g}")
        figures.append("hop_overhead_us")
    if fit_.hop_byte_fitted:
        body["hop_byte_ns"] = float(f"{u.hop_byte_s * 1e9:.6g}")
        figures.append("hop_byte_ns")
        if u.hop_send_byte_s is not None:  # fitted per direction, or the file's figure scaled with the other
            body["hop_send_byte_ns"] = float(f"{u.hop_send_byte_s * 1e9:.6g}")
            figures.append("hop_send_byte_ns")
    if fit_.inferred_from is not None:  # taken from a same-profile board: estimates, no `measured` provenance
        return body
    how = {f: dict(stamp, how=f"edgeplan calibrate: {fit_.design} least squares over {fit_.calls} stage call "
                              f"median(s)") for f in figures}
    if "hop_overhead_us" in how:
        how["hop_overhead_us"]["how"] = (
            f"edgeplan calibrate: least squares over {fit_.calls} replica(s) of worker CPU per call - module time "
            "= per call + per byte in x bytes in + per byte out x bytes out" if fit_.hop_direction_fitted
            and not fit_.hop_byte_pooled else
            f"edgeplan calibrate: least squares over {fit_.calls} replica(s) of worker CPU per call - module time "
            "= per call + factor x the file's per-byte price of the bytes in and out"
            if fit_.hop_byte_fitted and not fit_.hop_byte_pooled else
            f"edgeplan calibrate: median over {fit_.calls} replica(s) of worker CPU per call - module time - "
            "per-byte cost (start-up CPU included unless the report gives it)")
    for fig in ("hop_byte_ns", "hop_send_byte_ns"):
        if fig in how:
            how[fig]["how"] = how["hop_overhead_us"]["how"] if not fit_.hop_byte_pooled else (
                f"edgeplan calibrate: least squares over the replicas of boards {fit_.hop_byte_pooled} (same profile "
                "and figures) of worker CPU per call - module time = per call + per byte x bytes in and out")
    body["measured"] = how
    return body


def calibrated_doc(cluster_path: str | Path, calibration: Calibration, out_path: str | Path, *, sources: str,
                   backend: str, when: str | None = None) -> dict:
    """The cluster file ``cluster_path`` with every fitted unit's figures as device overrides (with provenance);
    profile paths are rewritten relative to ``out_path``."""
    cluster_path, out_path = Path(cluster_path), Path(out_path)
    doc = yaml.safe_load(cluster_path.read_text())
    when = when or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")
    stamp = {"when": when, "backend": backend, "from": sources}
    builtin = {p.stem for p in BOARDS_DIR.glob("*/*.yaml")}
    for dev in doc["devices"]:
        ref = dev["profile"]
        if ref not in builtin and not Path(ref).is_absolute():
            dev["profile"] = os.path.relpath((cluster_path.parent / ref).resolve(), out_path.parent.resolve())
        for f in calibration.fits:
            if f.device != dev["name"]:
                continue
            over = dev.setdefault("overrides", {}) or {}
            dev["overrides"] = over
            units = over.setdefault("units", {})
            units[f.unit] = {**(units.get(f.unit) or {}), **_unit_overrides(f, stamp)}
    if calibration.links:
        net = doc.setdefault("network", {})
        links = net.setdefault("links", []) or []
        net["links"] = links
        for lf in calibration.links:
            if lf.b == HEAD_LINK:  # the off-board head's link (`head:`); kept: the file's figure as written
                if lf.after != lf.before:
                    doc["head"]["bandwidth_mbps"] = float(f"{lf.after * 8 / 1e6:.6g}")
                continue
            entry = next((e for e in links if set(e.get("between", ())) == {lf.a, lf.b}), None)
            if entry is None:
                default = net.get("default") or {}
                entry = {"between": [lf.a, lf.b], "latency_ms": default.get("latency_ms", 0.0)}
                if "energy_nj_per_byte" in default:
                    entry["energy_nj_per_byte"] = default["energy_nj_per_byte"]
                links.append(entry)
            entry["bandwidth_mbps"] = float(f"{lf.after * 8 / 1e6:.6g}")
    return doc


def write_calibrated(cluster_path: str | Path, calibration: Calibration, out_path: str | Path, *, sources: str,
                     backend: str, when: str | None = None) -> Cluster:
    """Write the calibrated cluster file and return it as loaded back (so what was written is what plans)."""
    doc = calibrated_doc(cluster_path, calibration, out_path, sources=sources, backend=backend, when=when)
    return _write_doc(doc, out_path, f"# Written by `edgeplan calibrate` from {sources}: fitted figures are device "
                      "overrides with\n# their provenance under `measured`; everything else is as in "
                      f"{cluster_path}.\n")


def _write_doc(doc: dict, out_path: str | Path, header: str) -> Cluster:
    """Write a cluster ``doc`` under ``header`` (comment lines) atomically (a hidden .tmp beside it, then
    replace: a reader never sees half a file) and return it as loaded back (what was written is what plans)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(out_path)
    return load_cluster(out_path)


# --- the printed fit ---------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def _err(pred: float | None, meas: float | None) -> str:
    if pred is None or not meas:
        return "-"
    return f"{100.0 * (pred - meas) / meas:+.0f}%"


def format_fit(cal: Calibration) -> str:
    """Per unit: design and figures before -> after; per stage call: measured vs predicted before/after."""
    lines = []
    for f in cal.fits:
        b, a = f.before, f.after
        lines.append(f"{f.device}:{f.unit}: " + (f"as {f.inferred_from}:{f.unit} (same profile, not run)"
                                                  if f.inferred_from else
                                                  f"{f.design} fit over {f.calls} stage call(s)"))
        for c, v in b.throughput:
            v2 = a.flops_per_s(c)
            if abs(v2 - v) > 1e-9 * v:
                lines.append(f"  {c:<12} {v / 1e9:9.3g} -> {v2 / 1e9:9.3g} GFLOP/s")
        lines.append(f"  {'memory':<12} {b.mem_bandwidth / 1e9:9.3g} -> {a.mem_bandwidth / 1e9:9.3g} GB/s")
        lines.append(f"  {'per layer':<12} {b.layer_overhead_s * 1e6:9.3g} -> {a.layer_overhead_s * 1e6:9.3g} us")
        lines.append(f"  {'per call':<12} {b.hop_overhead_s * 1e6:9.3g} -> {a.hop_overhead_s * 1e6:9.3g} us (hop)")
        sends = b.hop_send_byte_s is not None or a.hop_send_byte_s is not None
        lines.append(f"  {'per byte in' if sends else 'per byte':<12} {hop_byte_s(b) * 1e9:9.3g} -> "
                     f"{hop_byte_s(a) * 1e9:9.3g} ns (hop{'' if f.hop_byte_fitted else ', not fitted'})")
        if sends:
            lines.append(f"  {'per byte out':<12} {hop_send_byte_s(b) * 1e9:9.3g} -> {hop_send_byte_s(a) * 1e9:9.3g}"
                         f" ns (hop{'' if f.hop_byte_fitted else ', not fitted'})")
        lines.extend(f"  {n}" for n in f.notes)
    for lf in cal.links:
        other = "every board (head)" if lf.b == HEAD_LINK else lf.b
        lines.append(f"link {lf.a} <-> {other}: {lf.before * 8 / 1e6:.4g} -> {lf.after * 8 / 1e6:.4g} Mbit/s "
                     + (f"(median of {lf.sends} passive measurement(s))" if lf.sends else "(no usable measurement)"))
        if lf.note:
            lines.append(f"  {lf.note}")
    lines += ["", f"{'report':<20}{'stage':>6}  {'board:unit':<16}{'measured ms':>12}{'before':>10}{'err':>7}"
                  f"{'after':>10}{'err':>7}  {'hop ms':>8}{'before':>8}{'after':>8}"]
    for r in cal.rows:
        o = r.obs
        stage = str(o.stage) if o.stage >= 0 else f"{o.start}-{o.stop - 1}"  # kit windows: layer range
        lines.append(f"{Path(o.source).name[:19]:<20}{stage:>6}  {o.device + ':' + o.unit:<16}"
                     f"{_ms(o.module_s):>12}{_ms(r.before_s):>10}{_err(r.before_s, o.module_s):>7}"
                     f"{_ms(r.after_s):>10}{_err(r.after_s, o.module_s):>7}  {_ms(r.hop_measured_s):>8}"
                     f"{_ms(r.hop_before_s):>8}{_ms(r.hop_after_s):>8}")
    lines.append(f"per-stage module time MAPE: {cal.mape('before'):.1f}% before, {cal.mape('after'):.1f}% after")
    lines.extend(cal.notes)
    return "\n".join(lines) + "\n"


# --- files in, file out (what `edgeplan calibrate` calls) ------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = jsonio.read(path)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such {what}") from None
    except ValueError as e:
        raise CalibrationError(f"{path}: {what} is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: a {what} is a JSON object, got {type(data).__name__}")
    return data


def read_plan(path: str | Path) -> tuple[dict, str | None]:
    """A plan.json, or an artifact folder's plan.json plus the backend(s) its stages were compiled with."""
    path = Path(path)
    if not path.is_dir():
        return _read_json(path, "plan file"), None
    plan = _read_json(path / "plan.json", "plan file (artifact folder)")
    backends = sorted({jsonio.read(p).get("backend", "") for p in path.glob("*/stage*/stage.json")} - {""})
    return plan, "+".join(backends) or None


def kit_observations(timings: dict, source: str) -> list[Observation]:
    """Observations from a board's profiling-kit timings (``profiling/timings.json``): one per model window."""
    if timings.get("kind") != "edgeplan-kit-timings":
        raise CalibrationError(f"{source}: not profiling-kit timings (from `sh <board>/profile.sh`)")
    out = []
    for w in timings.get("windows", ()):
        if int(w.get("calls", 0)) < MIN_RUNS:
            continue
        out.append(Observation(source=source, stage=-1, device=timings["device"], unit=timings["unit"],
                               start=int(w["start"]), stop=int(w["stop"]), samples=int(timings["samples"]),
                               runs=int(w["calls"]), module_s=float(w["module_s"]), cpu_per_call_s=None,
                               bytes_per_call=None))
    if not out:
        raise CalibrationError(f"{source}: no model window was timed {MIN_RUNS} times or more; run profile.sh again")
    return out


def calibrate_files(reports: list[str | Path], plans: list[str | Path], cluster_path: str | Path,
                    out_path: str | Path, load_graph, *, backend: str | None = None,
                    when: str | None = None, kits: list[str | Path] = ()) -> tuple[Calibration, Cluster]:
    """Fit ``cluster_path`` from run ``reports`` (and profiling-kit ``kits`` timings) and write the calibrated
    cluster to ``out_path``.

    ``plans``: the plan (file or artifact folder) each report ran, one for all or one per report; a
    report that embeds its plan (``plan`` key) needs none. ``load_graph(plan) -> LayerGraph`` traces the
    plan's model (the caller's: it needs torch); its digest must be the plan's ``graph_sha256``. Kit timings
    name the plan they were built for (its sha256): it must be among ``plans``.
    """
    from edgeplan.profiles import calibrate_train  # training reports have their own fit (issue 14 item 5)

    if reports and any(calibrate_train.is_train_report(r) for r in reports):
        if kits or not all(calibrate_train.is_train_report(r) for r in reports):
            raise CalibrationError("give training reports (`edgeplan train --report`) alone: not with inference run "
                                   "reports or --kit timings")
        return calibrate_train.calibrate_files(reports, plans, cluster_path, out_path, load_graph, when=when)
    cluster_path = Path(cluster_path)
    cluster = load_cluster(cluster_path)
    if not reports and not kits:
        raise CalibrationError("nothing to fit: give run reports and/or --kit timings")
    if reports and plans and len(plans) not in (1, len(reports)):
        raise CalibrationError(f"--plan given {len(plans)} times for {len(reports)} reports; give it once (all "
                               "reports ran one plan) or once per report, in the same order")
    runs, skipped, names, backends, graphs, used = [], [], [], set(), {}, []

    def graph_of(plan: dict, digest: str, psrc: str):
        """The plan's traced graph (once per plan), refused when it is not the graph that was planned."""
        if digest not in graphs:
            graph = load_graph(plan)
            if plan.get("graph_sha256") and graph.digest() != plan["graph_sha256"]:
                raise CalibrationError(f"{psrc}: the model traced now (graph sha256 {graph.digest()[:12]}) is not the "
                                       f"one planned ({plan['graph_sha256'][:12]}); give the planned model (--model)")
            graphs[digest] = graph
        return graphs[digest]

    for i, rpath in enumerate(reports):
        rep = _read_json(Path(rpath), "run report")
        if plans:
            ppath = plans[0] if len(plans) == 1 else plans[i]
            plan, found = read_plan(ppath)
            psrc = str(ppath)
        elif isinstance(rep.get("plan"), dict):
            plan, found, psrc = rep["plan"], None, f"{rpath} (embedded plan)"
        else:
            raise CalibrationError(f"{rpath}: the report does not carry its plan; give the plan.json or artifact "
                                   "folder that ran it with --plan")
        if plan.get("mode", "inference") != "inference":
            raise CalibrationError(f"{psrc}: a {plan.get('mode')} plan; calibrate fits inference run reports")
        check_plan_cluster(plan, cluster, psrc, str(cluster_path))
        digest = plan_digest(plan)
        graph = graph_of(plan, digest, psrc)
        obs, skip = observations(plan, rep, str(rpath))
        runs.append((plan, graph, obs))
        used.append((str(rpath), plan, rep, graph))
        skipped += skip
        names.append(f"{Path(rpath).name} (plan {digest[:12]})")
        if found:
            backends.add(found)
    by_sha = {}
    for ppath in plans if kits else ():
        plan, found = read_plan(ppath)
        by_sha[plan_digest(plan)] = (plan, found, str(ppath))
    for kpath in kits:
        timings = _read_json(Path(kpath), "profiling-kit timings")
        want = str(timings.get("plan_sha256", ""))
        if want not in by_sha:
            raise CalibrationError(f"{kpath}: kit of plan sha256 {want[:12]}, which no --plan is "
                                   f"({', '.join(k[:12] for k in by_sha) or 'none given'}); give the plan it was "
                                   "compiled from (--plan ART_DIR)")
        plan, _found, psrc = by_sha[want]
        check_plan_cluster(plan, cluster, psrc, str(cluster_path))
        runs.append((plan, graph_of(plan, want, psrc), kit_observations(timings, str(kpath))))
        names.append(f"{Path(kpath).name} (profiling kit of {timings.get('device')}, plan {want[:12]})")
        backends.add(str(timings.get("backend") or ""))
    backends.discard("")
    cal = dataclasses.replace(fit(cluster, runs, skipped), links=link_fits(cluster, tuple(used)))
    backend = backend or "+".join(sorted(backends)) or "unknown (give --backend or --plan ART_DIR)"
    new = write_calibrated(cluster_path, cal, out_path, sources=", ".join(names), backend=backend, when=when)
    return dataclasses.replace(cal, cluster=new, runs=tuple(used), before=cluster), new


def predicted_module_s(graph: LayerGraph, cluster: Cluster, stage: dict) -> float:
    """The cost model's module time of one call of a plan stage (a plan.json ``stages`` entry) on its
    slowest replica, without the runtime's hop: what a run report's ``measured_compute_s`` measures."""
    from edgeplan.profiles.cost import build_cost_table

    costs = build_cost_table(graph, cluster)
    sl = slice(stage["start"], stage["stop"])
    worst = 0.0
    for r in stage["replicas"]:
        u = next(i for i, (d, name, _) in enumerate(costs.units)
                 if costs.devices[d] == r["device"] and name == r["unit"])
        worst = max(worst, r["samples"] * float(costs.fwd_s[u, sl].sum()) + float(costs.fixed_s[u, sl].sum()))
    return worst


def end_to_end(cal: Calibration, reprice) -> list[tuple]:
    """Per report: (file, window, measured throughput, predicted before, after, measured p50, predicted
    before, after), the predictions under the run's window (profiles/predict.py).

    ``reprice(plan, graph, cluster) -> (latency_s, throughput)`` prices the plan's layout on a cluster
    (the planner's evaluator; passed in because profiles/ comes before planner/).
    """
    from edgeplan.profiles.predict import default_window, loaded_latency_s, loaded_throughput

    out = []
    for source, plan, rep, graph in cal.runs:
        b = int(rep.get("samples_per_request") or plan.get("batch") or 1)
        w = int(rep.get("window") or default_window(len(plan.get("stages", ()))))
        row = [source, w, rep.get("throughput")]
        lat = []
        for cluster in (cal.before, cal.cluster):
            latency, throughput = reprice(plan, graph, cluster)
            row.append(loaded_throughput(latency, throughput, b, w))
            lat.append(loaded_latency_s(latency, throughput, b, w))
        out.append((*row, (rep.get("latency_s") or {}).get("p50"), *lat))
    return out


def format_end_to_end(rows: list[tuple]) -> str:
    lines = [f"{'report':<20}{'window':>7}{'samples/s':>11}{'before':>9}{'err':>7}{'after':>9}{'err':>7}"
             f"{'p50 ms':>9}{'before':>9}{'err':>7}{'after':>9}{'err':>7}"]
    def f(x, scale=1.0):
        return "-" if x is None else f"{x * scale:.1f}"

    for source, w, tm, tb, ta, lm, lb, la in rows:
        lines.append(f"{Path(source).name[:19]:<20}{w:>7}{f(tm):>11}{f(tb):>9}{_err(tb, tm):>7}{f(ta):>9}"
                     f"{_err(ta, tm):>7}{f(lm, 1e3):>9}{f(lb, 1e3):>9}{_err(lb, lm):>7}{f(la, 1e3):>9}"
                     f"{_err(la, lm):>7}")
    return "end to end, predicted under the run's window (same plan, priced before and after):\n" + \
        "\n".join(lines) + "\n"
