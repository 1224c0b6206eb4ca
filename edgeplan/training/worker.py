"""Process entry of one training rank: ``python -m edgeplan.training.worker JOB.json RANK``.

The launcher starts one of these per (board, stage) replica. Exit status: 0
done, 3 a fault (the message, naming the board and stage, is on stderr and in
``<run_dir>/errors/rank-N.txt``), 2 a usage error.
"""

from __future__ import annotations

import os
import sys

from edgeplan import jsonio
from edgeplan.errors import EdgeplanError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m edgeplan.training.worker JOB.json RANK", file=sys.stderr)
        return 2
    import torch

    from edgeplan.training.config import Job
    from edgeplan.training.sources import engine_class

    # one compute thread per rank unless told otherwise: ranks share a board's cores (and the local machine's)
    torch.set_num_threads(int(os.environ.get("EDGEPLAN_TRAIN_THREADS", "1")))
    try:
        job = Job.from_json(jsonio.read(argv[0]))
        engine_class(job)(job, int(argv[1])).run()
    except EdgeplanError as e:
        print(f"edgeplan: error: {e}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
