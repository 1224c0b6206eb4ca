"""The one interface every target kind implements (DESIGN: targets are uniform plug-ins).

Codegen calls ``get_target(kind).compile_stage(stage_gm, example_inputs, options, out_dir)``
once per replica and writes ``stage.json`` from the returned ``CompiledStage``
(``backend`` and ``module_file``). This module imports no torch and no TVM so the
registry and the planner can name targets cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class CompiledStage:
    """What a compile wrote into ``out_dir``.

    ``backend`` is the board-side loader name (``edgeplan/runtime/backend_<backend>.py``),
    ``module_file`` the file that loader opens, relative to ``out_dir``; ``files`` every
    file written (``module_file`` included), relative to ``out_dir``; ``notes`` short
    human-readable facts (chosen backend and why, measured ms of each candidate) that
    codegen copies into its report so profiles can be calibrated; ``measured_ms`` the same
    timings as data: (backend, median ms on the compile machine) for each candidate timed;
    ``printed`` the notes a user must see, which ``edgeplan compile`` prints (a backend
    that fell back to another), also kept in ``notes``.
    """

    backend: str
    module_file: str
    files: tuple[str, ...]
    compile_s: float
    notes: tuple[str, ...] = ()
    measured_ms: tuple[tuple[str, float], ...] = ()
    printed: tuple[str, ...] = ()


@runtime_checkable
class Target(Protocol):
    """A target kind: what it can compile, how to compile one stage, what a board needs to run it."""

    name: str  # kind string used in profiles and plans: "x86", "arm-cpu", "cuda", "mali", "npu"
    description: str
    backends: tuple[str, ...]  # backends compile_stage accepts besides "auto"

    def supports(self, op_kinds: set[str]) -> set[str]:
        """The subset of ``op_kinds`` (edgeplan.graph.ops names) this target cannot compile."""
        ...

    def compile_stage(
        self,
        module: Any,  # torch.fx.GraphModule of one stage, eval mode; returns a tuple when several outputs
        example_inputs: tuple[Any, ...],  # torch.Tensors, in the stage's input order
        options: dict[str, str],  # the unit's target_options, e.g. {"mcpu": "cortex-a72"}
        out_dir: Path,
        backend: str = "auto",
    ) -> CompiledStage:
        """Compile one stage into ``out_dir``; raises CompileError naming the stage file and the fix."""
        ...

    def runtime_requirements(self, backend: str) -> tuple[str, ...]:
        """Lines for the board README: what to pip/apt install to run ``backend`` modules."""
        ...
