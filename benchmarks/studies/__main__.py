"""`python -m benchmarks.studies` lists the studies; `python -m benchmarks.studies NAME [--quick] ...` runs one."""

from __future__ import annotations

import sys

from benchmarks.studies import studies


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = studies()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("studies (python -m benchmarks.studies NAME [--quick] [--out DIR] [--dataset SPEC] [--local]):")
        for name, mod in found.items():
            print(f"  {name:<12} {(mod.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if argv[0] not in found:
        print(f"no study {argv[0]!r}; studies: {', '.join(found)}", file=sys.stderr)
        return 2
    return found[argv[0]].main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
