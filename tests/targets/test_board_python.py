"""Everything codegen puts into a board folder runs on the board's Python: 3.6 (JetPack 4.6) and newer.

The set of files comes from codegen itself (``compile.board_python()``: the runtime package, the
profiling kit's runner, each target's per-stage scripts rendered from their templates), and a compile
checks that a board folder holds no other Python. Each file is checked with vermin
(``--target=3.6-``, the dataclasses backport allowed) plus what vermin does not see: ``X | Y`` in an
annotation Python evaluates (function signatures, class and module variables) and numpy functions newer
than the 1.16 a board may have. A line may opt out with ``# novermin`` when the code guards it.
No CPython 3.6 is installable here (Debian's current suites and PyPI have none), so this is static.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeplan.codegen.compile import BOARD_PYTHON, RUNTIME_DIR, board_python, compile_plan
from edgeplan.targets import npu

pytest.importorskip("vermin")

OLDEST = BOARD_PYTHON
REPO = Path(__file__).resolve().parents[2]
# numpy functions a board's numpy (1.16, JetPack 4.6 era) lacks: name -> the numpy that added it
NEWER_NUMPY = {"default_rng": "1.17", "Generator": "1.17", "sliding_window_view": "1.20", "from_dlpack": "1.22",
               "typing": "1.20"}
_META = {"inputs": [{"name": "x", "shape": [1, 3, 8, 8], "layout": "nchw"}],
         "outputs": [{"name": "y", "shape": [1, 10]}]}
# how this test renders each board template (a new template must be added here, or the test fails saying so)
RENDER = {
    "npu_run_rknn.py.j2": lambda: npu.render_launcher(
        {**_META, "backend": "rknn", "platform": "rk3588", "dtype": "int8", "core_mask": "0_1_2",
         "core_mask_value": 7}, "model.rknn", "stage0"),
    "npu_run_openvino.py.j2": lambda: npu.render_launcher(
        {**_META, "backend": "openvino", "platform": "intel-npu", "dtype": "fp16", "core_mask": "auto",
         "core_mask_value": None}, "model.xml", "stage0"),
}


def _vermin(paths: list[Path]) -> list[tuple[str, int, str]]:
    """(file, line, what) for each feature vermin says needs a Python newer than OLDEST."""
    target = ".".join(map(str, OLDEST))
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())", f"--target={target}-",
         "--backport", "dataclasses", "--eval-annotations", "--no-tips", "--violations", "--format", "parsable",
         *map(str, paths)], capture_output=True, text=True, timeout=120)
    found = []
    for line in out.stdout.splitlines():
        m = re.match(r"(.+?):(\d*):\d*:[^:]*:([\d.]+):(.+)$", line)
        if m and m.group(4).strip():
            found.append((m.group(1), int(m.group(2) or 0), f"{m.group(4).strip()} needs Python {m.group(3)}"))
    assert out.returncode in (0, 1) and (found or out.returncode == 0), out.stdout + out.stderr
    return found


def _beyond_vermin(path: Path) -> list[tuple[str, int, str]]:
    """Evaluated ``X | Y`` annotations (vermin misses them), numpy newer than 1.16, syntax newer than OLDEST."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    try:
        ast.parse(text, str(path), feature_version=OLDEST)
    except SyntaxError as e:
        found.append((str(path), e.lineno or 0, f"syntax of a newer Python: {e.msg}"))
    tree = ast.parse(text, str(path))

    def union(ann, where):
        for n in ast.walk(ann) if ann is not None else ():
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
                found.append((str(path), n.lineno, f"`X | Y` in {where} (evaluated at run time) needs Python 3.10; "
                                                   "use typing.Optional/Union or a string annotation"))
                return

    def body(nodes, where):  # annotations of module and class variables are evaluated; a function body's are not
        for node in nodes:
            if isinstance(node, ast.AnnAssign):
                union(node.annotation, f"a {where} variable's annotation")
            elif isinstance(node, ast.ClassDef):
                body(node.body, "class")
            elif isinstance(node, (ast.If, ast.Try)):
                body(node.body, where)

    body(tree.body, "module")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                union(arg.annotation, f"parameter {arg.arg!r} of {node.name}()")
            union(node.returns, f"the return annotation of {node.name}()")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 2
              and node.func.id in ("isinstance", "issubclass")):
            union(node.args[1], f"{node.func.id}()'s classes")
        elif isinstance(node, ast.Attribute) and node.attr in NEWER_NUMPY:
            base = node.value
            if isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in ("np", "numpy"):
                found.append((str(path), node.lineno, f"numpy.{node.attr} needs numpy {NEWER_NUMPY[node.attr]} "
                                                      "(a board may have 1.16)"))
    return [f for f in found if "novermin" not in lines[f[1] - 1]]


def check(paths: list[Path], names: dict[str, str] | None = None) -> list[str]:
    """``file:line: what`` for everything in ``paths`` that the board's oldest Python cannot run
    (``names``: how to call a checked path in the message)."""
    found = _vermin(paths) + [f for p in paths for f in _beyond_vermin(p)]
    names = names or {}
    return sorted(f"{names.get(file, file)}:{line}: {what}" for file, line, what in set(found))


# Known problems in files another helper owns, each with where it is and the fix; strict, so the entry must go
# as soon as the file is fixed (the test then XPASSes and fails).
KNOWN: dict[str, str] = {}
BOARD_FILES = board_python()


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> dict[str, list[str]]:
    """Every board file checked in one vermin run: its name -> its problems (``file:line: what``)."""
    tmp, files = tmp_path_factory.mktemp("board-python"), {}
    for f in BOARD_FILES:
        if not f.template:
            files[f.source] = _name(f)
            continue
        render = RENDER.get(f.source.name)
        assert render is not None, (f"{f.source.name} is a board template ({f.dest}) that this test does not "
                                    "render: add it to RENDER in tests/targets/test_board_python.py")
        out = tmp / f"{f.source.name}.py"
        out.write_text(render())
        files[out] = _name(f)
    found = check(list(files), {str(p): name for p, name in files.items()})
    return {name: [p for p in found if p.startswith(f"{name}:")] for name in files.values()}


def _name(f) -> str:
    rel = f.source.relative_to(REPO).as_posix()
    return f"{rel} (rendered as {f.dest})" if f.template else rel


def test_board_files_are_the_runtime_the_kit_runner_and_the_npu_launchers():
    kinds = {d.dest.split("/")[0] for d in BOARD_FILES}
    assert {RUNTIME_DIR, "profiling", "stage*"} <= kinds
    assert any(f.dest == f"{RUNTIME_DIR}/worker.py" for f in BOARD_FILES)


@pytest.mark.parametrize("name", [
    pytest.param(_name(f), marks=pytest.mark.xfail(strict=True, reason=KNOWN[_name(f)])) if _name(f) in KNOWN
    else _name(f) for f in BOARD_FILES])
def test_board_file_runs_on_the_oldest_board_python(problems, name):
    """Each file codegen puts on a board (compile.board_python()) against Python 3.6 and numpy 1.16."""
    assert not problems[name], (f"{len(problems[name])} place(s) need a Python newer than "
                                f"{'.'.join(map(str, OLDEST))} (JetPack 4.6) or numpy newer than 1.16:\n"
                                + "\n".join(problems[name]))


def test_the_check_names_file_line_and_feature(tmp_path):
    """The checker is not vacuous: each kind of newer-Python use is reported at its line."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import math\n"
        "import numpy as np\n"
        "def f(x: int | None, y: list[int]) -> None:\n"
        "    return math.prod(zip(x, y, strict=True))\n"
        "class C:\n"
        "    z: str | None = None\n"
        "rng = np.random.default_rng(0)\n"
        "ok = np.random.default_rng  # novermin: guarded\n"
        "def g(a, /):\n"
        "    pass\n"
        "ok = isinstance(rng, int | str)\n")
    problems = check([bad])
    text = "\n".join(problems)
    for line, what in ((3, "needs Python 3.10"), (3, "list[..]"), (4, "math.prod"), (4, "zip(strict)"),
                       (6, "class variable"), (7, "default_rng needs numpy 1.17"), (11, "isinstance()")):
        assert any(p.startswith(f"{bad}:{line}: ") and what in p for p in problems), (line, what, text)
    assert not any(p.startswith(f"{bad}:8: ") for p in problems), text
    assert any(p.startswith(f"{bad}:9: ") for p in problems), text  # positional-only parameters: a syntax error
    good = tmp_path / "good.py"
    good.write_text("from typing import List, Optional\ndef f(x: Optional[int], y: 'list[int] | None') -> List[int]:"
                    "\n    z: int | None = None\n    return [x or 0]\n")
    assert check([good]) == []


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A small plan compiled with the test target (text modules): three board folders."""
    from tests.codegen.codegen_helpers import TEXT_TARGET, fx_trace, make_plan
    from tests.codegen.test_codegen_split import Branchy

    traced = fx_trace(Branchy(), (1, 3, 8, 8), "branchy")
    plan = make_plan(traced.graph, [3], [[("a", 2)], [("b", 1), ("c", 1)]], target=TEXT_TARGET.name, head="a")
    return compile_plan(plan, "branchy", tmp_path_factory.mktemp("board-python") / "art", traced=traced)


def test_a_board_folder_holds_no_python_that_board_python_misses(art):
    """List the board folders' Python: each file is one ``board_python()`` names (so the checks above
    cover it) or a module the stage's target compiled (listed in stage.json)."""
    out = art
    patterns = [f.dest for f in board_python()]
    seen = 0
    for board in (p for p in out.iterdir() if p.is_dir()):
        compiled = {f"{s.parent.name}/{rel}" for s in board.glob("stage*/stage.json")
                    for rel, _ in json.loads(s.read_text())["files"]}
        for py in board.rglob("*.py"):
            rel = py.relative_to(board).as_posix()
            seen += 1
            assert rel in compiled or any(fnmatch.fnmatch(rel, p) for p in patterns), (
                f"{board.name}/{rel}: Python codegen put on a board that compile.board_python() does not list, "
                "so no test checks it runs on the board's Python")
    assert seen >= 3 * len([f for f in board_python() if f.dest.startswith(RUNTIME_DIR)])


@pytest.mark.parametrize("python, why", [
    ("import sys; sys.exit(3 if sys.argv[1:2] == ['-c'] and 'version_info' in sys.argv[2] else 0)", "an old Python"),
    ("import sys; sys.exit(1 if sys.argv[1:2] == ['-c'] and 'dataclasses' in sys.argv[2] else 0)", "no dataclasses"),
])
def test_start_sh_stops_with_one_line_when_its_python_cannot_run_the_runtime(art, tmp_path, python, why):
    """A board whose python3 is too old or lacks numpy/dataclasses: start.sh says so in one line and starts
    no worker (``python`` stands in for that interpreter; it logs every worker start)."""
    fake = tmp_path / "python3"
    log = tmp_path / "started"
    fake.write_text(f"#!{sys.executable}\nimport sys\nif sys.argv[1:2] != ['-c']:\n"
                    f"    open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n{python}\n")
    fake.chmod(0o755)
    r = subprocess.run(["sh", str(art / "a" / "start.sh")], env={**os.environ, "EDGEPLAN_PYTHON": str(fake)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, why
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"start.sh: {fake} cannot run edgeplan_runtime/: it needs Python "
                           f"{'.'.join(map(str, BOARD_PYTHON))} or newer with numpy") and "README.txt" in line
    assert not log.exists(), "no worker starts"


def test_compat_stands_in_for_the_newer_builtins():
    """runtime/compat.py behaves as zip(strict=True), math.prod and a set_result that spares cancelled futures."""
    from concurrent.futures import Future

    from edgeplan.runtime.compat import prod, settle, zip_strict

    assert list(zip_strict([1, 2], "ab")) == [(1, "a"), (2, "b")] and list(zip_strict()) == []
    for a, b in (([1], [1, 2]), ([1, 2], [1])):
        with pytest.raises(ValueError, match="zip_strict: argument 1 is"):
            list(zip_strict(a, b))
    assert prod([2, 3, 4]) == 24 and prod([]) == 1
    fut = Future()
    assert settle(fut, "x") and fut.result() == "x"
    assert not settle(fut, "y") and fut.result() == "x"  # done: left as it is
    gone = Future()
    gone.cancel()
    assert not settle(gone, exception=RuntimeError("late")) and gone.cancelled()
