"""The default solver: a DP over (layer boundary, remaining devices per type).

``val[r, k, c, d]`` is the best cost of layers ``[bnd[k], n)`` using at most
``r`` devices of each type, where the stage starting at ``bnd[k]`` has link
class ``c`` (what the previous stage's send depends on) and depth ``d`` (stages
from it to the end, only tracked for 1F1B memory). A transition picks a group
composition (devices per type and the unit each type runs on) and the end of
the stage; every option's cost is an array over all ends, from prefix sums.

Passes: ``sum`` minimises an additive cost with every resource's bottleneck key
at most ``theta``; ``max`` minimises the bottleneck. Objectives combine them
(``search.solve``) so that the result is exact whenever no reduction was needed.
When the whole search does not fit its budget, the graph shrinks first: blocks
of layers between cheap cuts (``block_cuts``), as many as fit one budget for all
of the objective's passes, with every group composition kept (mixed board types,
no bundles); the result is then exact on that coarse graph (``coarse``). Only
when even ``MIN_BLOCKS`` blocks do not fit (and for energy, whose threshold
search runs ~30 passes) are the candidate cuts, group shapes and device bundles
reduced instead, and ``notes`` says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edgeplan.planner.costmodel import Layout, Prefix, StageSpec, allocate, head_index
from edgeplan.planner.objective import Objective
from edgeplan.planner.types import DeviceTypes, device_types
from edgeplan.profiles.cost import CostTable

WORK_BUDGET = 6e7  # element-operations per pass before reductions kick in
CHUNK_ROWS = 2048
MIN_BLOCKS = 6  # a coarse graph of fewer blocks than this is too coarse: the search is reduced instead
PRUNE_GRID_SHARE = 4  # _beaten runs when its grid work x this is below the rows a pass walks
EXACT_LINK_SAMPLES = 16  # largest micro-batch whose sends training passes price exactly (classes = samples)
COARSE_WORK = 1.5e8  # element-operations of all passes on a coarse graph (about a CPU second, ResNet-50 x 16)


@dataclass(frozen=True)
class _Comp:
    devs: tuple[int, ...]  # devices per type
    units: tuple[int, ...]  # local unit per type, -1 where absent
    bundles: tuple[int, ...]  # state units per type
    mask: int


class DPSolver:
    peaks = False  # run_pass also tracks each state's bottleneck key along its path (state_peaks)

    def __init__(self, costs: CostTable, objective: Objective, *, work_budget: float = WORK_BUDGET,
                 ignore_memory: bool = False, cuts: np.ndarray | None = None):
        self.costs, self.obj = costs, objective
        self.pf = Prefix(costs, objective)
        self.head = head_index(costs, objective)
        self.types: DeviceTypes = device_types(costs, self.head, objective.training)
        self.ignore_memory = ignore_memory
        self.m, self.M, self.train = objective.micro, objective.microbatches, objective.training
        # training on uniform links prices sends exactly (_setup: one class per busiest-device sample count, so
        # the tables grow with the micro-batch: up to EXACT_LINK_SAMPLES); inference keeps the busiest-sender bound
        self.exact_links = self.types.uniform and self.train and self.m <= EXACT_LINK_SAMPLES
        self.nD = self.M if (self.train and objective.schedule == "1f1b") else 1
        self.notes: list[str] = []
        self.exact = True
        n = costs.n_layers
        T = len(self.types.members)
        self.bundle = [1] * T
        self.mixed = True
        bnd = np.arange(n + 1) if cuts is None else np.array(sorted({0, n} | {int(c) for c in cuts}))
        self.bnd = bnd[self.pf.cut_ok[bnd]]  # only cuts codegen can split
        self.n_cuts = int(self.pf.cut_ok.sum())  # boundaries of the fine graph (0 and n included)
        self.coarse = len(self.bnd) < self.n_cuts  # given cuts: exact on the coarse graph only
        # bigger instances may spend more (targets: ~170 layers x 16 devices < 1 s, 1000 x 64 < 30 s)
        scale = min(8.0, max(1.0, n * costs.n_devices / (170 * 16)))
        work_budget *= scale
        # the coarse graph's budget is for all passes together, so the block count follows the objective's
        # search (throughput: 2 passes; latency and training time: a branch and bound over bottlenecks)
        # (not more for bigger instances: their time goes to the refinement, and the 1000 x 64 target holds)
        self.coarse_budget = COARSE_WORK * (work_budget / (WORK_BUDGET * scale)) / _passes(objective)
        many = objective.objective in ("time", "energy") or (objective.objective == "latency" and self.M > 1)
        if n * costs.n_devices >= 2000:  # large: coarser passes (the refinement fixes cuts and groups after)
            work_budget /= 12 if many else 3
        self.work_budget = work_budget
        depth = self.nD
        self.nD = 1  # 1F1B depth only matters when memory depends on it; checked below
        self.unit_opts = self._undominated_units()
        self._counts: dict[tuple, tuple[float, float]] = {}
        self.cap = self.m  # a group of more devices than samples leaves one without a sample: never valid
        fine = self.bnd
        self.budget = self.work_budget  # what _reduce holds the search to (_coarsen: the coarse budget)
        self._coarsen()
        self._reduce()
        self._build()
        if depth > 1 and not ignore_memory and not self._depth_free(depth):
            self.nD = depth
            if self._work() > self.budget:  # depth states make it bigger: coarsen (or reduce) again
                self.bnd, self.mixed, self.bundle, self.exact = fine, True, [1] * T, True
                self.budget = self.work_budget
                self._coarsen()
                self._reduce()
                self._build()
            else:
                self._build(keep=True)
        self.coarse = len(self.bnd) < self.n_cuts
        self._note_reductions()
        # fitted per-peer call and point-to-point costs (edgeplan calibrate): the evaluator prices them (they
        # depend on the neighbour stages' shares), the passes do not; search.solve then refines, not exact
        tc = costs.training
        self.unpriced = bool(self.train and tc is not None and (np.any(tc.call_peer_s) or np.any(tc.p2p)))
        if self.unpriced:
            self.notes.append("DP heuristic: fitted per-peer call and point-to-point costs (edgeplan calibrate) are "
                              "priced by the evaluator, not by the DP's passes; the plan is refined")

    def _undominated_units(self) -> list[list[int]]:
        """Per type, the local units a group may run on: every unit that runs at least one layer (training:
        NPU and Mali units run none). Units slower on every layer are not dropped here: a slower unit
        takes fewer samples, which can lighten a link (e.g. keep more samples on the head), so only
        whole stage tables tell (``_dominated``)."""
        tp = self.types
        out = []
        for t in range(len(tp.members)):
            keep = [x for x in range(tp.n_units(t)) if (np.diff(self.pf.U[tp.unit(t, x)]) == 0).any()]
            out.append(keep)
        return out

    def _coarsen(self) -> None:
        """Shrink the graph, not the search: when the whole search does not fit the work budget, the
        largest number of blocks (runs of layers between cheap cuts, ``block_cuts``) that lets the DP keep
        every group composition (mixed board types, no bundles) replaces the layer boundaries. The DP is
        then exact on the coarse graph (``coarse``), and ``search.solve`` refines the cuts on the fine one.
        When even ``MIN_BLOCKS`` blocks do not fit, the graph stays and ``_reduce`` cuts the search.
        """
        K = len(self.bnd) - 1
        budget = self.coarse_budget
        if self._work(K) <= self.work_budget:
            return
        if self._work(K) <= budget:  # the whole search fits as it is
            self.budget = budget
            return
        if K <= MIN_BLOCKS or self._work(MIN_BLOCKS) > budget:
            return
        self.budget = budget
        lo, hi = MIN_BLOCKS, K - 1  # work grows with the blocks: the largest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._work(mid) <= budget:
                lo = mid
            else:
                hi = mid - 1
        self.bnd = self._blocks(lo)

    def _blocks(self, k: int) -> np.ndarray:
        pf = self.pf
        work = np.median(np.diff(pf.F, axis=1), axis=0) if pf.F.shape[0] else None
        return block_cuts(pf.cut, k, pf.cut_ok, work)

    def _reduce(self) -> None:
        T = len(self.types.members)
        counts = self.types.counts
        while self._work() > self.budget:
            if len(self.bnd) > 129:
                self.bnd = self._cuts(128)
            elif self.mixed and T > 1:
                self.mixed = False
            elif max(c // b for c, b in zip(counts, self.bundle, strict=True)) > 1:
                t = max(range(T), key=lambda t: (counts[t] // self.bundle[t], -t))
                self.bundle[t] *= 2
            elif len(self.bnd) > 17:
                self.bnd = self._cuts((len(self.bnd) - 1) // 2)
            else:
                break
            self.exact = False

    def _note_reductions(self) -> None:
        T = len(self.types.members)
        if self.coarse and self.exact:
            self.notes.append(f"DP exact on a coarse graph of {len(self.bnd) - 1} blocks (runs of layers between "
                              f"cheap cuts; the full graph has {self.n_cuts - 1}); cuts then refined on the full graph")
        elif len(self.bnd) < self.n_cuts:
            self.notes.append(f"DP heuristic: stage boundaries limited to {len(self.bnd) - 2} candidate cuts "
                              f"(cheapest cut_bytes plus evenly spaced) of {self.n_cuts - 2}")
        if not self.mixed:
            self.notes.append("DP heuristic: replica groups limited to one board type each")
        for t in range(T):
            if self.bundle[t] > 1:
                self.notes.append(f"DP heuristic: boards of type {self._type_name(t)} allocated in bundles of "
                                  f"{self.bundle[t]}")

    def _build(self, keep: bool = False) -> None:
        """Stage tables from scratch; ``keep``: same boundaries and compositions, only the depth changed."""
        self.cache: dict[int, dict] = {}
        self._pre: dict[int, tuple] = {}
        if not keep:
            self._bases: dict[int, dict] = {}
            self._unit_tab: dict = {}
            self._shr: dict[tuple, tuple] = {}
        self._ko = self._stk = None
        self._setup()
        self._rows_cache = None
        self.ws = self._range_max()

    def _depth_free(self, depth: int) -> bool:
        """True when no stage option's shares or fit change between stashing 1 and ``depth`` micro-batches.

        Caps shrink as the stash grows, so equal results at both ends mean equal
        results at every depth between: 1F1B depth states are then not needed.
        """
        for gi in range(len(self.comps)):
            base = self._base(gi)
            s1, ok1 = self._shares_of(gi, 1)
            sd, okd = self._shares_of(gi, depth)
            live = base["valid"]
            if np.any(live & ((ok1 != okd) | np.any(s1 != sd, axis=0))):
                return False
        return True

    # ----------------------------------------------------------------- setup
    def _type_name(self, t: int) -> str:
        return "+".join(self.costs.devices[d] for d in self.types.members[t][:2]) + (
            "..." if len(self.types.members[t]) > 2 else "")

    def _cuts(self, k: int) -> np.ndarray:
        return coarse_cuts(self.pf.cut, k, self.pf.cut_ok)

    def _setup(self) -> None:
        tp = self.types
        T = len(tp.members)
        self.nb = [len(tp.members[t]) // self.bundle[t] for t in range(T)]
        self.stride = [int(np.prod(np.array(self.nb[t + 1:]) + 1)) for t in range(T)]
        self.R = int(np.prod(np.array(self.nb) + 1))
        grid = np.array(list(itertools.product(*[range(c + 1) for c in self.nb])), dtype=np.int64).reshape(-1, T)
        self.grid = grid
        comps = []
        for n in itertools.product(*[range(c + 1) for c in self.nb]):
            if sum(n) == 0 or (not self.mixed and sum(1 for x in n if x) > 1):
                continue
            if sum(x * b for x, b in zip(n, self.bundle, strict=True)) > self.cap:
                continue
            present = [t for t in range(T) if n[t]]
            for units in itertools.product(*[self.unit_opts[t] for t in present]):
                u = [-1] * T
                for t, lu in zip(present, units, strict=False):
                    u[t] = lu
                comps.append(_Comp(devs=tuple(n[t] * self.bundle[t] for t in range(T)), units=tuple(u),
                                   bundles=tuple(n), mask=sum(1 << t for t in present)))
        self.comps = comps
        self.rows = []
        by_devs: dict[tuple, tuple] = {}  # compositions of the same devices (other units) share their rows
        for c in comps:
            if c.bundles not in by_devs:
                ok = np.all(grid >= np.array(c.bundles), axis=1)
                rv = np.nonzero(ok)[0]
                off = sum(b * s for b, s in zip(c.bundles, self.stride, strict=False))
                by_devs[c.bundles] = (rv, rv - off)
            self.rows.append(by_devs[c.bundles])
        # link class of a stage = what the previous stage's send depends on. Training, uniform links (``exact_links``):
        # the stage's busiest device's samples ``x`` (class x - 1; a one-device stage: x = m), since the send
        # from a group whose busiest sender has ``y`` takes ``max(x, y) * bytes / bw + latency`` exactly
        # (costmodel.pair_loads: every device's NIC moves its own samples). Otherwise: whether the stage is
        # one device (it receives every sample) or wide, and (non-uniform links) its board types (a lower
        # bound, below).
        if self.exact_links:
            self.comp_cls = [0] * len(comps)  # one group for _subsets; a stage's class comes from its samples
            self.cls_mask = [None] * self.m
            self.cls_wide = np.ones(self.m, dtype=bool)
            self.nS = self.m
        else:
            keys = [(0 if tp.uniform else c.mask, sum(c.devs) == 1) for c in comps]
            order = sorted(set(keys))
            self.comp_cls = [order.index(k) for k in keys]
            self.cls_mask = [mk for mk, _ in order] if not tp.uniform else [None] * len(order)
            self.cls_wide = np.array([not single for _, single in order], dtype=bool)
            self.nS = max(1, len(order))
        # uniform links: every composition's terms are the one link's
        self._link_tab = ([self._link_terms(comps[0])] * len(comps) if tp.uniform and comps
                          else [self._link_terms(c) for c in comps])
        self._subs = None
        self._cell = np.array([sum(b * s for b, s in zip(c.bundles, self.stride, strict=True)) for c in comps],
                              dtype=np.int64)  # a composition's devices as a step in the remaining-devices grid

    def _work(self, K: int | None = None) -> float:
        """Element operations of one pass on ``K`` blocks (default: the current boundaries), estimated
        before building anything (rows = (group, state) pairs)."""
        tp = self.types
        T = len(tp.members)
        nb = [len(tp.members[t]) // self.bundle[t] for t in range(T)]
        U = [len(self.unit_opts[t]) for t in range(T)]
        R = float(np.prod(np.array(nb, dtype=np.float64) + 1))
        key = (self.mixed, tuple(self.bundle))
        if self.mixed and R <= 20000 and key in self._counts:
            rows, G = self._counts[key]
        elif self.mixed and R <= 20000:  # exact count, groups of at most ``cap`` devices
            rows = G = 0.0
            for n in itertools.product(*[range(c + 1) for c in nb]):
                if 0 < sum(x * b for x, b in zip(n, self.bundle, strict=True)) <= self.cap:
                    g = float(np.prod([U[t] for t in range(T) if n[t]]))
                    G += g
                    rows += g * float(np.prod([b - x + 1 for b, x in zip(nb, n, strict=True)]))
            self._counts[key] = (rows, G)
        elif self.mixed:
            rows = float(np.prod([(b + 1) + u * b * (b + 1) / 2 for b, u in zip(nb, U, strict=True)])) - R
            G = float(np.prod([1 + u * b for b, u in zip(nb, U, strict=True)])) - 1
        else:
            rows = sum(u * b * (b + 1) / 2 * R / (b + 1) for b, u in zip(nb, U, strict=True))
            G = float(sum(u * b for b, u in zip(nb, U, strict=True)))
        # classes per row: uniform links price sends by the receivers' busiest device (exact_links); a training
        # pass there keeps one candidate per row and depth (_exact_sends), measured at about one class's work
        nS = 1 if self.exact_links else 2 if tp.uniform else min(2 ** T, G + 1)
        K = len(self.bnd) - 1 if K is None else K
        # exact_links passes cost mostly per stage option (composition x start x end x depth), ~16 row entries'
        # worth each (measured: ResNet-50 and the synthetic 170 layers x 16 boards, 25 and 47 ms a pass at 6
        # blocks with 969 and 1740 compositions and about the same rows)
        per_option = 16 * K * K * self.nD * G if self.exact_links else 0.0
        return K * K / 2 * rows * nS * self.nD + G * K * K * (4 + (self.m * T if self.mixed else 0)) + per_option

    # ----------------------------------------------------------------- links
    def _types_of(self, mask: int) -> list[int]:
        return [t for t in range(len(self.types.members)) if mask >> t & 1]

    def _link_terms(self, comp: _Comp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bandwidth, latency, energy/byte) per next class for a send from ``comp``.

        Exact for a one-device receiver when the network is uniform or ``comp`` is one board type;
        otherwise the largest bandwidth and smallest latency and energy among the type pairs: a lower
        bound, and ``prices_exactly`` tells which plans it priced exactly (costmodel: per-pair pricing).
        """
        tp = self.types
        bw, lat, epb = np.full(self.nS, np.inf), np.zeros(self.nS), np.zeros(self.nS)
        if tp.uniform:
            fin = np.argwhere(np.isfinite(tp.bw))
            if len(fin):
                x, y = fin[0]
                bw[:], lat[:], epb[:] = tp.bw[x, y], tp.lat[x, y], tp.epb[x, y]
            return bw, lat, epb
        src = [t for t in range(len(tp.members)) if comp.devs[t]]
        for c, mk in enumerate(self.cls_mask):
            pairs = [(a, b) for a in src for b in self._types_of(mk) if np.isfinite(tp.bw[a, b])]
            if pairs:
                bw[c] = max(tp.bw[a, b] for a, b in pairs)
                lat[c] = min(tp.lat[a, b] for a, b in pairs)
                epb[c] = min(tp.epb[a, b] for a, b in pairs)
        return bw, lat, epb

    def _head_links(self, s: np.ndarray, vs: list[int], cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, joules) to or from the head of samples ``s`` [V, ...] per type: every non-head sample
        crosses the head's NIC, so the head's load is the time; exact (costmodel.pair_transfer)."""
        tp = self.types
        t = np.zeros(s.shape[1:])
        e = np.zeros(s.shape[1:])
        lat = np.zeros(s.shape[1:])
        for v, ty in enumerate(vs):
            if ty == 0:
                continue
            t = t + s[v] * cut / tp.bw[0, ty]
            e = e + s[v] * cut * tp.epb[0, ty]
            lat = np.maximum(lat, np.where(s[v] > 0, tp.lat[0, ty], 0.0))
        return t + lat, e

    def prices_exactly(self, layout: Layout, kind: str = "sum") -> bool:
        """Whether the DP's link figures for ``layout`` are the cost model's (see ``_link_terms``).

        Training on uniform links: exact (``exact_links``: the receiving stage's class is its busiest
        device's samples). Otherwise a send into a wide group adds its busiest sender's time to a sum (a
        lower bound: exact on a uniform network when no receiver takes more samples than the busiest
        sender sends), and into one device a mixed group's fastest type pair. (Inference keeps that bound:
        its energy search leans on ``_beaten``, which the per-sample classes do not allow.)
        """
        tp, dev_type = self.types, {d: t for t, mem in enumerate(self.types.members) for d in mem}
        if self.exact_links or (kind == "max" and tp.uniform):
            return True
        for st, nxt in zip(layout[:-1], layout[1:], strict=True):
            src_types = {dev_type[self.costs.units[u][0]] for u, _ in st.replicas}
            if len(nxt.replicas) == 1:
                if not tp.uniform and len(src_types) > 1:
                    return False
            elif not tp.uniform or max(k for _, k in nxt.replicas) > max(k for _, k in st.replicas):
                return False
        return True

    # ----------------------------------------------------------------- stage tables
    def _range_max(self) -> np.ndarray:
        """ws[k, k2] = cut_bytes[bnd[k]] + max act over layers [bnd[k], bnd[k2]) (NaN-free, -inf unused)."""
        pf, B = self.pf, self.bnd
        K1 = len(B)
        out = np.zeros((K1, K1))
        for k in range(K1 - 1):
            i = int(B[k])
            cm = np.maximum.accumulate(pf.act[i:])
            out[k, k + 1:] = pf.cut[i] + cm[B[k + 1:] - i - 1]
        return out

    def _stash(self, d: int) -> int:
        """Micro-batches a stage at depth state ``d`` stashes (1F1B without depth states: d = 0)."""
        if not self.train:
            return 0
        return self.M if self.obj.schedule == "gpipe" else min(self.M, d + 1)

    def _base(self, gi: int) -> dict:
        """Per-sample and per-call seconds of composition ``gi`` for every boundary pair: arrays [V, K+1, K+1]."""
        if gi in self._bases:
            return self._bases[gi]
        self._bases[gi] = self._base_of(gi)
        return self._bases[gi]

    def _base_of(self, gi: int) -> dict:
        pf, tp, comp = self.pf, self.types, self.comps[gi]
        B = self.bnd
        K1 = len(B)
        vs = [t for t in range(len(tp.members)) if comp.devs[t]]
        F, X, C, U = [], [], [], []
        tri = np.arange(K1)[None, :] > np.arange(K1)[:, None]
        valid = tri.copy()
        for t in vs:
            u = tp.unit(t, comp.units[t])
            U.append(u)
            fu, xu, vu = self._unit_tables(u)
            F.append(fu)
            X.append(xu)
            C.append(comp.devs[t])
            valid &= vu
        if "params" not in self._unit_tab:
            self._unit_tab["params"] = pf.P[B][None, :] - pf.P[B][:, None]
            self._unit_tab["actsum"] = pf.A[B][None, :] - pf.A[B][:, None]
        return {"vs": vs, "F": np.array(F), "X": np.array(X), "C": C, "U": U, "tri": tri, "valid": valid,
                "params": self._unit_tab["params"], "actsum": self._unit_tab["actsum"]}

    def _unit_tables(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit ``u``'s per-sample and per-call seconds and whether it runs every layer, for every boundary
        pair [K+1, K+1] (= Prefix.per_sample / per_call): built once per unit, shared by its compositions."""
        hit = self._unit_tab.get(u)
        if hit is None:
            pf, B = self.pf, self.bnd
            hit = (pf.F[u, B][None, :] - pf.F[u, B][:, None] + pf.HBo[u] * pf.cut[B][None, :]
                   + pf.HBi[u] * pf.cut[B][:, None],
                   pf.X[u, B][None, :] - pf.X[u, B][:, None] + pf.H[u],
                   (pf.U[u, B][None, :] - pf.U[u, B][:, None]) == 0)
            self._unit_tab[u] = hit
        return hit

    def _shares_of(self, gi: int, stash: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``_shares`` of composition ``gi``, once per stash depth (the 1F1B depth check and the stage
        tables ask for the same ones)."""
        key = (gi, stash)
        if key not in self._shr:  # with the others of its number of types, in batches of ~4M elements
            V = sum(1 for x in self.comps[gi].devs if x)
            peers = [g for g in range(len(self.comps)) if sum(1 for x in self.comps[g].devs if x) == V
                     and (g, stash) not in self._shr and g >= gi]
            peers = peers[:max(1, int(4e6 // (V * len(self.bnd) ** 2)))]
            for g, got in zip(peers, self._shares([self._base(g) for g in peers], stash), strict=True):
                self._shr[(g, stash)] = got
        return self._shr[key]

    def _shares(self, bases: list[dict], stash: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Samples per type (allocate's greedy, per device within memory; ``None``: no memory) and memok,
        for compositions with the same number of board types at once (arrays [B, V, K+1, K+1])."""
        pf, tp, m = self.pf, self.types, self.m
        nv = len(bases[0]["vs"])
        K1 = len(self.bnd)
        iu, ju = np.triu_indices(K1, 1)  # only stages [bnd[k], bnd[k2]) with k < k2 exist: arrays [B, V, P]
        F = np.stack([b["F"][:, iu, ju] for b in bases])
        X = np.stack([b["X"][:, iu, ju] for b in bases])
        c = np.array([b["C"] for b in bases])[:, :, None]
        ram = np.array([[float(pf.dev_ram[tp.members[t][0]]) for t in b["vs"]] for b in bases])  # less a rank's reserve
        ram = ram[:, :, None]
        params = np.stack([b["params"][iu, ju] for b in bases])[:, None]
        per = ((0 if stash is None else stash) * np.stack([b["actsum"][iu, ju] for b in bases])
               + self.ws[iu, ju])[:, None]
        room = ram - params * pf.wfactor
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.where(per > 0, np.floor(room / np.where(per > 0, per, 1.0)), np.where(room >= 0, np.inf, -1.0))
        if stash is None:
            cap = np.full_like(cap, np.inf)
        if nv == 1:
            s = np.full(F.shape, m, dtype=np.int64)
        else:
            s = np.zeros(F.shape, dtype=np.int64)
            big = np.iinfo(np.int64).max
            for _ in range(m):
                load = s // c  # the least-loaded device of each type
                cost = (load + 1) * F + X
                capped = np.where(load + 1 <= cap, cost, np.inf)
                full = np.isinf(capped.min(axis=1))  # no device has room: the rest go regardless (overflow)
                cost = np.where(full[:, None], cost, capped)
                cand = cost == cost.min(axis=1)[:, None]
                lm = np.where(cand, load, big)
                cand &= lm == lm.min(axis=1)[:, None]
                first = np.argmax(cand, axis=1)  # the first type on ties
                s += first[:, None] == np.arange(nv)[None, :, None]
        kmax = -(-s // c)
        if stash is None:
            ok = np.ones((len(bases), len(iu)), dtype=bool)
        else:
            ok = np.all(params * pf.wfactor + kmax * per <= ram, axis=1)
        out = []
        for b in range(len(bases)):  # back to [V, K+1, K+1] (0 samples and not fitting where k >= k2)
            sb = np.zeros((nv, K1, K1), dtype=np.int64)
            sb[:, iu, ju] = s[b]
            mb = np.zeros((K1, K1), dtype=bool)
            mb[iu, ju] = ok[b]
            out.append((sb, mb))
        return out

    def _stacked(self) -> dict:
        """The stage tables of every composition stacked (built once): what ``run_pass`` prices at once."""
        if getattr(self, "_stk", None) is None:
            G = len(self.comps)
            self._prestage_all()
            tabs = [self._stage(gi) for gi in range(G)]
            stk = {x: np.stack([t[x] for t in tabs]) for x in ("tau", "dyn", "ar", "in_p", "in_e", "out_p",
                                                                 "out_e", "kout")}
            stk["ok"] = np.stack([t["valid"] & t["memok"] for t in tabs])
            stk["idle"] = np.array([t["idle"] for t in tabs], dtype=np.float64)
            stk["bw0"] = np.array([tab[0][0] for tab in self._link_tab], dtype=np.float64)
            stk["lt0"] = np.array([tab[1][0] for tab in self._link_tab], dtype=np.float64)
            stk["alive"] = self._dominated(stk)
            # what every pass reads the same way: options that fit and no unit-twin beats, the receivers' key
            # of a send into a stage (uniform), link terms per composition, the stage classes (exact_links)
            stk["okal"] = stk["ok"] & stk["alive"][:, None, None, None]
            if self.types.uniform and len(self.bnd) > 2:
                bw, lt = stk["bw0"][:, None, None, None], stk["lt0"][:, None, None, None]
                stk["rk"] = (2.0 if self.train else 1.0) * (stk["kout"][:, 1:]
                                                            * self.pf.cut[self.bnd[1:]][None, :, None, None] / bw + lt)
            stk["BW"], stk["LT"], stk["EP"] = (np.array([tab[x] for tab in self._link_tab]) for x in range(3))
            stk["CL"] = (np.clip(stk["kout"] - 1, 0, self.nS - 1).astype(np.int64) if self.exact_links else None)
            self._stk = stk
        return self._stk

    def _dominated(self, stk: dict) -> np.ndarray:
        """[G] False for a composition another one with the same devices (one type on another unit) beats in
        every stage option: fits wherever it fits, and no larger stage time, busiest-device samples
        (sends into and out of it), head-link time and energy, energy above idle when energy is priced.
        Every pass prices a composition by these alone (its devices fix its link class and all-reduce), so
        leaving the beaten one out is exact; of two equal ones the first stays.
        """
        G = len(self.comps)
        alive = np.ones(G, dtype=bool)
        energy = self.obj.objective == "energy" or self.obj.energy_budget_j is not None
        index = {(c.devs, c.units): gi for gi, c in enumerate(self.comps)}
        ok = stk["ok"]
        keys = [stk["tau"], stk["kout"]]
        if energy:
            keys.append(stk["dyn"])
        heads = [stk["in_p"], stk["out_p"]] + ([stk["in_e"], stk["out_e"]] if energy else [])
        pairs = [(gi, other) for gi, c in enumerate(self.comps) for t, x in enumerate(c.units)
                 for y in self.unit_opts[t] if x >= 0 and y != x
                 for other in [index.get((c.devs, c.units[:t] + (y,) + c.units[t + 1:]))] if other is not None]
        # the comparisons of every pair at once (in batches), then the pairs in order: a composition beaten
        # by one still alive goes (as one by one: the first beater in order decides)
        fits, le, same = (np.zeros(len(pairs), dtype=bool) for _ in range(3))
        step = max(1, int(2e6 // max(1, ok[0].size)))
        for lo in range(0, len(pairs), step):
            g, o = (np.array(x, dtype=np.int64) for x in zip(*pairs[lo:lo + step], strict=True))
            okb, oko = ok[g], ok[o]
            fits[lo:lo + step] = np.all(oko | ~okb, axis=(1, 2, 3))
            le_, same_ = np.ones(len(g), dtype=bool), np.all(oko == okb, axis=(1, 2, 3))
            for k in keys:
                le_ &= np.all(np.where(okb, k[o] <= k[g], True), axis=(1, 2, 3))
                same_ &= np.all(np.where(okb, k[o] == k[g], True), axis=(1, 2, 3))
            for h in heads:
                ax = tuple(range(1, h.ndim))
                le_ &= np.all(h[o] <= h[g], axis=ax)
                same_ &= np.all(h[o] == h[g], axis=ax)
            le[lo:lo + step], same[lo:lo + step] = le_, same_
        for p, (gi, other) in enumerate(pairs):
            if not alive[gi] or not alive[other] or not fits[p] or not le[p]:
                continue
            if not same[p] or other < gi:
                alive[gi] = False
        return alive

    def _kout_all(self) -> np.ndarray:
        """[G, K+1, K+1, depth]: samples of each stage option's busiest device (theta-independent, built once)."""
        if self._ko is None:
            self._ko = np.stack([self._stage(gi)["kout"] for gi in range(len(self.comps))])
        return self._ko

    def _prestage_all(self) -> None:
        """``_prestage`` for every composition not yet tabled, by number of board types, in batches."""
        groups: dict[int, list[int]] = {}
        for gi, comp in enumerate(self.comps):
            if gi not in self.cache and gi not in self._pre:
                groups.setdefault(sum(1 for x in comp.devs if x), []).append(gi)
        for V, gis in sorted(groups.items()):
            step = max(1, int(4e6 // (V * len(self.bnd) ** 2 * max(1, self.nD))))
            for lo in range(0, len(gis), step):
                self._prestage(gis[lo:lo + step])

    def _prestage(self, gis: list[int]) -> None:
        """``_stage``'s per-depth figures (shares, fit, stage time, busiest device, head links, energy above
        idle) of compositions with the same number of board types at once: arrays [B, V, K+1, K+1], the
        same operations in the same order as one at a time (so the same numbers, bit for bit)."""
        tp, K1, nD = self.types, len(self.bnd), self.nD
        bases = [self._base(g) for g in gis]
        B, V = len(gis), len(bases[0]["vs"])
        F = np.stack([b["F"] for b in bases])
        X = np.stack([b["X"] for b in bases])
        c = np.array([b["C"] for b in bases], dtype=np.int64)[:, :, None, None]
        vs = np.array([b["vs"] for b in bases], dtype=np.int64)
        U = np.array([b["U"] for b in bases], dtype=np.int64)
        tri, bvalid = bases[0]["tri"], np.stack([b["valid"] for b in bases])
        idle_t = np.array([float(self.costs.idle_power_w[m[0]]) for m in tp.members])
        pw = np.maximum(np.asarray(self.costs.busy_power_w, dtype=np.float64)[U] - idle_t[vs], 0.0)  # [B, V]
        nothead, bw0, epb0, lat0 = vs != 0, tp.bw[0][vs], tp.epb[0][vs], tp.lat[0][vs]
        tau = np.full((B, K1, K1, nD), np.inf)
        valid = np.zeros((B, K1, K1, nD), dtype=bool)
        memok = np.zeros((B, K1, K1, nD), dtype=bool)
        dyn, kout = np.zeros((B, K1, K1, nD)), np.zeros((B, K1, K1, nD))
        heads = [np.zeros((B, K1, nD)) for _ in range(4)]  # in_p, in_e, out_p, out_e
        cut = self.pf.cut
        for d in range(nD):
            got = [self._shares_of(g, None if self.ignore_memory else self._stash(d)) for g in gis]
            s, ok = np.stack([x[0] for x in got]), np.stack([x[1] for x in got])
            valid[..., d] = bvalid & np.all(s >= c, axis=1)
            memok[..., d] = ok
            kmax = -(-s // c)
            kout[..., d] = kmax.max(axis=1)
            sides = [] if self.train else [(s[:, :, 0, :], cut[0]), (s[:, :, :, K1 - 1], cut[-1])]  # training: none
            for h, (sv, cu) in enumerate(sides):  # _head_links: every non-head sample crosses the head's NIC
                t, e, lat = np.zeros((B, K1)), np.zeros((B, K1)), np.zeros((B, K1))
                with np.errstate(divide="ignore", invalid="ignore"):
                    for v in range(V):
                        m = nothead[:, v][:, None]
                        t = t + np.where(m, sv[:, v] * cu / bw0[:, v][:, None], 0.0)
                        e = e + np.where(m, sv[:, v] * cu * epb0[:, v][:, None], 0.0)
                        lat = np.maximum(lat, np.where(m & (sv[:, v] > 0), lat0[:, v][:, None], 0.0))
                heads[2 * h][..., d], heads[2 * h + 1][..., d] = t + lat, e
            tau[..., d] = np.where(tri, (kmax * F + X).max(axis=1), np.inf)
            for v in range(V):
                dyn[..., d] += pw[:, v][:, None, None] * (s[:, v] * F[:, v] + c[:, v] * X[:, v])
        for i, g in enumerate(gis):
            self._pre[g] = (tau[i], valid[i], memok[i], dyn[i], kout[i], heads[0][i], heads[1][i], heads[2][i],
                            heads[3][i])

    def _stage(self, gi: int) -> dict:
        """Every stage [bnd[k], bnd[k2]) on composition ``gi`` at once: arrays [K+1, K+1, depth]."""
        hit = self.cache.get(gi)
        if hit is not None:
            return hit
        tp, comp = self.types, self.comps[gi]
        base = self._base(gi)
        vs, F, X, C, U, tri = base["vs"], base["F"], base["X"], base["C"], base["U"], base["tri"]
        K1, nD = len(self.bnd), self.nD
        c = np.array(C)[:, None, None]
        busy = np.asarray(self.costs.busy_power_w, dtype=np.float64)
        idle = [float(self.costs.idle_power_w[tp.members[t][0]]) for t in vs]
        tau = np.full((K1, K1, nD), np.inf)
        valid = np.zeros((K1, K1, nD), dtype=bool)
        memok = np.zeros((K1, K1, nD), dtype=bool)
        dyn = np.zeros((K1, K1, nD))
        kout = np.zeros((K1, K1, nD))  # samples of the busiest device (what a send to a wide group waits for)
        in_p, in_e = np.zeros((K1, nD)), np.zeros((K1, nD))  # head -> this stage starting at 0, by end
        out_p, out_e = np.zeros((K1, nD)), np.zeros((K1, nD))  # this stage ending at n -> head, by start
        cut = self.pf.cut
        pre = self._pre.pop(gi, None)  # built with others (_prestage): the same figures
        if pre is not None:
            tau, valid, memok, dyn, kout, in_p, in_e, out_p, out_e = pre
        for d in range(nD if pre is None else 0):
            s, ok = self._shares_of(gi, None if self.ignore_memory else self._stash(d))
            valid[:, :, d] = base["valid"] & np.all(s >= c, axis=0)
            memok[:, :, d] = ok
            kmax = -(-s // c)
            kout[:, :, d] = kmax.max(axis=0)
            if not self.train:  # both head links in one call: rows [in, out] (training: none, see costmodel)
                hp, he = self._head_links(np.stack([s[:, 0, :], s[:, :, K1 - 1]], axis=1), vs,
                                          np.array([[cut[0]], [cut[-1]]]))
                in_p[:, d], in_e[:, d], out_p[:, d], out_e[:, d] = hp[0], he[0], hp[1], he[1]
            tau[:, :, d] = np.where(tri, (kmax * F + X).max(axis=0), np.inf)
            for vi, u in enumerate(U):
                dyn[:, :, d] += max(busy[u] - idle[vi], 0.0) * (s[vi] * F[vi] + C[vi] * X[vi])
        params = base["params"]
        ar = np.zeros((K1, K1))
        ar_e = np.zeros((K1, K1))
        g = sum(C)
        if self.train and g >= 2:
            pairs = [(a, b) for a in vs for b in vs if a != b or comp.devs[a] >= 2]
            bw = min(tp.bw[a, b] for a, b in pairs)
            lat = max(tp.lat[a, b] for a, b in pairs)
            epb = max(tp.epb[a, b] for a, b in pairs)
            ar = 2.0 * (g - 1) / g * params / bw + 2.0 * (g - 1) * lat
            ar_e = 2.0 * (g - 1) * params * epb
            if self.costs.training is not None:  # costmodel.allreduce: torch.distributed's fitted cost
                call, per_byte = self.costs.training.allreduce[[tp.members[t][0] for t in vs]].max(axis=0)
                ar = ar + 2.0 * (g - 1) * call + params * per_byte
        if self.train and self.costs.training is not None:  # the optimizer step follows it (the slowest unit)
            tc = self.costs.training
            ar = ar + np.max([tc.opt_call_s[u] + params * tc.opt_byte_s[u] for u in U], axis=0)
        out = {"tau": tau, "valid": valid, "memok": memok, "kout": kout, "in_p": in_p, "in_e": in_e,
               "out_p": out_p, "out_e": out_e,
               "dyn": np.where(tri[:, :, None], dyn + (ar_e / self.M)[:, :, None], 0.0),
               "ar": np.where(tri, ar, 0.0)[:, :, None],  # training: all-reduce + optimizer step (the tail)
               "idle": float(sum(ci * x for ci, x in zip(C, idle, strict=True)))}
        self.cache[gi] = out
        return out

    # ----------------------------------------------------------------- passes
    def _rows_all(self):
        """All (composition, remaining-state) rows of every transition, concatenated once."""
        if getattr(self, "_rows_cache", None) is None:
            g = np.concatenate([np.full(len(rv), gi) for gi, (rv, _) in enumerate(self.rows)])
            rv = np.concatenate([rv for rv, _ in self.rows])
            rmg = np.concatenate([rmg for _, rmg in self.rows])
            cg = np.array(self.comp_cls, dtype=np.int64)[g]
            self._rows_cache = (g, rv, rmg, cg)
        return self._rows_cache

    def _subsets(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per link class of wide groups: its compositions (ascending devices), where their device counts
        change, and their cells in the remaining-devices grid (what ``_beaten`` needs, built once)."""
        if getattr(self, "_subs", None) is None:
            cell = np.array([sum(b * s for b, s in zip(c.bundles, self.stride, strict=True)) for c in self.comps],
                            dtype=np.int64)
            cls = np.array(self.comp_cls, dtype=np.int64)
            self._subs = []
            self._bund = np.array([c.bundles for c in self.comps], dtype=np.int64)
            for cl in np.nonzero(self.cls_wide)[0]:
                members = np.nonzero(cls == cl)[0]  # ascending index = ascending devices (lexicographic)
                if len(members) < 2:
                    continue
                starts = np.concatenate([[0], np.nonzero(np.diff(cell[members]))[0] + 1])
                self._subs.append((members, starts, cell[members]))
            # worth it only when the grid is small beside the rows the DP walks (else: nothing to prune)
            if len(self._subs) * self.R * (len(self.nb) + 2) * PRUNE_GRID_SHARE > len(self._rows_all()[0]):
                self._subs = []
        return self._subs

    def _beaten(self, c: np.ndarray) -> np.ndarray:
        """``c`` [G, ...] (a cost per composition) with inf where a composition of a strict subset of the
        devices (same link class, so the stage before pays the same send) costs no more: exact, since
        the DP's value can only fall with more devices left (every state means "at most"), and on a tie
        the subset, an earlier composition, wins anyway (``run_pass``'s order). Changed in place. Not with
        ``exact_links``: there a stage's class is its own samples, and a per-class version cost more than
        the rows it dropped (measured on ResNet-50 x 16 boards)."""
        subs = self._subsets()
        if not subs:
            return c
        G, T = len(self.comps), len(self.nb)
        flat = c.reshape(G, -1)
        shape = tuple(n + 1 for n in self.nb) + (flat.shape[1],)
        bund = self._bund
        for members, starts, cells in subs:
            x = flat[members]
            fin = np.isfinite(x).any(axis=1)
            if not fin.any():
                continue
            grid = np.full((self.R, flat.shape[1]), np.inf)
            grid[cells[starts]] = np.minimum.reduceat(x, starts, axis=0)
            pm = grid.reshape(shape)
            for ax in range(T):  # the cheapest over every cell at most this one
                pm = np.minimum.accumulate(pm, axis=ax)
            pm = pm.reshape(self.R, -1)
            sub = np.full(x.shape, np.inf)
            for t in range(T):  # a strict subset is at most one device of some type fewer
                has = bund[members, t] >= 1
                sub[has] = np.minimum(sub[has], pm[cells[has] - self.stride[t]])
            flat[members] = np.where(fin[:, None] & (x >= sub), np.inf, x)
        return c

    def _exact_sends(self, k: int, A: np.ndarray, CL: np.ndarray, valT: np.ndarray, dmap: list[int], theta: float,
                     cp: float, ce: float, is_sum: bool, out: tuple[list, ...],
                     reach: np.ndarray | None = None) -> np.ndarray:
        """``run_pass``'s candidates for every stage starting at ``bnd[k]`` that a next stage follows, uniform
        links (``exact_links``): the send from a stage whose busiest device has ``x`` samples into one of class
        ``c`` (busiest ``c + 1``) takes ``f (max(x, c + 1) cut / bw + lat)``, as ``costmodel.pair_loads``.

        So per next state the classes ``<= x - 1`` cost the sender's own link time (a prefix minimum of
        their values) and each class above costs its own (a suffix minimum of value + link); the better of
        the two for every sender class ``x`` is built once per remaining-devices state (``Q``), and each
        (composition, state) row adds its stage by one lookup. The target state holds the stage's own
        class: where it is the same for every end (almost always), the row's best end is its candidate,
        else every (end, depth) is. The next class is chosen for the winners only (``_next_class``).
        (``_beaten`` is not run here, see there.)
        Returns the link seconds by (end, class) for that choice.
        """
        K, nS, nD, G = len(self.bnd) - 1, self.nS, self.nD, len(self.comps)
        L = K - k - 1
        f = 2.0 if self.train else 1.0
        bw, lt, ep = (float(self._link_tab[0][x][0]) for x in range(3))
        a = A[:, k, k + 1:K][:, :, dmap]  # [G, L, nD] by the next stage's depth
        own = CL[:, k, k + 1:K][:, :, dmap]  # the stage's class, by the next stage's depth
        ck = self.pf.cut[self.bnd[k + 1:K]]
        pcl = f * (np.arange(1, nS + 1)[None, :] * ck[:, None] / bw + lt)  # [L, nS]: the send by the busier side
        lnk = np.where(pcl <= theta, cp * pcl if is_sum else pcl, np.inf)
        rg, rrv, rmg, _ = self._rows_all()
        fa = np.isfinite(a)
        live = np.nonzero(fa.reshape(G, -1).any(axis=1)[rg])[0]
        V = valT[:, :, k + 1:K]  # [nS, R, L, nD]: run_pass's class-first copy of its values
        ok_state = np.isfinite(V).any(axis=(0, 2, 3))
        live = live[ok_state[rmg[live]] if reach is None else ok_state[rmg[live]] & reach[rrv[live]]]
        if not len(live):
            return lnk
        need = np.zeros(self.R, dtype=bool)
        need[rmg[live]] = True
        used = np.nonzero(need)[0]  # only the next states a live row reaches
        where = np.cumsum(need) - 1  # a used state's place among them
        R = len(used)
        V = V[:, used]
        ln4 = lnk.T[:, None, :, None]  # [nS, 1, L, 1]
        PM = np.empty(V.shape)  # min over classes <= c
        PM[0] = V[0]
        for c in range(1, nS):
            np.minimum(PM[c - 1], V[c], out=PM[c])
        hi = V + ln4 if is_sum else np.maximum(V, ln4)
        SM = np.empty(V.shape)  # min over classes > c
        SM[nS - 1] = np.inf
        for c in range(nS - 2, -1, -1):
            np.minimum(SM[c + 1], hi[c + 1], out=SM[c])
        Q = PM + ln4 if is_sum else np.maximum(PM, ln4)
        np.minimum(Q, SM, out=Q)
        if is_sum:
            Q += (ce * f * self.m * ep) * ck[None, None, :, None]  # energy: every byte once, class-free
        Q = Q.reshape(-1)
        lid = np.arange(L)[None, :, None] * nD + np.arange(nD)[None, None, :]
        own_x = own * (R * L * nD) + lid  # [G, L, nD]: offset of (own class, end, depth) beside the state's
        own_d = np.array(dmap if nD > 1 else [0] * nD, dtype=np.int64)
        lo_c = np.where(fa, own, nS).min(axis=1)  # [G, nD]
        same = (lo_c == np.where(fa, own, -1).max(axis=1)).all(axis=1) | ~fa.reshape(G, -1).any(axis=1)
        cand_v, cand_t, cand_d, cand_pos, cand_info = out
        step = max(CHUNK_ROWS, (1 << 18) // (L * nD))  # rows of about 2^18 (end, depth) entries at once
        for lo in range(0, len(live), step):
            rows = live[lo:lo + step]
            g = rg[rows]
            ix = (where[rmg[rows]] * (L * nD))[:, None, None] + own_x[g]
            q = Q[ix]
            tot = a[g] + q if is_sum else np.maximum(a[g], q)
            one = same[g]
            if one.any():  # one class per row and depth: its best end (the first on ties)
                t1 = tot[one]
                la = t1.argmin(axis=1)  # [rows, nD]
                best = np.take_along_axis(t1, la[:, None], axis=1)[:, 0]
                fin = np.isfinite(best)
                rr, dd = np.nonzero(fin)
                r_, g_ = rows[one][rr], g[one][rr]
                cand_v.append(best[fin])
                cand_t.append(rrv[r_] * nS + lo_c[g_, dd])
                cand_d.append(own_d[dd])
                cand_pos.append(g_ * 2 + 1)
                cand_info.append(np.stack([g_, k + 1 + la[fin], np.full(len(g_), -1), dd], axis=1))
            if not one.all():  # every (end, depth) with its own class
                t2 = tot[~one]
                fin = np.isfinite(t2)
                rr, ll, dd = np.nonzero(fin)
                r_, g_ = rows[~one][rr], g[~one][rr]
                cand_v.append(t2[fin])
                cand_t.append(rrv[r_] * nS + own[g_, ll, dd])
                cand_d.append(own_d[dd])
                cand_pos.append(g_ * 2 + 1)
                cand_info.append(np.stack([g_, k + 1 + ll, np.full(len(g_), -1), dd], axis=1))
        return lnk

    def _reachable(self, A: np.ndarray) -> np.ndarray:
        """[K+1, R] whether a pass can reach start state ``r`` at boundary ``k`` from all devices at 0: the
        layers before ``bnd[k]`` need at least ``mind[k]`` devices in stages this pass allows (fewest devices
        per stage option, summed along the cheapest chain), so at most ``total - mind[k]`` remain. Rows into
        other states cannot reach the pass's answer (only ``state_values``, for energy, reads them: there
        ``peaks`` is set and nothing is pruned)."""
        K1, R = A.shape[1], self.R
        if getattr(self, "_ndev", None) is None:
            self._ndev = np.array([sum(c.devs) for c in self.comps], dtype=np.float64)
            self._rdev = (self.grid * np.array(self.bundle)[None, :]).sum(axis=1)
        fin = np.isfinite(A).any(axis=3)  # [G, K1, K1]
        md = np.where(fin, self._ndev[:, None, None], np.inf).min(axis=0)
        mind = np.full(K1, np.inf)
        mind[0] = 0.0
        for k2 in range(1, K1):
            mind[k2] = (mind[:k2] + md[:k2, k2]).min()
        reach = self._rdev[None, :] <= sum(self.types.counts) - mind[:, None]
        reach[0] = False
        reach[0, R - 1] = True
        return reach

    def _next_class(self, k: int, info: np.ndarray, r: np.ndarray, CL: np.ndarray, val: np.ndarray,
                    dmap: list[int], lnk: np.ndarray, is_sum: bool) -> None:
        """The next stage's class for winners of ``_exact_sends`` (``info`` rows (g, end, -1, next depth),
        start states ``r``), as its ``Q`` chose it: the classes up to the stage's own at its link time
        (first on ties), else the best above at theirs (lowest on ties). Fills ``info[:, 2]`` in place."""
        g, k2, d2 = info[:, 0], info[:, 1], info[:, 3]
        x = CL[g, k, k2, np.asarray(dmap, dtype=np.int64)[d2]]  # [W] the stage's own class
        V = val[r - self._cell[g], k2, :, d2]  # [W, nS]
        li = k2 - k - 1
        nS = self.nS
        cls = np.arange(nS)[None, :]
        ln = lnk[li]  # [W, nS]
        lo_v = np.where(cls <= x[:, None], V, np.inf)
        lo_a = lo_v.argmin(axis=1)
        lo_b = lo_v[np.arange(len(g)), lo_a]
        lx = ln[np.arange(len(g)), x]
        low = lo_b + lx if is_sum else np.maximum(lo_b, lx)
        hi_v = np.where(cls > x[:, None], V + ln if is_sum else np.maximum(V, ln), np.inf)
        hi_a = hi_v.argmin(axis=1)
        up = hi_v[np.arange(len(g)), hi_a] < low
        info[:, 2] = np.where(up, hi_a, lo_a)

    def run_pass(self, kind: str, theta: float = np.inf, cp: float = 1.0, ce: float = 0.0,
                 theta_idle: float = 0.0, bkey: str = "p", theta_a: float = np.inf):
        """One DP pass; returns (value, layout) or None when nothing is feasible.

        For each start boundary, every (composition, remaining devices) row is
        priced against every (end, next class, next depth) at once; the best per
        target state wins, earlier compositions first on ties (deterministic). ``theta_a`` (training):
        only stages whose tail (all-reduce + optimizer step) is at most it.
        """
        K = len(self.bnd) - 1
        R, nS, nD = self.R, self.nS, self.nD
        G = len(self.comps)
        val = np.full((R, K + 1, nS, nD), np.inf)
        ch = np.full((R, K + 1, nS, nD, 4), -1, dtype=np.int32)
        valT = np.full((nS, R, K + 1, nD), np.inf) if self.exact_links else None  # class-first (_exact_sends)
        dmap = [min(nD - 1, d + 1) for d in range(nD)]
        is_sum = kind == "sum"
        K1 = K + 1
        A = np.empty((G, K1, K1, nD))  # stage cost by (start, end, its depth), inf where not allowed or not fitting
        END = np.empty((G, K1))  # cost of the stage running to the end (incl. the link to the head)
        st = self._stacked()  # every composition's stage table, arrays [G, ...]
        tau = st["tau"]
        bs = tau
        with np.errstate(invalid="ignore"):
            if not is_sum:
                a_s = bs
            elif ce == 0.0:
                a_s = tau if cp == 1.0 else cp * tau
            else:
                a_s = cp * tau + ce * (st["dyn"] + st["idle"][:, None, None, None] * theta_idle)
        keep = st["okal"]
        if theta < np.inf:
            keep = keep & (bs <= theta)
        if theta_a < np.inf:
            keep = keep & (st["ar"] <= theta_a)
        A = np.where(keep, a_s, np.inf)  # [G, K1, K1, nD]
        # the input link (head -> the stage starting at 0) and the output link are priced with the stage:
        # they depend on its shares (the head's own share does not travel)
        pin, ein = st["in_p"], st["in_e"]
        b_in = pin
        A[:, 0] = np.where(b_in <= theta, A[:, 0] + cp * pin + ce * ein if is_sum else np.maximum(A[:, 0], b_in),
                           np.inf)
        if self.types.uniform and K > 1:
            # what its busiest device receives across its start cut: a bottleneck key of the send into it,
            # so with the senders' side (below) the max over keys is the link's time exactly
            brk = st["rk"]
            if not is_sum:
                A[:, 1:] = np.maximum(A[:, 1:], brk)
            if theta < np.inf:
                A[:, 1:] = np.where(brk <= theta, A[:, 1:], np.inf)
        pe, ee = st["out_p"][:, :, 0], st["out_e"][:, :, 0]
        bl_end = pe
        endc = np.where(bl_end <= theta, cp * pe + ce * ee if is_sum else bl_end, np.inf)
        col = A[:, :, K, 0]
        END = col + endc if is_sum else np.maximum(col, endc)  # [G, K1]: the stage running to the end
        KO = st["kout"]
        # uniform links: a stage's class is its busiest device's samples - 1 (what a send into it waits for)
        CL = st["CL"]
        if CL is None:
            END = self._beaten(END)
        BW, LT, EP = st["BW"], st["LT"], st["EP"]  # [G, nS]
        f = 2.0 if self.train else 1.0
        pk = None
        if self.peaks:  # every key a stage option is held to (as a max pass sees it), by (start, end, depth)
            with np.errstate(invalid="ignore"):
                kA = np.where(np.isfinite(A), bs, np.inf)
            kA[:, 0] = np.maximum(kA[:, 0], b_in)
            if self.types.uniform and K > 1:
                kA[:, 1:] = np.maximum(kA[:, 1:], brk)
            kEND = np.maximum(kA[:, :, K, 0], bl_end)
            pk = np.full((R, K + 1, nS, nD), np.inf)
        cut_b = self.pf.cut[self.bnd]
        wide = self.cls_wide[None, None, :, None]
        rg, rrv, rmg, rcg = self._rows_all()
        target = rrv * nS + rcg if CL is None else None
        reach = None if (self.peaks or CL is None) else self._reachable(A)
        for k in range(K - 1, -1, -1):
            cand_v, cand_t, cand_d, cand_pos, cand_info = [], [], [], [], []
            endv = END[rg, k]
            okend = np.isfinite(endv)
            if reach is not None:
                okend &= reach[k, rrv]
            if okend.any():
                cand_v.append(endv[okend])
                cand_t.append(target[okend] if CL is None else rrv[okend] * nS + CL[rg[okend], k, K, 0])
                cand_d.append(np.zeros(okend.sum(), dtype=np.int64))
                cand_pos.append(rg[okend] * 2)
                cand_info.append(np.stack([rg[okend], np.full(okend.sum(), K), np.full(okend.sum(), -1),
                                           np.full(okend.sum(), -1)], axis=1))
            lnk = None
            if K - k >= 2 and CL is not None:
                lnk = self._exact_sends(k, A, CL, valT, dmap, theta, cp, ce, is_sum,
                                        (cand_v, cand_t, cand_d, cand_pos, cand_info),
                                        None if reach is None else reach[k])
            elif K - k >= 2:
                a = A[:, k, k + 1:K][:, :, dmap]  # [G, L, nD] by the next stage's depth
                # the send to the next stage: every sample into a one-device stage, the busiest sender's
                # samples into a wide one (a lower bound there: prices_exactly)
                kk = KO[:, k, k + 1:K][:, :, dmap]
                ck = cut_b[k + 1:K][None, :, None, None]
                nsamp = np.where(wide, kk[:, :, None, :], float(self.m))  # [G, L, nS, nD]
                p4 = f * (nsamp * ck / BW[:, None, :, None] + LT[:, None, :, None])
                b4 = p4
                if is_sum:
                    e4 = f * self.m * ck * EP[:, None, :, None]
                    c4 = a[:, :, None, :] + np.where(b4 <= theta, cp * p4 + ce * e4, np.inf)  # [G, L, nS, nD]
                else:
                    c4 = np.maximum(a[:, :, None, :], np.where(b4 <= theta, b4, np.inf))
                c4 = self._beaten(c4)
                # only the rows of compositions with a stage that fits here and now (most do not: a device
                # left without a sample, memory, theta, a subset no dearer), in chunks of about CHUNK_ROWS
                live = np.nonzero(np.isfinite(c4).reshape(G, -1).any(axis=1)[rg])[0]
                for lo_ in range(0, len(live), CHUNK_ROWS):
                    rows_ = live[lo_:lo_ + CHUNK_ROWS]
                    nxt = val[rmg[rows_], k + 1:K]  # [rows, L, nS, nD]
                    cc = c4[rg[rows_]]
                    tot = nxt + cc if is_sum else np.maximum(nxt, cc)
                    # lexicographic argmin over (end, next class): first over classes, then over ends
                    s_min = tot[:, :, 0, :]
                    s_arg = np.zeros(s_min.shape, dtype=np.int64)  # [rows, L, nD]
                    for c2 in range(1, nS):
                        better = tot[:, :, c2, :] < s_min
                        s_min = np.where(better, tot[:, :, c2, :], s_min)
                        s_arg = np.where(better, c2, s_arg)
                    l_arg = s_min.argmin(axis=1)  # [rows, nD]
                    best = np.take_along_axis(s_min, l_arg[:, None], axis=1)[:, 0]
                    arg = l_arg * nS + np.take_along_axis(s_arg, l_arg[:, None], axis=1)[:, 0]
                    for d2 in range(nD):
                        fin = np.isfinite(best[:, d2])
                        if not fin.any():
                            continue
                        r_ = rows_[fin]
                        a_ = arg[fin, d2]
                        cand_v.append(best[fin, d2])
                        cand_t.append(target[r_])
                        cand_d.append(np.full(len(r_), dmap[d2] if nD > 1 else 0))
                        cand_pos.append(rg[r_] * 2 + 1)
                        cand_info.append(np.stack([rg[r_], k + 1 + a_ // nS, a_ % nS, np.full(len(r_), d2)],
                                                  axis=1))
            if not cand_v:
                continue
            v = np.concatenate(cand_v)
            t = np.concatenate(cand_t) * nD + np.concatenate(cand_d)
            pos = np.concatenate(cand_pos)
            info = np.concatenate(cand_info)
            win = _first_min(t, v, pos, R * nS * nD)
            if lnk is not None:  # the winners' next classes (_exact_sends left them to choose)
                mid = info[win, 2] < 0
                mid &= info[win, 1] < K
                if mid.any():
                    wi = win[mid]
                    sub = info[wi]
                    self._next_class(k, sub, t[wi] // nD // nS, CL, val, dmap, lnk, is_sum)
                    info[wi] = sub
            tt = t[win]
            d_ = tt % nD
            st_ = tt // nD
            r_, c_ = st_ // nS, st_ % nS
            val[r_, k, c_, d_] = v[win]
            if valT is not None:
                valT[c_, r_, k, d_] = v[win]
            ch[r_, k, c_, d_] = info[win]
            if pk is not None:  # the winner's keys: its stage, its send (run_pass's p4) and the path after it
                g_, k2_, c2_, d2_ = info[win].T
                end = k2_ == K
                own = np.where(end, kEND[g_, k], kA[g_, k, k2_, d_])
                mid = ~end
                if mid.any():
                    gm, km, cm = g_[mid], k2_[mid], c2_[mid]
                    if CL is None:
                        ns = np.where(self.cls_wide[cm], KO[gm, k, km, d_[mid]], float(self.m))
                    else:  # the busier of the stage's and the next stage's busiest devices
                        ns = np.maximum(KO[gm, k, km, d_[mid]], cm + 1.0)
                    send = f * (ns * cut_b[km] / BW[gm, cm] + LT[gm, cm])
                    own[mid] = np.maximum(own[mid], np.maximum(send, pk[r_[mid] - self._cell[gm], km, cm, d2_[mid]]))
                pk[r_, k, c_, d_] = own
        self._last = (val, ch, pk)  # every start state's optimum (state_values / layout_from / state_peaks)
        full = R - 1
        best_v, best_at = np.inf, None
        for c in range(nS):
            for d in range(nD):
                if val[full, 0, c, d] < best_v:
                    best_v, best_at = float(val[full, 0, c, d]), (c, d)
        if best_at is None or not np.isfinite(best_v):
            return None
        return best_v, self._rebuild(ch, best_at)

    def state_values(self) -> np.ndarray:
        """[R] the last pass's optimum from every start state (at most so many devices of each type left):
        one pass answers every device budget at once (``search``'s energy bound weights idle power by it)."""
        val = self._last[0]
        return val[:, 0].reshape(self.R, -1).min(axis=1)

    def state_peaks(self) -> np.ndarray:
        """[R] the bottleneck key (largest stage, send or head-link time) of the last pass's optimum from every
        start state (``peaks`` set before the pass; ``layout_from``'s tie-break)."""
        val, _, pk = self._last
        v = val[:, 0].reshape(self.R, -1)
        return pk[:, 0].reshape(self.R, -1)[np.arange(self.R), np.argmin(v, axis=1)]

    def state_idle(self) -> np.ndarray:
        """[R] idle power of every device a start state may use (the most a plan from it idles)."""
        idle = np.array([float(self.costs.idle_power_w[m[0]]) for m in self.types.members])
        return (self.grid * np.array(self.bundle)[None, :]) @ idle

    def layout_from(self, r: int) -> Layout | None:
        """The last pass's optimal layout from start state ``r`` (first class and depth on ties)."""
        val, ch = self._last[:2]
        v = val[r, 0].reshape(-1)
        if not np.isfinite(v).any():
            return None
        i = int(np.argmin(v))
        return self._rebuild(ch, (i // self.nD, i % self.nD), r)

    def _rebuild(self, ch: np.ndarray, at: tuple[int, int], r0: int | None = None) -> Layout:
        tp = self.types
        pools = [list(mb) for mb in tp.members]
        k, r, (c, d) = 0, self.R - 1 if r0 is None else r0, at
        K = len(self.bnd) - 1
        stages = []
        while k < K:
            gi, k2, c2, d2 = (int(x) for x in ch[r, k, c, d])
            comp = self.comps[gi]
            units = []
            for t in range(len(tp.members)):
                for _ in range(comp.devs[t]):
                    dev = pools[t].pop(0)
                    units.append(tp.dev_units[dev][comp.units[t]])
            i, j = int(self.bnd[k]), int(self.bnd[k2])
            samples = allocate(self.pf, i, j, tuple(units), self.m, None if self.ignore_memory else self._stash(d))
            if min(samples) < 1:  # the type's split and the members' differ: the smaller group is the layout
                self._note_dropped(i, j, [u for u, k in zip(units, samples, strict=True) if k < 1])
            stages.append(StageSpec(start=i, stop=j, replicas=tuple((u, k) for u, k in zip(units, samples,
                                                                                          strict=False) if k > 0)))
            r -= sum(b * s for b, s in zip(comp.bundles, self.stride, strict=False))
            k, c, d = k2, c2, d2
        return tuple(stages)

    def _note_dropped(self, i: int, j: int, units: list[int]) -> None:
        """A rebuilt group left members without samples (their type's priced split is not theirs): they are
        dropped, and the DP's optimum no longer holds exactly."""
        self.exact = False
        names = ", ".join(f"{self.costs.devices[self.costs.units[u][0]]}:{self.costs.units[u][1]}" for u in units)
        note = (f"DP heuristic: layers {self.costs.layer_names[i]}..{self.costs.layer_names[j - 1]} left {names} "
                "without samples; dropped from the group")
        if note not in self.notes:
            self.notes.append(note)

    # ----------------------------------------------------------------- thresholds
    def candidates(self, bkey: str) -> np.ndarray:
        """Every value a resource's bottleneck key can take (stages, links, head links; training: per
        micro-batch, as inference)."""
        vals = []
        for gi in range(len(self.comps)):
            st = self._stage(gi)
            b = st["tau"]
            vals.append(b[st["valid"]])
            vals += [np.ravel(st["in_p"]), np.ravel(st["out_p"])]
        # sends between stages: (samples) x cut / bandwidth + latency for every class's link terms
        fl = 2.0 if self.train else 1.0
        cut = self.pf.cut[self.bnd[1:-1]]
        ks = np.arange(1, self.m + 1, dtype=np.float64)
        terms = {(float(bw[c]), float(lt[c]), bool(self.cls_wide[c]))
                 for bw, lt, _ in self._link_tab for c in range(self.nS)}
        for bw, lt, wide in sorted(terms):
            nsamp = ks if wide else np.array([float(self.m)])
            vals.append(np.ravel(fl * (nsamp[:, None] * cut[None, :] / bw + lt)))
        allv = np.concatenate(vals) if vals else np.zeros(0)
        return np.unique(allv[np.isfinite(allv)])

    def tail_candidates(self) -> np.ndarray:
        """Every value a training stage's tail (all-reduce + optimizer step, after its last backward) can take."""
        vals = [np.zeros(1)]
        for gi in range(len(self.comps)):
            st = self._stage(gi)
            vals.append(np.broadcast_to(st["ar"], st["valid"].shape)[st["valid"]])
        allv = np.concatenate(vals)
        return np.unique(allv[np.isfinite(allv)])


def _first_min(t: np.ndarray, v: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """Per target in ``t`` (< ``n``, ascending): the candidate of least ``v``, then least ``pos``, then first
    in order (what a lexicographic sort picks, without sorting)."""
    best = np.full(n, np.inf)
    np.minimum.at(best, t, v)
    m = v == best[t]
    bp = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(bp, t[m], pos[m])
    idx = np.nonzero(m & (pos == bp[t]))[0]
    first = np.full(n, len(t))
    np.minimum.at(first, t[idx], idx)
    return first[first < len(t)]


def block_cuts(cut_bytes: np.ndarray, k: int, cut_ok: np.ndarray | None = None,
               work: np.ndarray | None = None) -> np.ndarray:
    """Boundaries (0 and n included) of a coarse graph of about ``k`` blocks, at cheap cuts.

    Cheap cuts are those no neighbouring cut undercuts in bytes (``cut_bytes`` local minima: the ends
    of residual blocks and other modules, where only one tensor is live). One block boundary is placed
    near each of ``k - 1`` evenly spaced quantiles of ``work`` (seconds per layer; default: one per
    layer) at the nearest cheap cut, then the cheapest cheap cuts fill up to ``k - 1``. Only cuts
    ``cut_ok`` allows are picked.
    """
    c = np.asarray(cut_bytes, dtype=np.float64)
    n = len(c) - 1
    inner = np.arange(1, n)
    if cut_ok is not None:
        inner = inner[np.asarray(cut_ok, dtype=bool)[1:n]]
    if k - 1 >= len(inner):
        return np.array(sorted({0, n} | {int(x) for x in inner}))
    cheap = inner[(c[inner] <= c[inner - 1]) & (c[inner] <= c[inner + 1])]
    if len(cheap) < k - 1:  # too few minima: the cheapest other cuts join them
        rest = np.setdiff1d(inner, cheap)
        cheap = np.sort(np.concatenate([cheap, rest[np.lexsort((rest, c[rest]))][:k - 1 - len(cheap)]]))
    w = np.ones(n) if work is None else np.maximum(np.asarray(work, dtype=np.float64), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(w)])
    pick: set[int] = set()
    for q in np.arange(1, k) / k * cum[-1]:
        free = np.array([x for x in cheap if int(x) not in pick])
        if not len(free):
            break
        pick.add(int(free[np.argmin(np.abs(cum[free] - q))]))
    for x in cheap[np.lexsort((cheap, c[cheap]))]:
        if len(pick) >= k - 1:
            break
        pick.add(int(x))
    return np.array(sorted({0, n} | pick))


def _passes(obj: Objective) -> int:
    """About how many DP passes ``search.optimise`` runs for ``obj`` (measured on ResNet-50 x 16 boards)."""
    if obj.objective == "throughput":
        return 2
    if obj.objective == "energy":
        return 9  # 8-18 passes, cheap ones (an energy pass's stage options mostly lose to a subset: _beaten)
    if obj.objective == "latency":
        return 1 if obj.microbatches == 1 else 8  # the bottleneck search: 3-5 passes, at most search.COARSE_PASSES
    return 10


def coarse_cuts(cut_bytes: np.ndarray, k: int, cut_ok: np.ndarray | None = None) -> np.ndarray:
    """About ``k`` stage boundaries (plus 0 and n): half evenly spaced, the rest at the cheapest cuts.

    The coarse graph's blocks are runs of layers between these boundaries; a DP or ILP over them is
    exact on the coarse graph. Only cuts ``cut_ok`` allows are picked (evenly spaced ones move to the
    nearest allowed cut).
    """
    n = len(cut_bytes) - 1
    inner = np.arange(1, n)
    if cut_ok is not None:
        inner = inner[np.asarray(cut_ok, dtype=bool)[1:n]]
    even = set()
    if len(inner):
        for x in np.linspace(1, n - 1, num=max(2, k // 2)).round().astype(int).tolist():
            even.add(int(inner[np.argmin(np.abs(inner - x))]))
    cheap = [int(x) for x in inner[np.lexsort((inner, np.asarray(cut_bytes)[inner]))]]
    pick = set(even)
    for x in cheap:
        if len(pick) >= k - 1:
            break
        pick.add(x)
    return np.array(sorted({0, n} | pick))
