"""Seeded random CostTables: chains and DAG-shaped cuts, for tests and benchmarks (no profiles needed)."""

from __future__ import annotations

import numpy as np

from edgeplan.profiles.cost import CostTable

MB = 1 << 20


def random_costs(seed: int, n_layers: int, n_devices: int, n_types: int | None = None, *, dag: bool = False,
                 units_per_device: int = 1, npu_gaps: bool = False, ram_mb: tuple[float, float] = (64, 512),
                 uniform_links: bool = True) -> CostTable:
    """A random cluster of ``n_devices`` boards drawn from ``n_types`` board kinds and a random model.

    Boards of one kind share all rows (so the DP can group them); ``dag`` adds
    residual-style skip tensors to ``cut_bytes``; ``npu_gaps`` makes the last
    unit of each kind miss some ops (NPU-like).
    """
    rng = np.random.default_rng(seed)
    n_types = n_types or n_devices
    n = n_layers
    flops = rng.lognormal(mean=0.0, sigma=1.0, size=n) * 1e6
    params = (rng.random(n) < 0.6) * rng.lognormal(mean=0.0, sigma=1.5, size=n) * MB
    act = rng.lognormal(mean=0.0, sigma=1.0, size=n) * 64 * 1024
    cut = np.empty(n + 1)
    cut[0] = act[0]
    cut[1:] = act
    if dag:
        for _ in range(max(1, n // 4)):
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            cut[a + 1:b + 1] += act[a]
    kinds = []
    for _ in range(n_types):
        kinds.append({
            "speed": rng.lognormal(mean=21.0, sigma=1.0, size=units_per_device),
            "fixed": rng.random(units_per_device) * 1e-4,
            "ram": rng.uniform(*ram_mb) * MB,
            "idle": rng.uniform(1, 5),
            "busy": rng.uniform(3, 12, size=units_per_device),
            "gaps": rng.random((units_per_device, n)) < 0.2,
            "hop": rng.uniform(0, 2e-3, size=units_per_device),  # runtime cost per stage call
            "hop_byte": rng.uniform(0, 2e-9, size=units_per_device),
        })
    dev_kind = np.sort(rng.integers(0, n_types, size=n_devices))
    dev_kind[:n_types] = np.arange(min(n_types, n_devices))
    dev_kind = np.sort(dev_kind)
    units, fwd, bwd, fixed, sup, busy, hop, hop_byte = [], [], [], [], [], [], [], []
    for d, kd in enumerate(dev_kind):
        kind = kinds[kd]
        for u in range(units_per_device):
            units.append((d, ("cpu", "gpu", "npu")[u % 3], "x86"))
            f = flops / kind["speed"][u]
            fwd.append(f)
            bwd.append(2 * f)
            fixed.append(np.full(n, kind["fixed"][u]))
            s = np.ones(n, dtype=bool)
            if npu_gaps and u == units_per_device - 1 and u > 0:
                s = ~kind["gaps"][u]
            sup.append(s)
            busy.append(kind["busy"][u])
            hop.append(kind["hop"][u])
            hop_byte.append(kind["hop_byte"][u])
    fwd, bwd, fixed, sup = (np.array(x) for x in (fwd, bwd, fixed, sup))
    for arr in (fwd, bwd, fixed):
        arr[~sup] = np.inf
    bw = np.full((n_devices, n_devices), rng.uniform(5, 120) * MB)
    lat = np.full((n_devices, n_devices), rng.uniform(1e-4, 2e-3))
    if not uniform_links and n_devices > 2:
        slow = int(rng.integers(1, n_devices))
        bw[slow, :] /= 4
        bw[:, slow] /= 4
    np.fill_diagonal(bw, np.inf)
    np.fill_diagonal(lat, 0.0)
    epb = np.where(np.isfinite(bw), 5e-8, 0.0)
    return CostTable(
        layer_names=tuple(f"l{i}" for i in range(n)), layer_ops=tuple("conv2d" for _ in range(n)),
        devices=tuple(f"dev{d}" for d in range(n_devices)), units=tuple(units),
        fwd_s=fwd, bwd_s=bwd, fixed_s=fixed, supported=sup, param_bytes=params, act_bytes=act, cut_bytes=cut,
        ram_bytes=np.array([kinds[k]["ram"] for k in dev_kind]),
        idle_power_w=np.array([kinds[k]["idle"] for k in dev_kind]), busy_power_w=np.array(busy),
        bandwidth=bw, latency_s=lat, energy_per_byte_j=epb, hop_s=np.array(hop), hop_byte_s=np.array(hop_byte),
    )
