"""The `edgeplan` command line: parses arguments and calls the phases' APIs.

Heavy imports (torch, TVM) happen inside the commands, so `edgeplan --help` and
the pure commands start fast. Every EdgeplanError becomes one line on stderr and
a non-zero exit; `edgeplan --debug ...` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from edgeplan.errors import EdgeplanError


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeplanError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            typer.echo(f"edgeplan: error: {e}", err=True)
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


# --- testbed / deploy --------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def emulate(
    cluster: Path = typer.Argument(..., help="Cluster YAML to emulate.", exists=True, dir_okay=False),
    command: list[str] = typer.Argument(..., help="Command to run inside (after --), e.g. edgeplan run art/."),
    host_gflops: float | None = typer.Option(
        None, help="This machine's single-core GFLOP/s (default: measured with a short GEMM)."),
) -> None:
    """Run COMMAND against an emulated cluster on this machine (needs root).

    Each board becomes a network namespace, links are shaped to the cluster's
    bandwidths and CPU quotas are scaled to the boards' speeds.

    Example: edgeplan emulate examples/clusters/three-node-hetero.yaml -- edgeplan run art/ --requests 200
    """
    from edgeplan.profiles.load import load_cluster
    from edgeplan.testbed import emulate as testbed

    code = testbed.run(load_cluster(cluster), command,
                       host_core_flops=host_gflops * 1e9 if host_gflops else None, echo=typer.echo)
    raise typer.Exit(code)


@app.command()
def deploy(
    artifacts: Path = typer.Argument(..., help="Artifact folder from `edgeplan compile`.", exists=True,
                                     file_okay=False),
    cluster: Path = typer.Option(..., "--cluster", help="Cluster YAML with each board's [user@]host[:port].",
                                 exists=True, dir_okay=False),
    remote_dir: str = typer.Option("edgeplan", help="Folder on each board (relative to the SSH user's home)."),
    ssh_user: str = typer.Option("root", help="SSH user when the address names none."),
    ssh_port: int = typer.Option(22, help="SSH port when the address names none."),
    identity: Path | None = typer.Option(None, "--identity", "-i", help="Private key file."),
    start: bool = typer.Option(True, help="Start each board's launcher after verifying it."),
) -> None:
    """Copy each board's folder over SSH (changed files only), verify sha256 there, start it."""
    from edgeplan.deploy import ssh
    from edgeplan.profiles.load import load_cluster

    spec = load_cluster(cluster)
    failed = False
    for device in spec.devices:
        if not (artifacts / device.name).is_dir():
            continue
        target = ssh.parse_address(device.name, device.address, ssh_user, ssh_port)
        r = ssh.deploy_board(artifacts, target, remote_dir, key_filename=str(identity) if identity else None,
                             start=start)
        state = "verified" if r.verified else "FAILED verification"
        typer.echo(f"{r.device:<14} sent {len(r.uploaded)} files ({r.bytes_sent / 1e6:.1f} MB), "
                   f"{r.unchanged} unchanged, {state}{', started' if r.started else ''}")
        for p in r.problems:
            typer.echo(f"  {p}", err=True)
        failed |= not r.verified
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
