"""`edgeplan run --check`: compare every pipeline output with the original PyTorch model.

The model is the one the plan recorded (``model_ref`` in plan.json) unless
``--model`` overrides it; zoo models are seeded, so the reference has the same
weights as the compiled stages. torch is imported here, on the host only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeplan.errors import ArtifactError, RuntimeFault


class CheckFailed(RuntimeFault):
    """A pipeline output differs from the PyTorch model by more than the tolerance."""


@dataclass(frozen=True)
class CheckResult:
    requests: int  # compared (answered) requests
    max_abs_error: float
    worst_request: int  # index of the request with the largest error (-1: none compared)
    worst_output: str
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.max_abs_error <= self.tolerance

    def describe(self) -> str:
        if not self.requests:
            return "check: no request was answered, nothing to compare"
        where = f" (request {self.worst_request}, output {self.worst_output})" if self.worst_request >= 0 else ""
        verdict = "ok" if self.ok else "FAILED"
        return (f"check against PyTorch: {self.requests} request(s), max abs error {self.max_abs_error:.3g}{where}, "
                f"tolerance {self.tolerance:g}: {verdict}")


def model_spec(plan: dict, override: str | None, plan_path: str) -> str:
    """The model to compare with: ``override``, else the plan's recorded ``model_ref``."""
    spec = override or plan.get("model_ref") or ""
    if not spec:
        raise ArtifactError(f"{plan_path}: the plan records no model (made before model_ref existed, or through the "
                            "API); give --model (zoo name, file.py:callable or torchvision:NAME)")
    return spec


def compare(spec: str, inputs: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray] | None],
            output_names: Sequence[str], tolerance: float = 1e-4) -> CheckResult:
    """Run the original model ``spec`` on every request of ``inputs``; compare with ``outputs`` (None: failed)."""
    import torch

    from edgeplan.graph.load import load_model

    module = load_model(spec).module.eval()
    worst, worst_i, worst_name, n = 0.0, -1, "", 0
    with torch.no_grad():
        for i, got in enumerate(outputs):
            if got is None:
                continue
            ref = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs[i]))
            ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
            if len(ref) != len(got):
                raise CheckFailed(f"request {i}: the pipeline gives {len(got)} output(s), {spec} gives {len(ref)}; "
                                  "was the folder compiled from this model? re-run `edgeplan compile`")
            n += 1
            for name, g, r in zip(output_names, got, ref, strict=True):
                if g.shape != r.shape:
                    raise CheckFailed(f"request {i}, output {name}: shape {list(g.shape)} but {spec} gives "
                                      f"{list(r.shape)}; was the folder compiled from this model?")
                err = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if g.size else 0.0
                if not np.isfinite(err):
                    err = float("inf")
                if err > worst or worst_i < 0:
                    worst, worst_i, worst_name = err, i, name
    return CheckResult(n, worst, worst_i, worst_name, tolerance)
