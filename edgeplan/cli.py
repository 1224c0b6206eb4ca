"""The `edgeplan` command line: parses arguments and calls the phases' APIs.

Heavy imports (torch, TVM) happen inside the commands, so `edgeplan --help` and
the pure commands start fast. Every EdgeplanError becomes one line on stderr and
a non-zero exit; `edgeplan --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from edgeplan.errors import EdgeplanError


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeplanError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"edgeplan: error: {e}", err=True)
            ctx.exit(e.exit_code)


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    help="Plan, compile and run one PyTorch model across heterogeneous edge boards.",
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    ctx.obj = {"debug": debug}


# Commands are grouped by phase, in pipeline order: graph, profiles, planner,
# codegen, runtime, training. Each section only parses and calls its phase.

# --- graph -------------------------------------------------------------------

# --- profiles ----------------------------------------------------------------

# --- planner -----------------------------------------------------------------

# --- codegen / targets -------------------------------------------------------

# --- runtime -----------------------------------------------------------------

# --- training ----------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
