"""Training runtime: hybrid data + pipeline parallel training from a --mode training plan.

``launch.prepare`` writes the training artifacts, ``launch.run`` starts one
torch.distributed (gloo) rank per (board, stage) replica and watches them,
``engine`` is what each rank runs, ``routing`` the pure rank/sample/schedule
arithmetic, ``data`` the data sets, ``checkpoint`` the per-stage checkpoints
and the reassembled state_dict.
"""
