"""Run every ``benchmarks/bench_*.py`` ``main()`` in turn, with its default arguments."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> int:
    failed = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = f"benchmarks.{path.stem}"
        print(f"== {name}", flush=True)
        try:
            importlib.import_module(name).main([])
        except Exception as e:  # one benchmark failing must not hide the others' numbers
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
        print(flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
