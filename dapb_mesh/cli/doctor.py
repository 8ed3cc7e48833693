"""`dapb doctor`: whether this host has every kernel feature DAPB uses."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh.cli.common import ConfigOption, console, load


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: {ok, checks: [{name, ok, detail}]}.")] = False,
    config: ConfigOption = None,
) -> None:
    """Check that this host has every kernel feature DAPB uses (BPF, bpffs, BTF, cgroup v2, sock_ops, ...).

    Each feature is probed for real (a map is created, a program type is loaded, a clsact qdisc is made in a
    scratch network namespace). Exits 1 when any check fails.
    """
    from dapb_mesh.doctor import report, run_checks

    settings = load(config)
    result = report(run_checks(settings.kernel))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(title="dapb doctor")
        table.add_column("feature")
        table.add_column("ok")
        table.add_column("detail")
        for check in result["checks"]:
            table.add_row(check["name"], "[green]yes[/green]" if check["ok"] else "[red]NO[/red]", check["detail"])
        console.print(table)
        console.print("[green]all checks passed[/green]" if result["ok"] else "[red]some checks failed[/red]")
    raise typer.Exit(0 if result["ok"] else 1)
