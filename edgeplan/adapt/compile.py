"""`edgeplan compile plans/`: every plan of a family, each distinct stage module built once (issue 12 item 2).

Layout::

    OUT/family.json             the family's table (as `edgeplan plan --variants` wrote it)
    OUT/compile-family.json     per distinct module: which plans run it; modules built vs copied
    OUT/plan-K/...              one complete artifact folder per plan (manifest.json, board folders)

A module (same layers, target, options, samples, backend) is compiled for the first plan that runs it
and copied into the others (codegen's ``module_cache``), so a family of N plans costs one compile per
distinct module, not per plan. Not yet here: one board folder holding every module it may run, and
boards loading them all at start (that needs the runtime's plan switch, issue 12 item 3).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgeplan import jsonio
from edgeplan.codegen import manifest
from edgeplan.planner.family import FAMILY_FILE, load_family

SUMMARY = "compile-family.json"


def compile_family(folder, out, *, model_spec: str | None = None, cluster=None, backend: str = "auto",
                   force: bool = False, progress=None, bind_any: bool = False,
                   input_shape: tuple[int, ...] | None = None) -> dict:
    """Compile every plan of the family in ``folder`` into ``out`` (see the module docstring); returns the summary.

    Written into a temporary folder next to ``out`` and renamed at the end (an interrupted compile leaves none).
    """
    from edgeplan.codegen.compile import compile_plan
    from edgeplan.graph.load import build

    folder, out = Path(folder), Path(out)
    fam, plans = load_family(folder)
    if force and (out / SUMMARY).is_file() and not out.is_symlink():
        pass  # an earlier family compile: replaced at the end
    else:
        manifest.check_out_dir(out, force)
    first = next(iter(plans.values()))
    spec = model_spec or first.model_ref
    traced = build(spec, input_shape if input_shape is not None else (first.input_shape if not model_spec else None))
    cache: dict = {}
    built: list[str] = []
    reused: list[str] = []

    def on_event(ev) -> None:
        if ev.status == "done" and ev.job.startswith("stage"):
            built.append(ev.job)
        elif ev.status == "reused":
            reused.append(ev.job)
        if progress is not None:
            progress(ev)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in plans:
            compile_plan(folder / name, model_spec, tmp / Path(name).stem, cluster, backend, on_event,
                         traced=traced, bind_any=bind_any, input_shape=input_shape, module_cache=cache)
        shutil.copyfile(folder / FAMILY_FILE, tmp / FAMILY_FILE)
        summary = {
            "schema_version": 1, "model": fam.model, "plans": [Path(n).stem for n in plans],
            "modules_built": len(built), "modules_copied": len(reused),
            "modules": [{"device": m.device, "unit": m.unit, "layers": [m.start, m.stop], "samples": m.samples,
                         "plans": [Path(p).stem for p in m.plans]} for m in fam.modules],
        }
        jsonio.write(tmp / SUMMARY, summary)
        if out.exists():  # check_out_dir allowed it (--force)
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
