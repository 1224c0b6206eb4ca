"""A lower bound on any plan's objective, for instances too large for the ILP.

Relaxation: every board may run any part of any layer for any fraction of the
micro-batch (no stages, no memory limits, no links), on its fastest unit for
that layer. A per-call cost ``X`` (a layer's overhead and weight reads, the
runtime's hop ``H`` per stage call) is paid by every replica that runs the
layer at all, so running ``x`` of ``m`` samples costs at least ``x X / m`` (the
LP relaxation of "paid once if x > 0"); every sample goes through a first stage
call (``H``, copying its input in: ``HB cut_0``) and has its output copied out
(``HB cut_n``): two more "layers" every sample needs.
The smallest time ``P*`` in which the boards, working in parallel, finish ``m``
samples of every layer is an LP (HiGHS):

    min P   s.t.   sum_d x[d, l] = m  (every layer),   sum_l t[d, l] x[d, l] <= P  (every board),   x >= 0

Every plan's slowest resource takes at least ``P*`` per micro-batch.

A second relaxation bounds the path a micro-batch takes: its stages run one after
another, and a stage's group has at most ``m`` replicas (each needs a sample), so
a stage takes at least, for each of its layers, ``m / sum(1 / t)`` over the ``m``
boards fastest at that layer (``max_r k_r t_r >= sum_r k_r / sum_r 1 / t_r``, and
splitting per layer can only beat one split for the whole stage). Summed over the
layers (and the two copies) this is ``S``; its largest term ``B`` (one layer) also
bounds every stage. With ``P = max(P*, B)``:
throughput period >= P; latency (M micro-batches) >= S + (M-1) P (``sum p + (M-1) max p``);
training iteration >= S + (M-1) P + the smallest optimizer step any unit makes (``sum p + (M-1) max p +
max tail``: every plan has a stage, and its tail is at least its optimizer step; 0 without fitted figures);
energy per sample >= the cheapest above-idle energy of every layer + the least idle power x P / m.
"""

from __future__ import annotations

import numpy as np

from edgeplan.planner.costmodel import TRAINABLE_TARGETS, Prefix
from edgeplan.planner.objective import Objective
from edgeplan.profiles.cost import CostTable


def _per_board(costs: CostTable, obj: Objective) -> tuple[np.ndarray, np.ndarray]:
    """[D, n + 2] seconds per sample of each layer (and the runtime's copy in and copy out) on each board's
    fastest unit, and the energy above idle (module docstring)."""
    sup = np.asarray(costs.supported, dtype=bool)
    if obj.training:
        sup = sup & np.array([t in TRAINABLE_TARGETS for _, _, t in costs.units], dtype=bool)[:, None]
    pf = Prefix(costs, obj)
    m = float(obj.micro)
    layer = np.diff(pf.F, axis=1) + np.diff(pf.X, axis=1) / m  # fwd (+bwd) + its share of the per-call cost
    # the first stage's call (its hop and copying the input in) and the last one's copying the output out
    copies = np.stack([pf.HBi * pf.cut[0] + pf.H / m, pf.HBo * pf.cut[-1]], axis=1)
    per = np.concatenate([np.where(sup, layer, np.inf), copies], axis=1)
    D, n = costs.n_devices, costs.n_layers + 2
    t = np.full((D, n), np.inf)
    e = np.full((D, n), np.inf)
    busy = np.asarray(costs.busy_power_w, dtype=np.float64)
    for u, (d, _, _) in enumerate(costs.units):
        t[d] = np.minimum(t[d], per[u])
        above = max(busy[u] - float(costs.idle_power_w[d]), 0.0)
        e[d] = np.minimum(e[d], np.where(np.isfinite(per[u]), above * np.where(np.isfinite(per[u]), per[u], 0.0),
                                         np.inf))
    return t, e


def period_bound(costs: CostTable, obj: Objective) -> float | None:
    """``P*`` (seconds per micro-batch), or None when some layer runs nowhere."""
    import highspy

    t, _ = _per_board(costs, obj)
    D, n = t.shape
    if not np.isfinite(t).any(axis=0).all():
        return None
    m = float(obj.micro)
    idx = [(d, ly) for d in range(D) for ly in range(n) if np.isfinite(t[d, ly])]
    nv = len(idx) + 1
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    cost = np.zeros(nv)
    cost[-1] = 1.0
    h.addVars(nv, np.zeros(nv), np.full(nv, highspy.kHighsInf))
    h.changeColsCost(nv, np.arange(nv), cost)
    by_layer: list[list[int]] = [[] for _ in range(n)]
    by_board: list[list[int]] = [[] for _ in range(D)]
    for k, (d, ly) in enumerate(idx):
        by_layer[ly].append(k)
        by_board[d].append(k)
    for ly in range(n):
        h.addRow(m, m, len(by_layer[ly]), np.array(by_layer[ly]), np.ones(len(by_layer[ly])))
    for d in range(D):
        if by_board[d]:
            cols = np.array(by_board[d] + [nv - 1])
            vals = np.array([t[idx[k]] for k in by_board[d]] + [-1.0])
            h.addRow(-highspy.kHighsInf, 0.0, len(cols), cols, vals)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return float(h.getInfo().objective_function_value) * (1 - 1e-9)  # solver tolerance: stay below


def path_bound(costs: CostTable, obj: Objective) -> tuple[float, float] | None:
    """(``S``, ``B``): a micro-batch's path through its stages and the slowest single layer, each with the
    ``m`` fastest boards splitting it (module docstring); None when some layer runs nowhere."""
    t, _ = _per_board(costs, obj)
    if not np.isfinite(t).any(axis=0).all():
        return None
    m = int(obj.micro)
    fast = np.sort(t, axis=0)[:m]  # the m fastest boards per layer (inf where fewer run it)
    with np.errstate(divide="ignore"):
        speed = np.where(np.isfinite(fast), 1.0 / fast, 0.0).sum(axis=0)
    per = np.where(speed > 0, m / np.where(speed > 0, speed, 1.0), 0.0)
    per = np.where(np.isinf(speed), 0.0, per)
    return float(per.sum()) * (1 - 1e-9), float(per.max()) * (1 - 1e-9)


def lower_bound(costs: CostTable, obj: Objective) -> float | None:
    """A value no plan's ``Evaluation.value(obj)`` can go below (see the module docstring)."""
    p = period_bound(costs, obj)
    path = path_bound(costs, obj)
    if p is None or path is None:
        return None
    s, b = path
    p = max(p, b)
    M = obj.microbatches
    if obj.objective == "throughput":
        return p
    if obj.objective == "latency":
        return s + (M - 1) * p
    if obj.objective == "time":
        tc = costs.training
        return s + (M - 1) * p + (0.0 if tc is None else float(np.min(tc.opt_call_s)) * (1 - 1e-9))
    _, e = _per_board(costs, obj)
    return float(e.min(axis=0).sum()) + float(np.min(costs.idle_power_w)) * p / obj.micro
