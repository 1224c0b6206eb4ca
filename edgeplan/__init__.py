"""edgeplan: plan and compile one PyTorch model across heterogeneous edge boards.

Phases, in processing order (one folder each): graph -> profiles -> planner ->
codegen/targets -> runtime. Importing this package imports no torch and no TVM.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import edgeplan` stays free of torch, numpy and the runtime.
    if name == "connect":
        from edgeplan.client import connect

        return connect
    raise AttributeError(f"module 'edgeplan' has no attribute {name!r}")
