"""The one evaluator: a layout (stages x replicas) on a CostTable -> predicted figures.

Every part of the planner (DP validation, ILP, brute force in tests, baselines,
reports) prices plans here, so they all agree. The model, per micro-batch of
``m = batch // microbatches`` samples:

- replica ``r`` (unit ``u``, ``k_r`` samples) of stage ``[i, j)``:
  ``t_r = k_r * (F_u[i:j] + HB_u (cut_i + cut_j)) + X_u[i:j] + H_u`` with ``F`` =
  forward (+ backward when training) seconds per sample, ``X`` the per-call
  overhead, and ``H``/``HB`` the runtime's cost per stage call and per byte it
  copies in and out (all per-call terms paid twice when training). Stage time
  ``tau = max_r t_r``.
- a transfer between replica groups ``G -> H`` is priced per sender ->
  receiver pair, as the runtime routes it (``runtime/spec.py``): replicas own
  contiguous sample ranges in replica order, and each sender sends each
  receiver the samples their ranges share (``n_ab``). Every device's NIC moves
  its own bytes, its flows at once: ``t = max over devices of sum over its
  pairs n_ab * bytes / bw_ab`` (sending and receiving counted apart) ``+ the
  largest latency of a pair that carries data``; energy ``sum n_ab * bytes *
  epb_ab``; a device's samples to itself are free. So 8 senders to 2 receivers
  cost 4 samples' time on each receiver's NIC, not 8 samples over one link;
  single-device stages pay ``m * bytes / bw + latency`` as before. Training
  sends activations forward and gradients back: ``2x`` per inter-stage link;
  the loss stays on the last stage, and there is no input link: every rank of
  the first stage reads its samples from its own copy of the data set
  (``training/engine.py``).
- training all-reduce of a stage's gradients over its group (ring):
  ``2 (g-1)/g * params / min bw + 2 (g-1) * max latency``, once per iteration.
- resources ``x`` = input link, stages, links (and, inference, the output link
  to the head) with per-micro-batch time ``p_x``:
  inference latency ``L = sum p + (M-1) max p``; throughput ``m / max p``;
  training iteration ``T = sum p + (M-1) max p + max_s (ar_s + opt_s)``: the
  runtime (``training/engine.py``) runs a stage's all-reduce and optimizer step
  only after its last backward (no overlap with its own micro-batches), then
  starts the next iteration. The all-reduce of a stage ``s > 0`` may hide
  behind the ``sum_{s'<s} p`` its upstream still needs before the next forward
  reaches it; that slack depends on the stages before ``s`` (not one key a DP
  over suffixes can carry), so it is not subtracted: the figure is an upper
  bound of that model by at most that slack. 1F1B keeps ``S - s`` micro-batches
  in flight at stage ``s``, so its steady period is also at least the round
  trip from ``s`` to the last stage and back over ``S - s``; that term is not
  priced either (``schedule.simulate`` models it; the README says by how much it
  misses on measured runs). Unlike the slack it would fit the DP: the round trip
  is the suffix's own sum of ``p`` over ``min(M, S - s)`` (the 1F1B depth its
  states carry), so a threshold pass could drop states whose suffix sum exceeds
  ``theta x min(M, depth)``; it waits for the model to price it first.
- energy per sample: replicas' ``(busy - idle)^+ * t_r`` + ``idle * period`` of
  every used device + link bytes x energy/byte, divided by the samples.
- memory per replica: ``params * (1 + training * (1 + optimizer_states))`` +
  ``k_r * stash * sum(act)`` (stash = M for GPipe, min(M, stages left) for
  1F1B, 0 for inference) + ``k_r * (cut_bytes[i] + max act)`` of workspace.
  Sample shares respect it: ``allocate`` gives no replica more samples than
  its device holds. Training: each rank also holds the torch framework
  (``train_reserve_mb`` of its board, ``Prefix.reserve``), paid per rank.
- several units of one board (``planner/units.py``): stages may sit on
  different units of one device (never two on one unit). Their memory adds up
  against the board's RAM; a board hosting several stages gets a NIC resource
  (all its bytes out, all its bytes in, per micro-batch); a hand-over between
  two of its units is a copy through memory at the units' bandwidths (free
  between two CPU units); the board's idle power is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeplan.errors import PlanError
from edgeplan.planner import units as _units  # module import: units.py imports this module back
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable

TRAINABLE_TARGETS = frozenset({"x86", "arm-cpu", "cuda"})


def untrainable_units(costs: CostTable) -> list[str]:
    """``device:unit`` of every unit a training plan may not use (see TRAINABLE_TARGETS)."""
    return [f"{costs.devices[d]}:{u}" for d, u, t in costs.units if t not in TRAINABLE_TARGETS]


@dataclass(frozen=True)
class StageSpec:
    """A stage before pricing: layers ``[start, stop)`` and (global unit index, samples) per replica."""

    start: int
    stop: int
    replicas: tuple[tuple[int, int], ...]


Layout = tuple[StageSpec, ...]


class Prefix:
    """Prefix sums over layers so any stage's cost is two lookups (shared by DP and evaluator)."""

    def __init__(self, costs: CostTable, objective: Objective):
        sup = np.asarray(costs.supported, dtype=bool)
        if objective.training:  # torch trains on CPUs and CUDA GPUs only: NPU and Mali units run no layer
            sup = sup & np.array([t in TRAINABLE_TARGETS for _, _, t in costs.units], dtype=bool)[:, None]
        tc = costs.training if objective.training else None  # fitted training figures (profiles/calibrate_train)
        fs, bs = (1.0, 1.0) if tc is None else (tc.fwd_scale[:, None], tc.bwd_scale[:, None])
        per = np.where(sup, costs.fwd_s * fs, 0.0)
        if objective.training:
            per = per + np.where(sup, costs.bwd_s * bs, 0.0)
        if tc is None:
            fixed = np.where(sup, costs.fixed_s, 0.0) * (2.0 if objective.training else 1.0)
        else:
            fixed = np.where(sup, sum(tc.fixed(costs.fixed_s)), 0.0)
        z = np.zeros((per.shape[0], 1))
        self.F = np.concatenate([z, np.cumsum(per, axis=1)], axis=1)
        self.training = objective.training
        # forward only (training): the schedule simulator runs forward and backward as separate actions
        self.Ffwd = np.concatenate([z, np.cumsum(np.where(sup, costs.fwd_s * fs, 0.0), axis=1)], axis=1)
        self.X = np.concatenate([z, np.cumsum(fixed, axis=1)], axis=1)
        self.U = np.concatenate([z.astype(np.int64), np.cumsum(~sup, axis=1)], axis=1)
        self.P = np.concatenate([[0.0], np.cumsum(np.asarray(costs.param_bytes, dtype=np.float64))])
        self.A = np.concatenate([[0.0], np.cumsum(np.asarray(costs.act_bytes, dtype=np.float64))])
        self.act = np.asarray(costs.act_bytes, dtype=np.float64)
        self.cut = np.asarray(costs.cut_bytes, dtype=np.float64)
        # cuts codegen can split (a tuple or batch-less tensor crossing a cut cannot go to replicas)
        self.cut_ok = (np.ones(len(self.cut), dtype=bool) if costs.cut_ok is None
                       else np.asarray(costs.cut_ok, dtype=bool))
        self.unit_dev = np.array([u[0] for u in costs.units], dtype=np.int64)
        # training: every rank (a unit that trains) holds the torch framework beyond its model
        # (CostTable.train_reserve_bytes, per device); a board whose CPU and GPU both train pays it per process
        n_dev = len(costs.devices)
        rsv = (np.asarray(costs.train_reserve_bytes, dtype=np.float64)
               if objective.training and costs.train_reserve_bytes is not None else np.zeros(n_dev))
        self.reserve = rsv[self.unit_dev]  # per unit: bytes its training rank holds beyond the stage
        # usable RAM left for the stage: per unit (one rank on its device), per device (one rank: the DP's space)
        self.unit_ram = np.asarray(costs.ram_bytes, dtype=np.float64)[self.unit_dev] - self.reserve
        self.dev_ram = np.asarray(costs.ram_bytes, dtype=np.float64) - rsv
        self.wfactor = 1.0 + (1.0 + objective.optimizer_states if objective.training else 0.0)
        # the runtime's cost of one stage call (a training step makes two: forward, backward)
        n_units, calls = per.shape[0], 2.0 if objective.training else 1.0
        self.H = calls * (np.zeros(n_units) if costs.hop_s is None else np.asarray(costs.hop_s, dtype=np.float64))
        # ... per byte a call receives (HBin) and sends (HBout); per sample of a stage [i, j) the runtime moves
        # HBi * cut[i] + HBo * cut[j]: inference receives the first cut and sends the last, a training step's
        # backward call moves the gradients the other way, so each cut crosses both ways
        self.HBin = np.zeros(n_units) if costs.hop_byte_s is None else np.asarray(costs.hop_byte_s, dtype=np.float64)
        self.HBout = self.HBin if costs.hop_send_byte_s is None else np.asarray(costs.hop_send_byte_s,
                                                                               dtype=np.float64)
        if tc is not None:  # a fitted training call cost replaces the inference runtime's hop and copies
            fitted = ~np.isnan(tc.call_s)
            self.H = np.where(fitted, calls * np.nan_to_num(tc.call_s), self.H)
            self.HBin, self.HBout = np.where(fitted, 0.0, self.HBin), np.where(fitted, 0.0, self.HBout)
            if tc.module_call_s is not None:  # torch's per-call cost of the module's forward and backward
                self.H = self.H + tc.module_call_s.sum(axis=1)
        if objective.training:
            self.HBi = self.HBo = self.HBin + self.HBout
        else:
            self.HBi, self.HBo = self.HBin, self.HBout

    def per_sample(self, u: int, i: int, j: int) -> float:
        """Seconds per sample of stage ``[i, j)`` on unit ``u``: its layers + the runtime copying its cuts."""
        return self.F[u, j] - self.F[u, i] + self.HBi[u] * self.cut[i] + self.HBo[u] * self.cut[j]

    def per_call(self, u: int, i: int, j: int) -> float:
        """Seconds per call, whatever the samples: per-layer overheads + the runtime's per-call cost."""
        return self.X[u, j] - self.X[u, i] + self.H[u]

    def time(self, u: int, i: int, j: int, k: int) -> float:
        """Seconds for one call of stage ``[i, j)`` on unit ``u`` with ``k`` samples."""
        return k * self.per_sample(u, i, j) + self.per_call(u, i, j)

    def module_time(self, u: int, i: int, j: int, k: int) -> float:
        """Seconds of the stage's module alone (``time`` without the runtime's per-call and copy costs)."""
        return k * (self.F[u, j] - self.F[u, i]) + self.X[u, j] - self.X[u, i]

    def forward_time(self, u: int, i: int, j: int, k: int) -> float:
        """Seconds of the forward call alone (training: half the per-call and copy costs; inference: ``time``)."""
        if not self.training:
            return self.time(u, i, j, k)
        return (k * (self.Ffwd[u, j] - self.Ffwd[u, i] + self.HBin[u] * self.cut[i] + self.HBout[u] * self.cut[j])
                + self.per_call(u, i, j) / 2)

    def memory(self, i: int, j: int, k: int, stash: int) -> float:
        """Bytes a replica of stage ``[i, j)`` holding ``k`` samples needs (module docstring: memory)."""
        ws = self.cut[i] + float(self.act[i:j].max())
        return (self.P[j] - self.P[i]) * self.wfactor + k * (stash * (self.A[j] - self.A[i]) + ws)

    def capacity(self, u: int, i: int, j: int, stash: int) -> int:
        """Most samples a replica of stage ``[i, j)`` on unit ``u`` can hold in its device's RAM (may be < 0)."""
        ws = self.cut[i] + float(self.act[i:j].max())
        per = stash * (self.A[j] - self.A[i]) + ws
        room = self.unit_ram[u] - (self.P[j] - self.P[i]) * self.wfactor
        if per <= 0:
            return 1 << 40 if room >= 0 else -1
        return int(np.floor(room / per))


def stash_of(objective: Objective, stages: int, s: int) -> int:
    """Micro-batches of activations stage ``s`` of ``stages`` keeps for the backward pass."""
    if not objective.training:
        return 0
    return objective.microbatches if objective.schedule == "gpipe" else min(objective.microbatches, stages - s)


def allocate(prefix: Prefix, i: int, j: int, units: tuple[int, ...], m: int, stash: int | None = 0) -> tuple[int, ...]:
    """Split ``m`` samples over ``units`` for stage ``[i, j)`` minimising the slowest replica, within memory.

    Greedy: each sample goes to the replica whose time after taking it is
    smallest (first replica on ties) among those whose device still has room
    for one more sample (``stash`` micro-batches of activations kept; ``None``
    ignores memory). Optimal for min-max with increasing per-replica costs and
    per-replica caps (it takes the ``m`` smallest allowed finishing times). When
    the caps hold fewer than ``m`` samples the rest go greedily regardless, and
    the evaluator reports the overflow. A replica left with 0 samples makes the
    group invalid.
    """
    F = [prefix.per_sample(u, i, j) for u in units]
    X = [prefix.per_call(u, i, j) for u in units]
    cap = [m if stash is None else prefix.capacity(u, i, j, stash) for u in units]
    k = [0] * len(units)
    for _ in range(m):
        room = [r for r in range(len(units)) if k[r] < cap[r]] or range(len(units))
        best = min(room, key=lambda r: ((k[r] + 1) * F[r] + X[r], r))
        k[best] += 1
    return tuple(k)


def pair_link(costs: CostTable, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[float, float, float] | None:
    """(min bandwidth, max latency, max energy/byte) over device pairs src x dst (a != b); None if none."""
    s, d = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    other = s[:, None] != d[None, :]
    if not other.any():
        return None
    ix = np.ix_(s, d)
    return (float(costs.bandwidth[ix][other].min()), float(costs.latency_s[ix][other].max()),
            float(costs.energy_per_byte_j[ix][other].max()))


def transfer(costs: CostTable, src, dst, nbytes: float) -> tuple[float, float]:
    """(seconds, joules) to move ``nbytes`` from group ``src`` to group ``dst``."""
    link = pair_link(costs, tuple(src), tuple(dst))
    if link is None:
        return 0.0, 0.0
    bw, lat, epb = link
    return nbytes / bw + lat, nbytes * epb


def pair_samples(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(sender index, receiver index, samples) for every pair whose sample ranges overlap.

    ``src``/``dst``: samples per replica in replica order; replica ``r`` owns the contiguous range
    after its predecessors' (``runtime/spec.py``), and a sender sends each receiver the intersection.
    """
    out = []
    a = b = 0
    a_lo = b_lo = 0
    while a < len(src) and b < len(dst):
        a_hi, b_hi = a_lo + src[a], b_lo + dst[b]
        n = min(a_hi, b_hi) - max(a_lo, b_lo)
        if n > 0:
            out.append((a, b, n))
        if a_hi <= b_hi:
            a, a_lo = a + 1, a_hi
        else:
            b, b_lo = b + 1, b_hi
    return out


def pair_transfer(costs: CostTable, src: tuple[tuple[int, int], ...], dst: tuple[tuple[int, int], ...],
                  bytes_per_sample: float) -> tuple[float, float]:
    """(seconds, joules) to move a micro-batch from ``src`` to ``dst`` replicas ((device, samples) in replica
    order), priced per sender -> receiver pair (module docstring)."""
    t, e, _ = pair_loads(costs, src, dst, bytes_per_sample)
    return t, e


def pair_loads(costs: CostTable, src, dst, bytes_per_sample: float) -> tuple[float, float, dict]:
    """``pair_transfer`` plus each NIC's seconds (``("out"|"in", device)``). Replicas given as
    (device, samples, unit) also price a hand-over between two units of one device
    (``units.handover_s_per_byte``, on the board's memory: key ``("copy", device)``)."""
    load: dict[tuple[str, int], float] = {}
    lat = energy = 0.0
    for a, b, n in pair_samples(tuple(r[1] for r in src), tuple(r[1] for r in dst)):
        x, y = src[a][0], dst[b][0]
        if x == y:
            if len(src[a]) > 2 and len(dst[b]) > 2 and src[a][2] != dst[b][2]:
                c = n * bytes_per_sample * _units.handover_s_per_byte(costs, src[a][2], dst[b][2])
                if c > 0:
                    load[("copy", x)] = load.get(("copy", x), 0.0) + c
            continue
        nbytes = n * bytes_per_sample
        t = nbytes / float(costs.bandwidth[x, y])
        load[("out", x)] = load.get(("out", x), 0.0) + t
        load[("in", y)] = load.get(("in", y), 0.0) + t
        lat = max(lat, float(costs.latency_s[x, y]))
        energy += nbytes * float(costs.energy_per_byte_j[x, y])
    if not load:
        return 0.0, 0.0, load
    return max(load.values()) + lat, energy, load


def allreduce(costs: CostTable, group, nbytes: float) -> tuple[float, float]:
    """(seconds, joules) of a ring all-reduce of ``nbytes`` over ``group``."""
    g = len(group)
    link = pair_link(costs, tuple(group), tuple(group))
    if g < 2 or link is None:
        return 0.0, 0.0
    bw, lat, epb = link
    t = 2.0 * (g - 1) / g * nbytes / bw + 2.0 * (g - 1) * lat
    if costs.training is not None:  # torch.distributed's own cost per ring step and per byte (fitted)
        call, per_byte = costs.training.allreduce[list(group)].max(axis=0)
        t += 2.0 * (g - 1) * call + nbytes * per_byte
    return t, 2.0 * (g - 1) * nbytes * epb


def optimizer_step(costs: CostTable, units, nbytes: float) -> float:
    """Seconds of a training stage's optimizer step over ``nbytes`` of parameters (slowest of ``units``;
    0 without fitted training figures)."""
    if costs.training is None:
        return 0.0
    units = list(units)
    return float((costs.training.opt_call_s[units] + nbytes * costs.training.opt_byte_s[units]).max())


def exchange_peers(ends, s: int, r: int) -> list[tuple[int, int]]:
    """(stage, replica) of the neighbour stages' replicas that replica ``r`` of stage ``s`` exchanges tensors with
    in a training step (activations and gradients; ``ends``: (device, samples, ...) per replica per stage)."""
    out = []
    if s > 0:
        out += [(s - 1, a) for a, b, _ in pair_samples(tuple(x[1] for x in ends[s - 1]), tuple(x[1] for x in ends[s]))
                if b == r]
    if s + 1 < len(ends):
        out += [(s + 1, b) for a, b, _ in pair_samples(tuple(x[1] for x in ends[s]), tuple(x[1] for x in ends[s + 1]))
                if a == r]
    return out


def p2p_overhead(costs: CostTable, src, dst, bytes_per_sample: float) -> float:
    """torch.distributed's own seconds for one training transfer between replica groups ((device, samples,
    ...) in replica order) beyond the link: per transfer + per byte of the largest pair (fitted; else 0)."""
    if costs.training is None:
        return 0.0
    worst = 0.0
    for a, b, n in pair_samples(tuple(r[1] for r in src), tuple(r[1] for r in dst)):
        x, y = src[a][0], dst[b][0]
        if x != y:
            call, per_byte = np.maximum(costs.training.p2p[x], costs.training.p2p[y])
            worst = max(worst, float(call + per_byte * n * bytes_per_sample))
    return worst


@dataclass(frozen=True)
class ReplicaEval:
    unit: int
    device: int
    samples: int
    time_s: float
    memory_bytes: float
    forward_s: float = 0.0  # training: the forward part of time_s (the rest is backward)
    reserve_bytes: float = 0.0  # training: the torch framework its rank holds beyond memory_bytes (Prefix.reserve)


@dataclass(frozen=True)
class StageEval:
    spec: StageSpec
    replicas: tuple[ReplicaEval, ...]
    compute_s: float  # tau: slowest replica per micro-batch
    forward_s: float  # training: the slowest replica's forward part of compute_s (inference: compute_s)
    send_s: float  # one-way transfer of its output to the next stage (head for the last, inference)
    allreduce_s: float
    energy_j: float  # per sample: compute above idle + sends
    module_s: float = 0.0  # the slowest replica's module alone (compute_s less the runtime's hop costs)
    optimizer_s: float = 0.0  # training: the optimizer step per iteration (fitted training figures; else 0)


@dataclass(frozen=True)
class Evaluation:
    stages: tuple[StageEval, ...]
    input_s: float  # head -> first stage
    latency_s: float  # inference: one request; training: one micro-batch forward+backward
    period_s: float  # slowest resource per micro-batch
    throughput: float  # samples / s
    energy_j: float  # per sample
    iter_s: float | None  # training: per iteration
    overflows: tuple[tuple[int, float, float], ...]  # (device, need bytes, capacity) where memory overflows
    unsupported: tuple[tuple[int, int], ...]  # (stage index, unit) pairs that cannot run the stage
    budget_misses: tuple[str, ...]
    bad_cuts: tuple[int, ...] = ()  # stage starts codegen cannot split (CostTable.cut_ok)
    empty: tuple[tuple[int, int], ...] = ()  # (stage index, unit) of replicas given 0 samples: not a layout to run

    @property
    def feasible(self) -> bool:
        return not self.overflows and not self.unsupported and not self.bad_cuts and not self.empty

    def why_infeasible(self, costs: CostTable) -> str:
        """One line naming the first reason this layout cannot run ('' when feasible)."""
        if self.empty:
            s, u = self.empty[0]
            return (f"stage {s}: replica {costs.devices[costs.units[u][0]]}:{costs.units[u][1]} gets 0 samples of "
                    "the micro-batch (drop it from the group or raise the micro-batch size)")
        if self.overflows:
            return "; ".join(f"{costs.devices[dv]} needs {self.memory_text(dv, need)} of {cap / 2**20:.1f} MB"
                             for dv, need, cap in self.overflows[:3])
        if self.bad_cuts:
            return (f"codegen cannot cut after layer {costs.layer_names[self.bad_cuts[0] - 1]} (a tensor without "
                    "one batch dimension crosses it)")
        if self.unsupported:
            s, u = self.unsupported[0]
            return f"stage {s}: unit {costs.devices[costs.units[u][0]]}:{costs.units[u][1]} cannot run its layers"
        return ""

    def memory_text(self, device: int, need: float) -> str:
        """``need`` bytes of ``device`` as the model's part + the torch reserve of its training ranks, in MB."""
        rsv = [r.reserve_bytes for st in self.stages for r in st.replicas if r.device == device and r.reserve_bytes]
        if not rsv:
            return f"{need / 2**20:.1f} MB"
        ranks = f" x {len(rsv)} ranks" if len(rsv) > 1 else ""
        return (f"{(need - sum(rsv)) / 2**20:.1f} MB + {max(rsv) / 2**20:.0f} MB torch reserve{ranks} "
                f"(train_reserve_mb)")

    @property
    def ok(self) -> bool:
        """Feasible and within the budgets."""
        return self.feasible and not self.budget_misses

    def value(self, objective: Objective) -> float:
        return {
            "latency": self.latency_s, "throughput": self.period_s,
            "energy": self.energy_j, "time": self.iter_s if self.iter_s is not None else np.inf,
        }[objective.objective]

    def score(self, objective: Objective) -> tuple[float, float]:
        """Comparison key: the objective, then latency (iteration time) as the tie-break."""
        second = self.iter_s if objective.training else self.latency_s
        return (self.value(objective), float(second))


def check_layout(costs: CostTable, layout: Layout, objective: Objective) -> None:
    """Structural checks (contiguous cover, units used once, a device once per replica group, samples sum
    to the micro-batch). Stages may share a device on different units (``planner/units.py``). A replica
    with 0 samples passes: ``evaluate`` reports it infeasible (``Evaluation.empty``), so a search that
    meets one skips it instead of failing."""
    n = costs.n_layers
    if not layout:
        raise PlanError("plan has no stages")
    pos = 0
    seen: set[int] = set()
    for s, st in enumerate(layout):
        if st.start != pos or st.stop <= st.start:
            raise PlanError(f"stage {s}: layers [{st.start}, {st.stop}) do not continue at layer {pos}")
        pos = st.stop
        devs = [costs.units[u][0] for u, _ in st.replicas]
        if not devs:
            raise PlanError(f"stage {s} has no replicas")
        if len(set(devs)) < len(devs):
            d = next(d for d in devs if devs.count(d) > 1)
            raise PlanError(f"stage {s}: device {costs.devices[d]!r} appears twice in one replica group; "
                            "give the stage one unit per device")
        for u, _ in st.replicas:
            if u in seen:
                d, name, _ = costs.units[u]
                raise PlanError(f"unit {costs.devices[d]}:{name} is used by more than one stage; a unit runs "
                                "one stage (put the other stage on another unit or device)")
            seen.add(u)
        total = sum(k for _, k in st.replicas)
        if total != objective.micro or any(k < 0 for _, k in st.replicas):
            raise PlanError(
                f"stage {s}: replica samples {[k for _, k in st.replicas]} must be >= 0 and sum to the "
                f"micro-batch size {objective.micro}"
            )
    if pos != n:
        raise PlanError(f"stages cover layers [0, {pos}) but the model has {n} layers")


def head_index(costs: CostTable, objective: Objective) -> int:
    """The objective's head device, else the cluster's (``CostTable.head``: the first device unless the cluster
    file's ``head:`` names a board or an off-board host)."""
    if objective.head is None:
        return costs.head
    try:
        return costs.devices.index(objective.head)
    except ValueError:
        raise PlanError(
            f"head device {objective.head!r} is not in the cluster (devices: {', '.join(costs.devices)})"
        ) from None


def evaluate(costs: CostTable, layout: Layout, objective: Objective, prefix: Prefix | None = None) -> Evaluation:
    """Price ``layout`` (see the module docstring for the model)."""
    check_layout(costs, layout, objective)
    pf = prefix or Prefix(costs, objective)
    m, M, train = objective.micro, objective.microbatches, objective.training
    head = head_index(costs, objective)
    S = len(layout)
    groups = [tuple(costs.units[u][0] for u, _ in st.replicas) for st in layout]
    busy = np.asarray(costs.busy_power_w, dtype=np.float64)
    idle = np.asarray(costs.idle_power_w, dtype=np.float64)

    ends = [tuple((costs.units[u][0], k, u) for u, k in st.replicas) for st in layout]  # (device, samples, unit)
    at_head = ((head, m),)
    # training: stage 0 reads its samples on its own boards (no transfer from the head)
    in_t, in_e, in_load = (0.0, 0.0, {}) if train else pair_loads(costs, at_head, ends[0], pf.cut[0])
    nic_parts = [(in_load, 1.0)]  # every transfer's NIC seconds, x its runs per micro-batch (units.nic_loads)
    stages: list[StageEval] = []
    overflows: list[tuple[int, float, float]] = []
    unsupported: list[tuple[int, int]] = []
    p_res = [in_t]  # per-micro-batch time of every resource
    tails = [0.0]  # training: per stage, its all-reduce + optimizer step after its last backward
    dyn_j = in_e  # joules per micro-batch (inference) excluding idle
    used = sorted({d for g in groups for d in g})  # a board with several busy units idles once
    bad_cuts = tuple(st.start for st in layout[1:] if not pf.cut_ok[st.start])
    empty = tuple((s, u) for s, st in enumerate(layout) for u, k in st.replicas if k == 0)
    for s, st in enumerate(layout):
        i, j = st.start, st.stop
        stash = stash_of(objective, S, s)
        params = pf.P[j] - pf.P[i]
        reps = []
        e_stage = 0.0
        for u, k in st.replicas:
            d = costs.units[u][0]
            if pf.U[u, j] - pf.U[u, i] > 0:
                unsupported.append((s, u))
            t = pf.time(u, i, j, k)
            if train and costs.training is not None:  # fitted: per neighbour replica it exchanges tensors with
                t += costs.training.call_peer_s[u] * len(exchange_peers(ends, s, len(reps)))
            mem = pf.memory(i, j, k, stash)
            e_stage += max(busy[u] - idle[d], 0.0) * t
            reps.append(ReplicaEval(unit=u, device=d, samples=k, time_s=float(t), memory_bytes=float(mem),
                                    forward_s=float(pf.forward_time(u, i, j, k)), reserve_bytes=float(pf.reserve[u])))
        slowest = max(reps, key=lambda r: r.time_s)
        tau = slowest.time_s
        send_load: dict = {}
        if s + 1 < S:
            send_t, send_e, send_load = pair_loads(costs, ends[s], ends[s + 1], pf.cut[j])
        elif not train:
            send_t, send_e, send_load = pair_loads(costs, ends[s], at_head, pf.cut[j])
        else:
            send_t, send_e = 0.0, 0.0
        nic_parts.append((send_load, 2.0 if (train and s + 1 < S) else 1.0))
        ar_t, ar_e = allreduce(costs, groups[s], params) if train else (0.0, 0.0)
        opt_t = optimizer_step(costs, [u for u, _ in st.replicas], params) if train else 0.0
        if train and s + 1 < S:
            send_t += p2p_overhead(costs, ends[s], ends[s + 1], pf.cut[j])
        link_p = 2 * send_t if (train and s + 1 < S) else send_t
        p_res += [tau, link_p]
        tails.append(ar_t + opt_t)
        e_stage += send_e * (2 if (train and s + 1 < S) else 1)
        if train:
            e_stage += ar_e / M
        dyn_j += e_stage
        stages.append(StageEval(spec=st, replicas=tuple(reps), compute_s=float(tau), forward_s=slowest.forward_s,
                                send_s=float(send_t),
                                allreduce_s=float(ar_t), energy_j=float(e_stage / m), optimizer_s=float(opt_t),
                                module_s=float(max(pf.module_time(r.unit, i, j, r.samples) for r in reps))))
    for d, need in sorted(_units.device_memory(costs, (r for st in stages for r in st.replicas)).items()):
        if need > costs.ram_bytes[d]:
            overflows.append((d, float(need), float(costs.ram_bytes[d])))
    shared = _units.multi_stage_devices(costs, layout)
    nic_p = _units.nic_loads(nic_parts, shared) if shared else []
    period = max(p_res + nic_p)  # a shared NIC bounds the period; its transfers' latencies are already in the sum
    total = sum(p_res)
    idle_used = float(sum(idle[d] for d in used))
    if train:
        iter_s = total + (M - 1) * period + max(tails)
        latency = total
        throughput = objective.batch / iter_s if iter_s > 0 else np.inf
        energy = (dyn_j * M + idle_used * iter_s) / objective.batch
    else:
        iter_s = None
        latency = total + (M - 1) * period
        throughput = m / period if period > 0 else np.inf
        energy = (dyn_j + idle_used * period) / m
    misses = []
    lat_key = iter_s if train else latency
    if objective.latency_budget_s is not None and lat_key > objective.latency_budget_s * (1 + 1e-12):
        misses.append("latency")
    if objective.energy_budget_j is not None and energy > objective.energy_budget_j * (1 + 1e-12):
        misses.append("energy")
    return Evaluation(
        stages=tuple(stages), input_s=float(in_t), latency_s=float(latency), period_s=float(period),
        throughput=float(throughput), energy_j=float(energy), iter_s=None if iter_s is None else float(iter_s),
        overflows=tuple(overflows), unsupported=tuple(unsupported), budget_misses=tuple(misses), bad_cuts=bad_cuts,
        empty=empty,
    )
