"""edgeplan: plan and compile one PyTorch model across heterogeneous edge boards.

Phases, in processing order (one folder each): graph -> profiles -> planner ->
codegen/targets -> runtime. Importing this package imports no torch and no TVM.
"""

__version__ = "0.1.0"
