"""CostTable: per-(unit, layer) times and per-link costs as plain numpy arrays.

This is the whole interface between profiles/ and planner/: the planner never
sees a LayerGraph's tensors or a profile's YAML, only these arrays. All compute
figures are per sample; a micro-batch of ``m`` samples of layers ``[i, j)`` on
unit ``u`` takes ``m * fwd_s[u, i:j].sum() + fixed_s[u, i:j].sum()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeplan.graph.model import LayerGraph
from edgeplan.profiles.model import Cluster, HeadHost


@dataclass(frozen=True, eq=False)
class TrainingCosts:
    """The units' fitted training figures (profiles.model.TrainingFigures) as arrays; priced by the planner's
    cost model only for training plans (None in a CostTable when no unit has any)."""

    fwd_scale: np.ndarray  # [u] x a layer's forward seconds and per-layer overhead
    bwd_scale: np.ndarray  # [u] x its backward seconds and per-layer overhead (measured backward/forward)
    layer_s: np.ndarray  # [u, 2] per layer of a forward, a backward pass; NaN: layer_overhead x the factor
    layer_overhead_s: np.ndarray  # [u] the unit's layer_overhead_s (in CostTable.fixed_s; a fitted layer_s replaces it)
    call_s: np.ndarray  # [u] per stage call beyond the module; NaN: the unit's hop cost
    call_peer_s: np.ndarray  # [u] per micro-batch and neighbour replica it exchanges tensors with
    opt_byte_s: np.ndarray  # [u] optimizer step seconds per parameter byte
    opt_call_s: np.ndarray  # [u] ... and per step
    p2p: np.ndarray  # [d, 2] per transfer, per byte: torch.distributed beyond the link (max over the units)
    allreduce: np.ndarray  # [d, 2] per ring step, per byte reduced
    module_call_s: np.ndarray | None = None  # [u, 2] per forward, backward call of a stage's module; None: 0

    def fixed(self, fixed_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[u, n] per-call seconds of each layer's forward and backward pass: the weight reads of ``fixed_s``
        scaled by each pass's factor, plus the fitted per-layer time (else the layer overhead, scaled)."""
        lo = self.layer_overhead_s[:, None]
        reads = fixed_s - lo
        out = []
        for k, scale in enumerate((self.fwd_scale[:, None], self.bwd_scale[:, None])):
            fitted = self.layer_s[:, k][:, None]
            out.append(reads * scale + np.where(np.isnan(fitted), lo * scale, fitted))
        return out[0], out[1]


@dataclass(frozen=True, eq=False)
class CostTable:
    layer_names: tuple[str, ...]  # n layers, topological order of the LayerGraph
    layer_ops: tuple[str, ...]  # op kind per layer
    devices: tuple[str, ...]  # d devices
    units: tuple[tuple[int, str, str], ...]  # u units: (device index, unit name, target)
    fwd_s: np.ndarray  # [u, n] forward seconds per sample
    bwd_s: np.ndarray  # [u, n] backward seconds per sample
    fixed_s: np.ndarray  # [u, n] per-call overhead seconds (independent of batch)
    supported: np.ndarray  # [u, n] bool: unit can run layer
    param_bytes: np.ndarray  # [n]
    act_bytes: np.ndarray  # [n] output activation bytes per sample (stashed for backward)
    cut_bytes: np.ndarray  # [n + 1] bytes per sample crossing a cut after k layers
    ram_bytes: np.ndarray  # [d] usable memory
    idle_power_w: np.ndarray  # [d]
    busy_power_w: np.ndarray  # [u]
    bandwidth: np.ndarray  # [d, d] bytes/s (diagonal: inf)
    latency_s: np.ndarray  # [d, d]
    energy_per_byte_j: np.ndarray  # [d, d]
    hop_s: np.ndarray | None = None  # [u] runtime cost per stage call (receive, assemble, send); None: 0
    hop_byte_s: np.ndarray | None = None  # [u] runtime seconds per byte a stage call takes in (and sends out)
    hop_send_byte_s: np.ndarray | None = None  # [u] ... per byte it sends out; None: hop_byte_s both ways
    # [u] bytes/s of the unit's memory (the profile's mem_bandwidth_gbs): a hand-over between two units of one board
    # is a copy through it (units.handover_s_per_byte), not the socket path hop_byte_s measures; None: synthetic
    mem_bandwidth: np.ndarray | None = None
    # [n + 1] bool: codegen can split after k layers (LayerGraph.cut_allowed: every live tensor has one batch
    # dimension); None: every cut can
    cut_ok: np.ndarray | None = None
    training: TrainingCosts | None = None  # fitted training figures (calibrate_train); None: none
    # [d] bytes each torch training rank on the board holds beyond its model (Device.train_reserve; the planner
    # reserves it per training rank); None: 0 (synthetic tables)
    train_reserve_bytes: np.ndarray | None = None
    # device where requests enter and results leave when the objective names none: the first device, the
    # cluster's ``head:`` board, or an off-board host (``Cluster.head``: a HeadHost) appended as the last
    # device, with no units (it runs no stage) and its link to every board
    head: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_devices(self) -> int:
        return len(self.devices)


HOP_COPIES = 2  # bytes copied per stage call: socket -> assembled input, output -> socket


def hop_byte_s(unit) -> float:
    """The runtime's seconds per byte a stage call of ``unit`` receives or sends: the profile's
    ``hop_byte_ns`` when set, else ``HOP_COPIES`` copies at its memory bandwidth."""
    return unit.hop_byte_s if unit.hop_byte_s is not None else HOP_COPIES / unit.mem_bandwidth


def hop_send_byte_s(unit) -> float:
    """The runtime's seconds per byte a stage call of ``unit`` sends: ``hop_send_byte_ns`` where the profile
    says sending costs other than receiving, else ``hop_byte_s``."""
    return unit.hop_send_byte_s if unit.hop_send_byte_s is not None else hop_byte_s(unit)


def build_cost_table(graph: LayerGraph, cluster: Cluster) -> CostTable:
    """Price every layer of ``graph`` on every compute unit of ``cluster``, per sample.

    The LayerGraph's figures are for its traced batch ``B = graph.batch``; all
    per-sample figures below divide by ``B``. For layer ``l`` on unit ``u``
    (``thr``: the unit's FLOP/s for the layer's op class, ``bw``: its memory
    bandwidth):

    - ``a_in``  = bytes of the layer's distinct input tensors / B,
      ``a_out`` = its output bytes / B
    - ``fwd_s[u, l]   = max(flops_fwd / B / thr, (a_in + a_out) / bw)``  (roofline)
    - ``bwd_s[u, l]   = max(flops_bwd / B / thr, (2 a_in + a_out) / bw)``
      (backward reads the output gradient and the stashed input, writes the
      input gradient)
    - ``fixed_s[u, l] = layer_overhead_s + param_bytes / bw``: weights are read
      once per call whatever the micro-batch size, so their read time is a
      per-call cost, not a per-sample one. A training step pays it once for the
      forward and once for the backward call (reading W, writing dW).
    - ``hop_s[u] = hop_overhead_s`` and ``hop_byte_s[u]``: the runtime's cost of
      one stage call on top of its layers (the worker receives and assembles its
      inputs and sends its outputs), per call and per byte in or out; paid per
      micro-batch, per stage, per replica. The per-byte figure is the unit's
      ``hop_byte_ns`` (measured by the profiling kit or `edgeplan calibrate`: the
      socket path costs ~12x two copies on the host) or, when the profile has
      none, ``HOP_COPIES / bw`` (each byte copied ``HOP_COPIES`` times);
      ``hop_send_byte_s[u]`` prices the bytes a call sends where the profile's
      ``hop_send_byte_ns`` says that costs otherwise (else ``hop_byte_s``).
    - a layer the unit cannot run (``supported`` False, e.g. layernorm on an
      RK3566 NPU) gets ``inf`` in all three, so any stage containing it is
      infeasible on that unit even if a caller forgets to check ``supported``.
    """
    n = len(graph.layers)
    batch = max(1, graph.batch)
    allowed = graph.cut_allowed()
    sizes = {t.name: t.nbytes for t in graph.inputs}
    sizes.update({layer.name: layer.out_bytes for layer in graph.layers})
    flops_f = np.array([layer.flops_fwd for layer in graph.layers], dtype=np.float64) / batch
    flops_b = np.array([layer.flops_bwd for layer in graph.layers], dtype=np.float64) / batch
    a_out = np.array([layer.out_bytes for layer in graph.layers], dtype=np.float64) / batch
    a_in = np.array([sum(sizes.get(name, 0) for name in dict.fromkeys(layer.inputs)) for layer in graph.layers],
                    dtype=np.float64) / batch
    params = np.array([layer.param_bytes for layer in graph.layers], dtype=np.float64)
    classes = [layer.op_class for layer in graph.layers]
    ops = tuple(layer.op for layer in graph.layers)

    units = [(di, dev, unit) for di, dev in enumerate(cluster.devices) for unit in dev.units]
    u = len(units)
    fwd = np.empty((u, n))
    bwd = np.empty((u, n))
    fixed = np.empty((u, n))
    supported = np.empty((u, n), dtype=bool)
    for k, (_, _, unit) in enumerate(units):
        rate = dict(unit.throughput)
        thr = np.array([rate[c] for c in classes], dtype=np.float64)
        bw = unit.mem_bandwidth
        fwd[k] = np.maximum(flops_f / thr, (a_in + a_out) / bw)
        bwd[k] = np.maximum(flops_b / thr, (2 * a_in + a_out) / bw)
        fixed[k] = unit.layer_overhead_s + params / bw
        supported[k] = [unit.supports(op) for op in ops]
    for arr in (fwd, bwd, fixed):
        arr[~supported] = np.inf

    d = len(cluster.devices)
    host = cluster.head if isinstance(cluster.head, HeadHost) else None
    names = tuple(dev.name for dev in cluster.devices) + ((host.name,) if host else ())
    dh = len(names)
    bandwidth = np.full((dh, dh), np.inf)
    latency = np.zeros((dh, dh))
    energy = np.zeros((dh, dh))
    for a in range(d):
        for b in range(d):
            if a != b:
                link = cluster.link(cluster.devices[a].name, cluster.devices[b].name)
                bandwidth[a, b] = link.bandwidth
                latency[a, b] = link.latency_s
                energy[a, b] = link.energy_per_byte_j
    if host:  # the off-board head: one link to every board, both ways
        bandwidth[d, :d] = bandwidth[:d, d] = host.bandwidth
        latency[d, :d] = latency[:d, d] = host.latency_s
        energy[d, :d] = energy[:d, d] = host.energy_per_byte_j
    pad = [0.0] if host else []  # the host's RAM, idle power and reserve: it runs no stage
    head = d if host else (names.index(cluster.head) if cluster.head else 0)

    return CostTable(
        layer_names=tuple(layer.name for layer in graph.layers),
        layer_ops=ops,
        devices=names,
        units=tuple((di, unit.name, unit.target) for di, _, unit in units),
        fwd_s=fwd, bwd_s=bwd, fixed_s=fixed, supported=supported,
        param_bytes=params,
        act_bytes=a_out,
        cut_bytes=np.array(graph.cut_bytes, dtype=np.float64) / batch,
        ram_bytes=np.array([dev.ram_bytes for dev in cluster.devices] + pad, dtype=np.float64),
        idle_power_w=np.array([dev.idle_power_w for dev in cluster.devices] + pad, dtype=np.float64),
        busy_power_w=np.array([unit.busy_power_w for _, _, unit in units], dtype=np.float64),
        bandwidth=bandwidth, latency_s=latency, energy_per_byte_j=energy,
        hop_s=np.array([unit.hop_overhead_s for _, _, unit in units], dtype=np.float64),
        hop_byte_s=np.array([hop_byte_s(unit) for _, _, unit in units], dtype=np.float64),
        hop_send_byte_s=(None if all(unit.hop_send_byte_s is None for _, _, unit in units)
                         else np.array([hop_send_byte_s(unit) for _, _, unit in units], dtype=np.float64)),
        mem_bandwidth=np.array([unit.mem_bandwidth for _, _, unit in units], dtype=np.float64),
        cut_ok=None if all(allowed) else np.array(allowed, dtype=bool),
        train_reserve_bytes=np.array([float(dev.train_reserve()[0]) for dev in cluster.devices] + pad,
                                     dtype=np.float64),
        training=_training_costs(cluster, [unit for _, _, unit in units], [di for di, _, _ in units], dh),
        head=head,
    )


def _training_costs(cluster: Cluster, units: list, unit_device: list[int], d: int) -> TrainingCosts | None:
    figs = [u.training for u in units]
    if all(f is None for f in figs):
        return None
    from edgeplan.profiles.model import TrainingFigures

    figs = [f or TrainingFigures() for f in figs]
    p2p, ar = np.zeros((d, 2)), np.zeros((d, 2))
    for f, di in zip(figs, unit_device, strict=True):
        p2p[di] = np.maximum(p2p[di], (f.p2p_call_s, f.p2p_s_per_byte))
        ar[di] = np.maximum(ar[di], (f.allreduce_call_s, f.allreduce_s_per_byte))
    return TrainingCosts(
        fwd_scale=np.array([f.forward_factor for f in figs], dtype=np.float64),
        bwd_scale=np.array([f.backward_factor for f in figs], dtype=np.float64),
        layer_s=np.array([[np.nan if x is None else x for x in (f.forward_layer_s, f.backward_layer_s)] for f in figs],
                         dtype=np.float64).reshape(len(figs), 2),
        layer_overhead_s=np.array([u.layer_overhead_s for u in units], dtype=np.float64),
        call_s=np.array([np.nan if f.call_s is None else f.call_s for f in figs], dtype=np.float64),
        call_peer_s=np.array([f.call_peer_s for f in figs], dtype=np.float64),
        opt_byte_s=np.array([f.optimizer_s_per_byte for f in figs], dtype=np.float64),
        opt_call_s=np.array([f.optimizer_call_s for f in figs], dtype=np.float64), p2p=p2p, allreduce=ar,
        module_call_s=np.array([[f.forward_call_s, f.backward_call_s] for f in figs], dtype=np.float64))
