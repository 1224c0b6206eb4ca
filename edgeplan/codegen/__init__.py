"""codegen/: Plan + model -> one artifact folder per board. The planner decides, codegen executes.

In pipeline order: ``split`` cuts the traced fx module at the plan's stage boundaries;
``compile`` runs each replica's stage through its target (``edgeplan.targets``) and
writes stage.json files; ``render`` makes the launchers from ``templates/*.j2``;
``manifest`` records every file's sha256 and ``verify`` checks a folder against it.
Entry points: ``compile.compile_plan`` and ``manifest.verify``.
"""
