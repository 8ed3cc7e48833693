"""`dapb config reference|check`: the settings' reference and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapb_mesh.cli.common import load

app = typer.Typer(help="Configuration: reference and validation.", no_args_is_help=True)


@app.command("reference")
def config_reference() -> None:
    """Print the reference of every setting (Markdown), as in docs/configuration.md."""
    from dapb_mesh.config import settings_reference

    print(settings_reference(), end="")


@app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML configuration file.", dir_okay=False)]) -> None:
    """Validate a configuration file (plus DAPB_* variables) and print the effective settings as JSON."""
    print(load(path).model_dump_json(indent=2))
