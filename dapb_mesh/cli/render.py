"""`dapb render istio`: the Istio install manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapb_mesh.cli.common import console, output_dir

app = typer.Typer(help="Render install manifests.", no_args_is_help=True)


@app.command("istio")
def render_istio(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the manifests to.")] = Path("istio"),
) -> None:
    """Write the Istio install: IstioOperator overlay, WasmPlugin, EnvoyFilter, agent DaemonSet with RBAC, and an
    annotated example VirtualService with its DestinationRule."""
    from dapb_mesh.mesh.manifests import write

    output_dir(out, "--out")
    try:
        paths = write(out)
    except OSError as error:
        where = error.filename if error.filename is not None else out
        raise typer.BadParameter(f"cannot write {where}: {error.strerror or error}", param_hint="--out") from None
    for path in paths:
        console.print(f"wrote {path}")
