"""The `dapb` command line, one module per command group; each parses its options and delegates to the domain
packages. This module assembles them."""

from __future__ import annotations

import os
import sys
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
app.add_typer(bench.app, name="bench")
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


_debug = {"flag": False}  # set by --debug


def _set_debug(value: bool) -> None:
    _debug["flag"] = _debug["flag"] or value


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            callback=_set_debug,
            is_eager=True,
            help="Show the traceback of an unexpected error (or DAPB_DEBUG=1).",
        ),
    ] = False,
) -> None:
    """Dynamic Adaptive Packet Buffering (DAPB) for Istio/Envoy service meshes."""


def _command(args: list[str]) -> str:
    """The command words of a command line ("dapb filter test"), options left out."""
    words, group = ["dapb"], typer.main.get_command(app)
    for arg in args:
        if arg.startswith("-"):
            continue
        command = getattr(group, "commands", {}).get(arg)
        if command is None:
            break
        words.append(arg)
        group = command
    return " ".join(words)


def main(args: list[str] | None = None) -> None:
    """The `dapb` entry point. Bad input is reported by the commands themselves, naming the bad field or value;
    anything else that goes wrong is one line naming the command and the error (exit 1), with its traceback under
    --debug or DAPB_DEBUG=1. Ctrl-C exits 130."""
    args = sys.argv[1:] if args is None else args
    _debug["flag"] = False
    try:
        app(args=args)
    except Exception as error:
        if _debug["flag"] or os.environ.get("DAPB_DEBUG", "") not in ("", "0"):
            raise
        what = " ".join(str(error).split()) or "(no message)"
        print(
            f"{_command(args)}: error: {type(error).__name__}: {what} "
            "(run `dapb --debug ...` or set DAPB_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
