"""The training-framework reserve: peak resident memory of a torch training rank beyond its model.

Every torch training rank holds framework memory before its model (the interpreter, torch and its
allocator, autograd, torch.distributed with gloo): issue 15's study 2 measured ResNet-110 b32 on one
Pi 3B at 798 MB peak RSS against 471 MB modelled. The planner reserves it per training rank
(profiles: ``train_reserve_mb``); this measures the default in a fresh process, as the engine sets a
rank up (``training/engine.py``: a TCPStore, ``init_process_group("gloo")``, SGD with momentum), with a
tiny model whose own modelled memory is subtracted.

    .venv/bin/python -m benchmarks.bench_train_reserve

prints RSS after each phase and the reserve (peak - modelled). Measured on this x86 host with torch
2.13 (CPU wheel): a proxy for a board's aarch64 torch, whose libraries differ in size; `edgeplan
calibrate TRAIN-REPORT` fits the board's own figure from a real run's peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, socket, sys, datetime

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

out = {"start": rss()}
import numpy  # noqa
import torch
import torch.distributed as dist
import edgeplan.training.engine  # noqa: the rank's own imports
out["imports"] = rss()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=datetime.timedelta(seconds=30))
dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=30))
g = dist.new_group([0])
out["gloo"] = rss()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 8 * 8, 10)).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
for _ in range(5):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for p in model.parameters():
        dist.all_reduce(p.grad, group=g)
    opt.step()
out["trained"] = rss()
params = sum(p.numel() * p.element_size() for p in model.parameters())
acts = 4 * (3 * 64 + 8 * 64 * 2 + 8 * 64 + 10) * 4
out["modelled"] = params * 3 + acts  # weights + grads + momentum, activations of one micro-batch
from edgeplan.runtime.monitor import peak_rss_bytes  # VmHWM: ru_maxrss would keep the parent's peak
out["peak"] = peak_rss_bytes()
dist.destroy_process_group()
print(json.dumps(out))
"""


def measure() -> dict:
    """One fresh rank's RSS figures (bytes) and ``reserve`` = peak - the tiny model's modelled memory."""
    got = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, check=True)
    d = json.loads(got.stdout.strip().splitlines()[-1])
    d["reserve"] = max(0, d["peak"] - d["modelled"])
    return d


def main(argv: list[str] | None = None) -> None:  # argv: `python -m benchmarks` passes []
    import torch

    d = measure()
    mb = 2**20
    print(f"torch {torch.__version__} on {sys.platform} (a proxy for a board's torch)")
    for k in ("start", "imports", "gloo", "trained", "peak"):
        print(f"  rss {k:<8} {d[k] / mb:7.1f} MB")
    print(f"  tiny model modelled {d['modelled'] / mb:.2f} MB")
    print(f"reserve (peak - modelled): {d['reserve'] / mb:.0f} MB")


if __name__ == "__main__":
    main()
