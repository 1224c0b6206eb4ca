"""The default solver: a DP over (layer boundary, remaining devices per type).

``val[r, k, c, d]`` is the best cost of layers ``[bnd[k], n)`` using at most
``r`` devices of each type, where the stage starting at ``bnd[k]`` has link
class ``c`` (what the previous stage's send depends on) and depth ``d`` (stages
from it to the end, only tracked for 1F1B memory). A transition picks a group
composition (devices per type and the unit each type runs on) and the end of
the stage; every option's cost is an array over all ends, from prefix sums.

Passes: ``sum`` minimises an additive cost with every resource's bottleneck key
at most ``theta``; ``max`` minimises the bottleneck. Objectives combine them
(``search.solve``) so that the result is exact whenever no reduction was needed;
on large instances the candidate cuts, group shapes and device bundles are
reduced to stay fast, and ``notes`` says so.
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
CHUNK_ROWS = 256


@dataclass(frozen=True)
class _Comp:
    devs: tuple[int, ...]  # devices per type
    units: tuple[int, ...]  # local unit per type, -1 where absent
    bundles: tuple[int, ...]  # state units per type
    mask: int


class DPSolver:
    def __init__(self, costs: CostTable, objective: Objective, *, work_budget: float = WORK_BUDGET,
                 ignore_memory: bool = False, cuts: np.ndarray | None = None):
        self.costs, self.obj = costs, objective
        self.pf = Prefix(costs, objective)
        self.head = head_index(costs, objective)
        self.types: DeviceTypes = device_types(costs, self.head)
        self.ignore_memory = ignore_memory
        self.m, self.M, self.train = objective.micro, objective.microbatches, objective.training
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
        work_budget *= min(8.0, max(1.0, n * costs.n_devices / (170 * 16)))
        many = objective.objective in ("time", "energy") or (objective.objective == "latency" and self.M > 1)
        if n * costs.n_devices >= 2000:  # large: coarser passes (the refinement fixes cuts and groups after)
            work_budget /= 12 if many else 3
        self.work_budget = work_budget
        depth = self.nD
        self.nD = 1  # 1F1B depth only matters when memory depends on it; checked below
        self._reduce()
        self._build()
        if depth > 1 and not ignore_memory and not self._depth_free(depth):
            self.nD = depth
            if self._work() > self.work_budget:
                self._reduce()
            self._build()
        self._note_reductions()

    def _reduce(self) -> None:
        T = len(self.types.members)
        counts = self.types.counts
        while self._work() > self.work_budget:
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
        if len(self.bnd) < self.n_cuts:
            self.notes.append(f"DP heuristic: stage boundaries limited to {len(self.bnd) - 2} candidate cuts "
                              f"(cheapest cut_bytes plus evenly spaced) of {self.n_cuts - 2}")
        if not self.mixed:
            self.notes.append("DP heuristic: replica groups limited to one board type each")
        for t in range(T):
            if self.bundle[t] > 1:
                self.notes.append(f"DP heuristic: boards of type {self._type_name(t)} allocated in bundles of "
                                  f"{self.bundle[t]}")

    def _build(self) -> None:
        self._setup()
        self.cache: dict[int, dict] = {}
        self.link_cache: dict[int, tuple] = {}
        self._rows_cache = None
        self.ws = self._range_max()

    def _depth_free(self, depth: int) -> bool:
        """True when no stage option's shares or fit change between stashing 1 and ``depth`` micro-batches.

        Caps shrink as the stash grows, so equal results at both ends mean equal
        results at every depth between: 1F1B depth states are then not needed.
        """
        for gi in range(len(self.comps)):
            base = self._base(gi)
            s1, ok1 = self._shares(base, 1)
            sd, okd = self._shares(base, depth)
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
            present = [t for t in range(T) if n[t]]
            for units in itertools.product(*[range(tp.n_units(t)) for t in present]):
                u = [-1] * T
                for t, lu in zip(present, units, strict=False):
                    u[t] = lu
                comps.append(_Comp(devs=tuple(n[t] * self.bundle[t] for t in range(T)), units=tuple(u),
                                   bundles=tuple(n), mask=sum(1 << t for t in present)))
        self.comps = comps
        self.rows = []
        for c in comps:
            ok = np.all(grid >= np.array(c.bundles), axis=1)
            rv = np.nonzero(ok)[0]
            off = sum(b * s for b, s in zip(c.bundles, self.stride, strict=False))
            self.rows.append((rv, rv - off))
        masks = sorted({c.mask for c in comps})
        if tp.uniform:
            self.cls = {mk: (0 if mk == 1 else 1) for mk in masks}
        else:
            self.cls = {mk: i for i, mk in enumerate(masks)}
        self.nS = max(self.cls.values()) + 1 if self.cls else 1
        rep = {}
        for mk in masks:
            rep.setdefault(self.cls[mk], mk)
        self.rep_mask = [rep.get(c, 1) for c in range(self.nS)]

    def _work(self) -> float:
        """Element operations of one pass, estimated before building anything (rows = (group, state) pairs)."""
        tp = self.types
        T = len(tp.members)
        nb = [len(tp.members[t]) // self.bundle[t] for t in range(T)]
        U = [tp.n_units(t) for t in range(T)]
        R = float(np.prod(np.array(nb, dtype=np.float64) + 1))
        if self.mixed:
            rows = float(np.prod([(b + 1) + u * b * (b + 1) / 2 for b, u in zip(nb, U, strict=True)])) - R
            G = float(np.prod([1 + u * b for b, u in zip(nb, U, strict=True)])) - 1
        else:
            rows = sum(u * b * (b + 1) / 2 * R / (b + 1) for b, u in zip(nb, U, strict=True))
            G = float(sum(u * b for b, u in zip(nb, U, strict=True)))
        nS = 2 if tp.uniform else min(2 ** T, G + 1)
        K = len(self.bnd) - 1
        return K * K / 2 * rows * nS * self.nD + G * K * K * (4 + (self.m * T if self.mixed else 0))

    # ----------------------------------------------------------------- links
    def _types_of(self, mask: int) -> list[int]:
        return [t for t in range(len(self.types.members)) if mask >> t & 1]

    def _pair(self, src: list[int], dst: list[int]) -> tuple[float, float, float] | None:
        tp = self.types
        vals = [(a, b) for a in src for b in dst if np.isfinite(tp.bw[a, b])]
        if not vals:
            return None
        return (min(tp.bw[a, b] for a, b in vals), max(tp.lat[a, b] for a, b in vals),
                max(tp.epb[a, b] for a, b in vals))

    def _link_interior(self, c1: int, c2: int) -> tuple[float, float, float]:
        tp = self.types
        if tp.uniform:  # classes only separate "head alone" from the rest; every pair has the same link
            fin = np.argwhere(np.isfinite(tp.bw))
            if len(fin):
                a, b = fin[0]
                return tp.bw[a, b], tp.lat[a, b], tp.epb[a, b]
        got = self._pair(self._types_of(self.rep_mask[c1]), self._types_of(self.rep_mask[c2]))
        return got if got is not None else (np.inf, 0.0, 0.0)

    def _link_head(self, c: int, into: bool) -> tuple[float, float, float] | None:
        others = [t for t in self._types_of(self.rep_mask[c]) if t != 0]
        if not others:
            return None
        return self._pair([0], others) if into else self._pair(others, [0])

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
            # = Prefix.per_sample / per_call for every boundary pair at once
            F.append(pf.F[u, B][None, :] - pf.F[u, B][:, None] + pf.HB[u] * (pf.cut[B][None, :] + pf.cut[B][:, None]))
            X.append(pf.X[u, B][None, :] - pf.X[u, B][:, None] + pf.H[u])
            C.append(comp.devs[t])
            valid &= (pf.U[u, B][None, :] - pf.U[u, B][:, None]) == 0
        params = pf.P[B][None, :] - pf.P[B][:, None]
        actsum = pf.A[B][None, :] - pf.A[B][:, None]
        return {"vs": vs, "F": np.array(F), "X": np.array(X), "C": C, "U": U, "tri": tri, "valid": valid,
                "params": params, "actsum": actsum}

    def _shares(self, base: dict, stash: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Samples per type (allocate's greedy, per device within memory; ``None``: no memory) and memok."""
        pf, tp, m = self.pf, self.types, self.m
        vs, F, X, C = base["vs"], base["F"], base["X"], base["C"]
        K1 = len(self.bnd)
        c = np.array(C)[:, None, None]
        ram = np.array([float(self.costs.ram_bytes[tp.members[t][0]]) for t in vs])[:, None, None]
        per = (0 if stash is None else stash) * base["actsum"] + self.ws
        room = ram - base["params"][None] * pf.wfactor
        with np.errstate(divide="ignore", invalid="ignore"):
            cap = np.where(per > 0, np.floor(room / np.where(per > 0, per, 1.0)), np.where(room >= 0, np.inf, -1.0))
        if stash is None:
            cap = np.full_like(cap, np.inf)
        if len(vs) == 1:
            s = np.full((1, K1, K1), m, dtype=np.int64)
        else:
            s = np.zeros((len(vs), K1, K1), dtype=np.int64)
            big = np.iinfo(np.int64).max
            nv = len(vs)
            for _ in range(m):
                load = s // c  # the least-loaded device of each type
                cost = (load + 1) * F + X
                capped = np.where(load + 1 <= cap, cost, np.inf)
                full = np.isinf(capped.min(axis=0))  # no device has room: the rest go regardless (overflow)
                cost = np.where(full[None], cost, capped)
                cand = cost == cost.min(axis=0)
                lm = np.where(cand, load, big)
                cand &= lm == lm.min(axis=0)
                first = np.full(cand.shape[1:], nv)
                for v in range(nv - 1, -1, -1):
                    first = np.where(cand[v], v, first)
                for v in range(nv):
                    s[v] += first == v
        kmax = -(-s // c)
        if stash is None:
            memok = np.ones((K1, K1), dtype=bool)
        else:
            mem = base["params"][None] * pf.wfactor + kmax * per[None]
            memok = np.all(mem <= ram, axis=0)
        return s, memok

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
        for d in range(nD):
            s, ok = self._shares(base, None if self.ignore_memory else self._stash(d))
            valid[:, :, d] = base["valid"] & np.all(s >= c, axis=0)
            memok[:, :, d] = ok
            kmax = -(-s // c)
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
        out = {"tau": tau, "valid": valid, "memok": memok,
               "dyn": np.where(tri[:, :, None], dyn + (ar_e / self.M)[:, :, None], 0.0),
               "ar": np.where(tri, ar, 0.0)[:, :, None],
               "idle": float(sum(ci * x for ci, x in zip(C, idle, strict=True)))}
        self.cache[gi] = out
        return out

    def _links(self, cg: int):
        """Interior link (p, e) [K+1, nS] by end boundary, and the terminal (p, e), from class ``cg``."""
        hit = self.link_cache.get(cg)
        if hit is not None:
            return hit
        m, cut = self.m, self.pf.cut[self.bnd]
        f = 2.0 if self.train else 1.0
        p = np.empty((len(cut), self.nS))
        e = np.empty((len(cut), self.nS))
        for c2 in range(self.nS):
            bw, lat, epb = self._link_interior(cg, c2)
            p[:, c2] = f * (m * cut / bw + lat)
            e[:, c2] = f * m * cut * epb
        pe = ee = 0.0
        link = None if self.train else self._link_head(cg, into=False)
        if link is not None:
            bw, lat, epb = link
            pe, ee = m * cut[-1] / bw + lat, m * cut[-1] * epb
        self.link_cache[cg] = (p, e, pe, ee)
        return self.link_cache[cg]

    # ----------------------------------------------------------------- passes
    def _rows_all(self):
        """All (composition, remaining-state) rows of every transition, concatenated once."""
        if getattr(self, "_rows_cache", None) is None:
            g = np.concatenate([np.full(len(rv), gi) for gi, (rv, _) in enumerate(self.rows)])
            rv = np.concatenate([rv for rv, _ in self.rows])
            rmg = np.concatenate([rmg for _, rmg in self.rows])
            cg = np.array([self.cls[c.mask] for c in self.comps])[g]
            self._rows_cache = (g, rv, rmg, cg)
        return self._rows_cache

    def run_pass(self, kind: str, theta: float = np.inf, cp: float = 1.0, ce: float = 0.0,
                 theta_idle: float = 0.0, bkey: str = "p"):
        """One DP pass; returns (value, layout) or None when nothing is feasible.

        For each start boundary, every (composition, remaining devices) row is
        priced against every (end, next class, next depth) at once; the best per
        target state wins, earlier compositions first on ties (deterministic).
        """
        K = len(self.bnd) - 1
        R, nS, nD, M = self.R, self.nS, self.nD, self.M
        G = len(self.comps)
        val = np.full((R, K + 1, nS, nD), np.inf)
        ch = np.full((R, K + 1, nS, nD, 4), -1, dtype=np.int64)
        dmap = [min(nD - 1, d + 1) for d in range(nD)]
        is_sum = kind == "sum"
        K1 = K + 1
        A = np.empty((G, K1, K1, nD))  # stage cost by (start, end, its depth), inf where not allowed or not fitting
        LC = np.empty((G, K1, nS))  # link cost by end boundary and next class
        END = np.empty((G, K1))  # cost of the stage running to the end (incl. the link to the head)
        for gi, comp in enumerate(self.comps):
            st = self._stage(gi)
            pl, el, pe, ee = self._links(self.cls[comp.mask])
            tau = st["tau"]
            bs = _qkey(tau, st["ar"], M) if bkey == "q" else tau
            with np.errstate(invalid="ignore"):
                a_s = cp * tau + ce * (st["dyn"] + st["idle"] * theta_idle) if is_sum else bs
            ok = st["valid"] & st["memok"] & (bs <= theta)
            A[gi] = np.where(ok, a_s, np.inf)
            bl = (M - 1) * pl if bkey == "q" else pl
            LC[gi] = np.where(bl <= theta, cp * pl + ce * el if is_sum else bl, np.inf)
            bl_end = (M - 1) * pe if bkey == "q" else pe
            endc = (cp * pe + ce * ee if is_sum else bl_end) if bl_end <= theta else np.inf
            col = A[gi][:, K, 0]
            END[gi] = col + endc if is_sum else np.maximum(col, endc)
        rg, rrv, rmg, rcg = self._rows_all()
        seg = np.searchsorted(rg, np.arange(G + 1))  # rows are grouped by composition
        chunks, start = [], 0
        for gi in range(G):  # batch small compositions together: fewer, larger array operations
            if seg[gi + 1] - seg[start] >= CHUNK_ROWS or gi == G - 1:
                chunks.append((start, gi + 1))
                start = gi + 1
        target = rrv * nS + rcg
        for k in range(K - 1, -1, -1):
            cand_v, cand_t, cand_d, cand_pos, cand_info = [], [], [], [], []
            endv = END[rg, k]
            okend = np.isfinite(endv)
            if okend.any():
                cand_v.append(endv[okend])
                cand_t.append(target[okend])
                cand_d.append(np.zeros(okend.sum(), dtype=np.int64))
                cand_pos.append(rg[okend] * 2)
                cand_info.append(np.stack([rg[okend], np.full(okend.sum(), K), np.full(okend.sum(), -1),
                                           np.full(okend.sum(), -1)], axis=1))
            if K - k >= 2:
                a = A[:, k, k + 1:K][:, :, dmap]  # [G, L, nD] by the next stage's depth
                if is_sum:
                    c4 = a[:, :, None, :] + LC[:, k + 1:K][:, :, :, None]  # [G, L, nS, nD]
                else:
                    c4 = np.maximum(a[:, :, None, :], LC[:, k + 1:K][:, :, :, None])
                live = np.isfinite(c4).reshape(G, -1).any(axis=1)
                for c_lo, c_hi in chunks:  # compositions [c_lo, c_hi), rows [seg[c_lo], seg[c_hi])
                    if not live[c_lo:c_hi].any():
                        continue
                    lo_, hi_ = seg[c_lo], seg[c_hi]
                    nxt = val[rmg[lo_:hi_], k + 1:K]  # [rows, L, nS, nD]
                    cc = c4[c_lo] if c_hi - c_lo == 1 else c4[rg[lo_:hi_]]
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
                        r_ = lo_ + np.nonzero(fin)[0]
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
            order = np.lexsort((pos, v, t))
            _, first = np.unique(t[order], return_index=True)
            win = order[first]
            tt = t[win]
            d_ = tt % nD
            st_ = tt // nD
            r_, c_ = st_ // nS, st_ % nS
            val[r_, k, c_, d_] = v[win]
            ch[r_, k, c_, d_] = info[win]
        full = R - 1
        best_v, best_at = np.inf, None
        for c in range(nS):
            link = self._link_head(c, into=True)
            if link is None:
                p_in, e_in = 0.0, 0.0
            else:
                bw, lat, epb = link
                p_in, e_in = self.m * self.pf.cut[0] / bw + lat, self.m * self.pf.cut[0] * epb
            b_in = (M - 1) * p_in if bkey == "q" else p_in
            if b_in > theta:
                continue
            for d in range(nD):
                v = val[full, 0, c, d]
                tot = v + cp * p_in + ce * e_in if is_sum else max(v, b_in)
                if tot < best_v:
                    best_v, best_at = tot, (c, d)
        if best_at is None or not np.isfinite(best_v):
            return None
        return best_v, self._rebuild(ch, best_at)

    def _rebuild(self, ch: np.ndarray, at: tuple[int, int]) -> Layout:
        tp = self.types
        pools = [list(mb) for mb in tp.members]
        k, r, (c, d) = 0, self.R - 1, at
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
            stages.append(StageSpec(start=i, stop=j, replicas=tuple(zip(units, samples, strict=False))))
            r -= sum(b * s for b, s in zip(comp.bundles, self.stride, strict=False))
            k, c, d = k2, c2, d2
        return tuple(stages)

    # ----------------------------------------------------------------- thresholds
    def candidates(self, bkey: str) -> np.ndarray:
        """Every value a resource's bottleneck key can take (stages, links, head links)."""
        M = self.M
        f = (M - 1) if bkey == "q" else 1
        vals = []
        for gi in range(len(self.comps)):
            st = self._stage(gi)
            b = _qkey(st["tau"], st["ar"], M) if bkey == "q" else st["tau"]
            vals.append(b[st["valid"]])
        for cg in range(self.nS):
            pl, _, pe, _ = self._links(cg)
            vals += [np.ravel(pl[1:-1]) * f, np.array([pe * f])]
            link = self._link_head(cg, into=True)
            if link is not None:
                vals.append(np.array([(self.m * self.pf.cut[0] / link[0] + link[1]) * f]))
        allv = np.concatenate(vals) if vals else np.zeros(0)
        return np.unique(allv[np.isfinite(allv)])


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


def _qkey(tau: np.ndarray, ar: np.ndarray, M: int) -> np.ndarray:
    """Training bottleneck key ``(M-1) tau + ar`` (inf where the stage is impossible)."""
    return np.where(np.isfinite(tau), (M - 1) * np.where(np.isfinite(tau), tau, 0.0) + ar, np.inf)
