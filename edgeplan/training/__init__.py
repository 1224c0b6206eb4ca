"""Training runtime: hybrid data + pipeline parallel training from a --mode training plan.

``launch.prepare`` writes the training artifacts (``write_artifacts``: what codegen's compile
entry calls for a training plan), ``launch.run`` starts one
torch.distributed (gloo) rank per (board, stage) replica and watches them,
``engine`` is what each rank runs (told by ``config``'s TrainConfig and Job; its
numbers summed by ``metrics``; test faults from ``faults``), ``routing`` the pure rank/sample/schedule
arithmetic, ``data`` the data sets, ``checkpoint`` the per-stage checkpoints
and the reassembled state_dict.
"""


def write_artifacts(plan, model_spec, out_dir, **options):
    """Training artifacts of ``plan`` (``launch.prepare``): what ``edgeplan compile`` writes for a training plan.

    codegen's compile entry finds this by the plan's mode (``edgeplan.<mode>.write_artifacts``),
    so codegen imports nothing from training; launch (and torch) load only when it is called.
    """
    from edgeplan.training.launch import prepare

    return prepare(plan, model_spec, out_dir, **options)
