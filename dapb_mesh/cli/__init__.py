"""The `dapb` command line, one module per command group; each parses its options and delegates to the domain
packages. This module assembles them."""

from __future__ import annotations

from typing import Annotated

import typer

from dapb_mesh import __version__
from dapb_mesh.cli import agent, bench, config, doctor, history, policy, render, testbed, train
from dapb_mesh.cli import filter as filter_group
from dapb_mesh.cli.common import console

app = typer.Typer(
    help="Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(doctor.doctor)
app.command()(bench.bench)
app.command()(agent.agent)
app.command()(history.history)
app.command()(policy.demo)
app.add_typer(policy.app, name="policy")
app.add_typer(render.app, name="render")
app.add_typer(filter_group.app, name="filter")
app.add_typer(train.app, name="train")
app.add_typer(testbed.app, name="testbed")
app.add_typer(config.app, name="config")


def _version(value: bool) -> None:
    if value:
        console.print(f"dapb-mesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes."""
