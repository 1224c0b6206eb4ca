"""A training epoch's numbers: each rank's counters, the run's row (rank 0 prints and records it), energy.

Every rank fills an ``EpochCounters``; the engine all-gathers their ``row``s and
``epoch_row`` sums them into the row metrics.json keeps and ``format_epoch`` prints,
measured beside the plan's prediction.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

RESOURCE_COLUMNS = 4  # cpu seconds, peak resident bytes, network bytes received, sent (ResourceProbe.stop)
PHASE_COLUMNS = 12  # forward, backward, optimizer step (with all-reduce), all-reduce seconds; micro-batches;
# stage-call overhead seconds; point-to-point transfer seconds, bytes, transfers received; CPU seconds of the
# forward and backward modules and of the calls' overhead (the rank's compute thread)


@dataclass
class EpochCounters:
    """One rank's running sums over an epoch (training loss and accuracy count on the last stage only)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    busy_s: float = 0.0
    iter_times: list[float] = field(default_factory=list)
    resources: list[float] = field(default_factory=lambda: [0.0] * RESOURCE_COLUMNS)  # ResourceProbe.stop()
    # compute only (waits for peers excluded): each figure the plan predicts per stage (issue 14 item 5)
    forward_s: float = 0.0
    backward_s: float = 0.0
    step_s: float = 0.0  # optimizer step, gradient all-reduce included
    allreduce_s: float = 0.0
    microbatches: int = 0  # backward passes run (each a forward too)
    call_s: float = 0.0  # stage calls' seconds beyond the module (slicing, sends, clones), waits excluded
    p2p: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # Comm transfer seconds, bytes, count
    forward_cpu_s: float = 0.0  # CPU seconds (the compute thread's: torch runs one thread per rank)
    backward_cpu_s: float = 0.0
    call_cpu_s: float = 0.0

    def row(self, test: tuple[float, int, int], train_s: float) -> list[float]:
        """The vector every rank contributes to the all-gather (columns as ``epoch_row`` reads them)."""
        # the median steady iteration: a stall of the emulated testbed's CPU quota (up to half a 20 ms CFS period)
        # or another tenant's burst lands on a few iterations of a short run; the mean of 11 read one LeNet-5
        # layout 28.8 and 36.8 ms in two runs of one testbed (issue 14)
        steady = self.iter_times[1:] if len(self.iter_times) > 1 else self.iter_times
        return [self.loss_sum, self.correct, self.count, test[0], test[1], test[2], self.busy_s,
                float(np.median(steady)), train_s, *self.resources,
                self.forward_s, self.backward_s, self.step_s, self.allreduce_s, float(self.microbatches),
                self.call_s, *self.p2p, self.forward_cpu_s, self.backward_cpu_s, self.call_cpu_s]


def net_bytes(path: str = "/proc/net/dev") -> tuple[int, int]:
    """(received, sent) bytes of every interface but loopback: in an emulated board's network
    namespace, exactly that board's traffic."""
    rx = tx = 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx


class ResourceProbe:
    """What a training rank used over an epoch: CPU seconds (the process's CPU clock: the serving
    monitor's /proc reading counts 10 ms ticks, too coarse for an emulated Pi's 0.04 cores over a
    short epoch), resident memory (the serving monitor, runtime/monitor.py) and its board's network
    bytes (/proc/net/dev)."""

    def __init__(self, device: str, stage: int, unit: str):
        from edgeplan.runtime.monitor import Monitor

        self.monitor = Monitor(device, stage, unit)
        self._cpu0, self._net0 = 0.0, (0, 0)

    def start(self) -> None:
        self._cpu0 = time.process_time()
        self._net0 = net_bytes()

    def stop(self) -> list[float]:
        snap = self.monitor.snapshot()
        rx, tx = net_bytes()
        from edgeplan.runtime.monitor import peak_rss_bytes

        peak = peak_rss_bytes()
        return [time.process_time() - self._cpu0,
                float(max(peak, snap["process_resident_memory_bytes"])),
                float(rx - self._net0[0]), float(tx - self._net0[1])]


def epoch_row(t: np.ndarray, epoch: int, iters: int, batch: int, evaluate: bool, job, ranks, predicted,
              stages=()) -> dict:
    """The epoch's row from the gathered counters ``t`` (one ``EpochCounters.row`` per rank); ``stages``:
    the plan's, whose per-micro-batch predictions stand beside the measured figures (``stage_figures``)."""
    count, test_count = max(t[:, 2].sum(), 1), max(t[:, 5].sum(), 1)
    epoch_s = float(t[:, 8].max())
    iter_s = float(t[:, 7].max())
    d = job.dilation
    return {
        "epoch": epoch + 1,
        "loss": float(t[:, 0].sum() / count),
        "accuracy": float(t[:, 1].sum() / count),
        "test_loss": float(t[:, 3].sum() / test_count) if evaluate else None,
        "test_accuracy": float(t[:, 4].sum() / test_count) if evaluate else None,
        "epoch_s": epoch_s,
        "samples_per_s": iters * batch / epoch_s,
        "iterations": iters,
        "measured_iter_s": iter_s,
        "board_iter_s": iter_s * d,  # emulated testbed: the boards' time (measured x dilation)
        "dilation": d,
        "predicted_iter_s": predicted.iter_s,
        "energy_j": energy(t[:, 6], epoch_s, iters, batch, job, ranks, predicted),
        "boards": boards(t, epoch_s, job, ranks),
        "stages": stage_figures(t, iters, job, ranks, stages),
        # per stage and replica, measured; launch.run adds the predictions training.json carries
        "figures": replica_figures(t, iters, job, ranks, None, stages),
    }


def stage_figures(t: np.ndarray, iters: int, job, ranks, stages) -> list[dict]:
    """Per plan stage, each measured figure beside the plan's prediction of the same quantity, in board
    seconds (measured x the testbed's dilation): forward and backward of one micro-batch on the stage's
    slowest replica (the plan's ``forward_s`` and ``compute_s - forward_s``), and per iteration the
    optimizer step and the gradient all-reduce (measured only: the plan does not write them per stage)."""
    col = 9 + RESOURCE_COLUMNS
    if t.shape[1] < col + PHASE_COLUMNS:
        return []
    d = job.dilation
    out = []
    for st in stages:
        rows = t[[r.rank for r in ranks if r.stage == st.index]]
        if not len(rows):
            continue
        mb = np.maximum(rows[:, col + 4], 1.0)
        fwd, bwd = float((rows[:, col] / mb).max()) * d, float((rows[:, col + 1] / mb).max()) * d
        ar = float(rows[:, col + 3].max()) / max(iters, 1) * d
        step = float((rows[:, col + 2] - rows[:, col + 3]).max()) / max(iters, 1) * d
        p_fwd = st.forward_s
        out.append({"stage": st.index, "forward_s": [fwd, p_fwd],
                    "backward_s": [bwd, None if p_fwd is None else st.compute_s - p_fwd],
                    "optimizer_s": [step, None], "allreduce_s": [ar, None]})
    return out


def boards(t: np.ndarray, epoch_s: float, job, ranks) -> dict:
    """Per board over the epoch's training: CPU seconds and utilisation (in cores of the machine the
    ranks ran on), peak resident memory of its ranks, and network bytes (the board's interfaces;
    measured only where each board has its own, i.e. on real boards or in the emulated testbed)."""
    if t.shape[1] < 9 + RESOURCE_COLUMNS:
        return {}
    out = {}
    for dev in sorted({r.device for r in ranks}):
        rows = t[[r.rank for r in ranks if r.device == dev]]
        cpu = float(rows[:, 9].sum())
        out[dev] = {"cpu_s": cpu, "cpu_cores": cpu / epoch_s if epoch_s > 0 else 0.0,
                    "peak_rss_bytes": int(rows[:, 10].sum()),
                    # ranks of one board read the same interface counters: take one, not their sum
                    "net_rx_bytes": None if job.local else int(rows[:, 11].max()),
                    "net_tx_bytes": None if job.local else int(rows[:, 12].max())}
    return out


def energy(busy: np.ndarray, epoch_s: float, iters: int, batch: int, job, ranks, predicted) -> dict:
    """Energy of the epoch: boards' idle power over the epoch plus busy power over their compute time."""
    power = {dev: (idle, busy_w) for dev, idle, busy_w in job.power}
    if power:
        total = 0.0
        devices = {r.device for r in ranks}
        for dev in devices:
            idle, busy_w = power.get(dev, (0.0, 0.0))
            b = min(sum(busy[r.rank] for r in ranks if r.device == dev), epoch_s)
            total += idle * (epoch_s - b) + busy_w * b
        return {"joules": total * job.dilation, "source": "measured busy time x board power profiles"}
    per_sample = predicted.energy_j
    return {"joules": per_sample * iters * batch, "source": "plan prediction (no power profiles in artifacts)"}


def format_epoch(row: dict) -> str:
    pred = row["predicted_iter_s"]
    pred_s = f"{pred * 1e3:.1f} ms" if pred else "n/a"
    test = f"  test acc {row['test_accuracy'] * 100:.2f}%" if row.get("test_accuracy") is not None else ""
    board = f" (boards {row['board_iter_s'] * 1e3:.1f} ms at dilation {row['dilation']:.3g})" \
        if row.get("dilation", 1.0) != 1.0 else ""
    def ms(pair) -> str:
        got, want = pair
        return f"{got * 1e3:.2f}" + (f"/{want * 1e3:.2f}" if want is not None else "/-")

    stages = "".join(f"\n  stage {s['stage']} (board ms, measured/predicted): forward {ms(s['forward_s'])}  "
                     f"backward {ms(s['backward_s'])} per micro-batch; optimizer {ms(s['optimizer_s'])}  "
                     f"all-reduce {ms(s['allreduce_s'])} per iteration" for s in row.get("stages") or ())
    return (f"epoch {row['epoch']}: loss {row['loss']:.4f}  acc {row['accuracy'] * 100:.2f}%{test}  "
            f"time {row['epoch_s']:.2f} s  {row['samples_per_s']:.1f} samples/s  "
            f"iter measured {row['measured_iter_s'] * 1e3:.1f} ms{board} vs predicted {pred_s}  "
            f"energy {row['energy_j']['joules']:.3g} J{stages}")


# --- predictions of the measured figures (issue 14 item 5) ------------------------------------------------


def predict(plan, graph, cluster) -> dict:
    """What the cost model predicts for each figure a training run measures, per stage replica (board seconds):
    forward and backward module time and the stage calls' overhead per micro-batch, point-to-point receive
    time per micro-batch (activations from upstream, gradients from downstream: link + torch.distributed's
    fitted overhead), and per iteration the optimizer step and the gradient all-reduce (bytes, group).

    ``plan``: a Plan of mode training; ``graph`` its LayerGraph; ``cluster`` the cluster it was planned on
    (fitted training figures included: profiles.model.TrainingFigures). Pure numpy (planner and profiles).
    """
    from edgeplan.planner.api import evaluate, layout_of
    from edgeplan.planner.costmodel import Prefix, allreduce, exchange_peers, pair_samples
    from edgeplan.planner.objective import Objective
    from edgeplan.profiles.cost import build_cost_table

    costs = build_cost_table(graph, cluster)
    obj = Objective(mode="training", objective=plan.objective, batch=plan.batch, microbatches=plan.microbatches,
                    schedule=plan.schedule, head=plan.head, optimizer_states=plan.optimizer_states)
    layout = layout_of(costs, plan)
    ev = evaluate(costs, layout, obj)
    pf = Prefix(costs, obj)
    tc = costs.training
    ends = [tuple((costs.units[u][0], k) for u, k in st.replicas) for st in layout]

    batch = max(1, graph.batch)
    flops_f = np.array([la.flops_fwd for la in graph.layers], dtype=np.float64) / batch
    flops_b = np.array([la.flops_bwd for la in graph.layers], dtype=np.float64) / batch
    peak = [cluster.devices[d].unit(name).peak_flops or np.inf for d, name, _ in costs.units]

    def receives(s: int, r: int, cut: float, peers: int, link_only: bool = False) -> float:
        """Seconds replica ``r`` of stage ``s`` spends receiving one micro-batch's tensors from stage ``peers``."""
        src, dst = ends[peers], ends[s]
        t = 0.0
        for a, b, n in pair_samples(tuple(k for _, k in src), tuple(k for _, k in dst)):
            x, y = src[a][0], dst[b][0]
            if b != r or x == y:
                continue
            nbytes = n * cut
            t += nbytes / float(costs.bandwidth[x, y]) + float(costs.latency_s[x, y])
            if tc is not None and not link_only:
                call, per_byte = np.maximum(tc.p2p[x], tc.p2p[y])
                t += float(call + per_byte * nbytes)
        return t

    stages = []
    for s, (st, se) in enumerate(zip(layout, ev.stages, strict=True)):
        i, j = st.start, st.stop
        params = float(pf.P[j] - pf.P[i])
        reps = []
        for r, (u, k) in enumerate(st.replicas):
            fs = 1.0 if tc is None else float(tc.fwd_scale[u])
            bs = 1.0 if tc is None else float(tc.bwd_scale[u])
            # torch's per-call cost of the module's forward and backward (in the cost model's per-call term)
            cf, cb = (0.0, 0.0) if tc is None or tc.module_call_s is None else map(float, tc.module_call_s[u])
            fixed_f, fixed_b = (costs.fixed_s, costs.fixed_s) if tc is None else tc.fixed(costs.fixed_s)
            lo = cluster.devices[costs.units[u][0]].unit(costs.units[u][1]).layer_overhead_s
            reads = float(costs.fixed_s[u, i:j].sum()) - lo * (j - i)  # weight reads (fixed_s less the overheads)
            p2p, link = ((receives(s, r, float(pf.cut[i]), s - 1, lo) if s > 0 else 0.0) + (
                receives(s, r, float(pf.cut[j]), s + 1, lo) if s + 1 < len(layout) else 0.0) for lo in (False, True))
            reps.append({
                "device": costs.devices[costs.units[u][0]], "unit": costs.units[u][1], "samples": k,
                "forward_s": fs * k * float(costs.fwd_s[u, i:j].sum()) + float(fixed_f[u, i:j].sum()) + cf,
                "backward_s": bs * k * float(costs.bwd_s[u, i:j].sum()) + float(fixed_b[u, i:j].sum()) + cb,
                # the fit's columns at factor 1 and no per-layer time: per-sample time + weight reads, layers
                "forward_terms": [k * float(costs.fwd_s[u, i:j].sum()) + reads, j - i],
                "backward_terms": [k * float(costs.bwd_s[u, i:j].sum()) + reads, j - i],
                "call_s": float(pf.H[u] - cf - cb + k * (pf.HBi[u] * pf.cut[i] + pf.HBo[u] * pf.cut[j]))
                + (0.0 if tc is None else float(tc.call_peer_s[u]) * len(exchange_peers(ends, s, r))),
                "peers": len(exchange_peers(ends, s, r)),
                "optimizer_s": 0.0 if tc is None else float(tc.opt_call_s[u] + params * tc.opt_byte_s[u]),
                "p2p_s": p2p, "p2p_link_s": link,
                "forward_peak_s": k * float(flops_f[i:j].sum()) / peak[u],
                "backward_peak_s": k * float(flops_b[i:j].sum()) / peak[u],
            })
        group = tuple(costs.units[u][0] for u, _ in st.replicas)
        link_ar = allreduce(dataclasses.replace(costs, training=None), group, params)[0]
        stages.append({"stage": s, "param_bytes": params, "allreduce_s": se.allreduce_s, "allreduce_link_s": link_ar,
                       "allreduce_bytes": params if len(st.replicas) > 1 else 0.0,
                       "group": [r["device"] for r in reps], "replicas": reps})
    return {"iter_s": ev.iter_s, "cluster_sha256": cluster.digest(), "stages": stages}


def _pair(measured: float | None, predicted: float | None) -> list:
    return [measured, predicted]


def _modelled_memory(stages, stage: int, device: str, unit: str) -> tuple[int, int] | None:
    """(the plan's modelled bytes of a replica, its rank's torch reserve) for the memory beside its peak RSS."""
    for st in stages:
        if st.index == stage:
            for r in st.replicas:
                if r.device == device and r.unit == unit:
                    return r.memory_bytes, r.reserve_bytes
    return None


def replica_figures(t: np.ndarray, iters: int, job, ranks, predicted: dict | None, stages=()) -> list[dict]:
    """Per plan stage and replica, each measured figure (board seconds: measured x the testbed's dilation)
    beside the prediction of the same quantity (``predict``; None where the artifacts carry none).

    Per micro-batch: forward, backward, the stage calls' overhead, point-to-point receive (transfer time from
    each header's arrival to its payload's, with bytes); per iteration: the optimizer step and the gradient
    all-reduce. The stage's all-reduce is the group's fastest replica's: the others also wait there for the
    last replica to finish its backward passes. Memory: the rank's peak resident bytes (its whole process, the
    run's start-up included) beside the plan's (``stages``) modelled bytes + torch reserve, and the modelled
    bytes alone (``model_memory_bytes``: `edgeplan calibrate` fits the reserve as peak - modelled)."""
    col = 9 + RESOURCE_COLUMNS
    if t.shape[1] < col + PHASE_COLUMNS:
        return []
    d, it = job.dilation, max(iters, 1)
    pred = {s["stage"]: s for s in (predicted or {}).get("stages", ())}
    out = []
    for s in sorted({r.stage for r in ranks}):
        group = [r for r in ranks if r.stage == s]
        ps = pred.get(s)
        reps = []
        for r in group:
            row = t[r.rank]
            mb = max(row[col + 4], 1.0)
            pr = ps["replicas"][r.replica] if ps and r.replica < len(ps["replicas"]) else {}
            mem = _modelled_memory(stages, s, r.device, r.unit)
            reps.append({
                "rank": r.rank, "device": r.device, "unit": r.unit, "samples": r.hi - r.lo,
                "microbatches": int(row[col + 4]),
                "forward_s": _pair(row[col] / mb * d, pr.get("forward_s")),
                "backward_s": _pair(row[col + 1] / mb * d, pr.get("backward_s")),
                "call_s": _pair(row[col + 5] / mb * d, pr.get("call_s")),
                "optimizer_s": _pair((row[col + 2] - row[col + 3]) / it * d, pr.get("optimizer_s")),
                "allreduce_s": _pair(row[col + 3] / it * d, ps.get("allreduce_s") if ps else None),
                "p2p_s": _pair(row[col + 6] / mb * d, pr.get("p2p_s")),
                "p2p_bytes": row[col + 7] / mb, "p2p_transfers": row[col + 8] / mb,
                # the compute thread's CPU seconds per micro-batch (board_seconds turns them into board time)
                "cpu_s": {"forward_s": row[col + 9] / mb, "backward_s": row[col + 10] / mb,
                          "call_s": row[col + 11] / mb},
                "peak_rss_bytes": [int(row[10]), None if mem is None else mem[0] + mem[1]],
                "model_memory_bytes": None if mem is None else mem[0],
            })
        out.append({"stage": s, "group": [r.device for r in group],
                    "param_bytes": ps.get("param_bytes") if ps else None,
                    "allreduce_bytes": ps.get("allreduce_bytes") if ps else None,
                    "allreduce_s": _pair(min(x["allreduce_s"][0] for x in reps), ps.get("allreduce_s") if ps
                                         else None),
                    "replicas": reps})
    return out


def with_predictions(row: dict, predicted: dict | None) -> dict:
    """An epoch row whose ``figures`` carry the predictions (``predict``) beside the measurements."""
    if not predicted or not row.get("figures"):
        return row
    pred = {s["stage"]: s for s in predicted["stages"]}
    figures = []
    for st in row["figures"]:
        ps = pred.get(st["stage"])
        if ps is None:
            figures.append(st)
            continue
        reps = []
        for r in st["replicas"]:
            pr = next((x for x in ps["replicas"] if x["device"] == r["device"] and x["unit"] == r["unit"]), {})
            reps.append({**r, **{k: [r[k][0], pr.get(k)] for k in REPLICA_FIGURES}})
        figures.append({**st, "param_bytes": ps["param_bytes"], "allreduce_bytes": ps["allreduce_bytes"],
                        "allreduce_s": [st["allreduce_s"][0], ps["allreduce_s"]], "replicas": reps})
    return {**row, "figures": figures, "predicted_iter_s_cluster": predicted.get("iter_s")}


REPLICA_FIGURES = ("forward_s", "backward_s", "call_s", "optimizer_s", "p2p_s")


def format_figures(row: dict) -> str:
    """The table `edgeplan train` prints at the end: per stage replica, measured/predicted ms and the error."""
    def cell(pair) -> str:
        got, want = pair
        err = f" {100 * (want - got) / got:+.0f}%" if want is not None and got else ""
        return f"{got * 1e3:.2f}/" + ("-" if want is None else f"{want * 1e3:.2f}") + err

    lines = [f"{'stage':<6}{'board:unit':<14}{'k':>3}  " + "  ".join(
        f"{h:<22}" for h in ("forward", "backward", "call overhead", "p2p receive", "optimizer", "all-reduce"))]
    for st in row.get("figures") or ():
        for r in st["replicas"]:
            lines.append(f"{st['stage']:<6}{r['device'] + ':' + r['unit']:<14}{r['samples']:>3}  " + "  ".join(
                f"{cell(r[k]):<22}" for k in ("forward_s", "backward_s", "call_s", "p2p_s", "optimizer_s"))
                + f"  {cell(st['allreduce_s']):<22}")
        if st.get("allreduce_bytes"):
            lines.append(f"      all-reduce of {st['allreduce_bytes'] / 1e6:.3g} MB over {', '.join(st['group'])} "
                         "(the group's fastest replica; the others also wait for the slowest)")
    mem = [f"{r['device']}:{r['unit']} {r['peak_rss_bytes'][0] / 2**20:.0f}/"
           + ("-" if r["peak_rss_bytes"][1] is None else f"{r['peak_rss_bytes'][1] / 2**20:.0f}")
           for st in row.get("figures") or () for r in st["replicas"] if r.get("peak_rss_bytes")]
    if mem:
        lines.append("peak RSS/modelled MB per rank (modelled: the stage's memory + the torch reserve): "
                     + ", ".join(mem))
    pred = row.get("predicted_iter_s_cluster") or row.get("predicted_iter_s")
    it = row["board_iter_s"]
    lines.append(f"iteration: measured {it * 1e3:.1f} ms, predicted " + (
        f"{pred * 1e3:.1f} ms ({100 * (pred - it) / it:+.0f}%)" if pred else "-"))
    return ("measured/predicted board ms (forward, backward, call overhead, p2p receive per micro-batch; "
            "optimizer, all-reduce per iteration):\n" + "\n".join(lines) + "\n")


CPU_FIGURES = ("forward_s", "backward_s", "call_s")


def board_seconds(row: dict, cores: dict[str, float], dilation: float) -> dict:
    """An epoch row whose compute figures (forward, backward, call overhead) are each board's CPU seconds /
    its CPU quota x dilation, where the board runs under a quota of at most one core (the emulated testbed):
    a quota only caps, so on a machine other tenants load a rank waits for the CPU and its wall time measures
    them; back to back, a call costs the board its CPU / quota (profiles/calibrate.board_module_s does the
    same for inference). The wall-time figure stays as ``<figure>_wall``."""
    if not row.get("figures") or not cores:
        return row
    figures = []
    for st in row["figures"]:
        reps = []
        for r in st["replicas"]:
            quota = cores.get(r["device"])
            if not quota or quota > 1.0 or "cpu_s" not in r:
                reps.append(r)
                continue
            reps.append({**r, **{f"{f}_wall": r[f] for f in CPU_FIGURES},
                         **{f: [r["cpu_s"][f] / quota * dilation, r[f][1]] for f in CPU_FIGURES}})
        figures.append({**st, "replicas": reps})
    return {**row, "figures": figures}
