"""`dapb history`: the agent's decisions and measured outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh.cli.common import ConfigOption, console, load

TABLES = ("decisions", "outcomes")


def history(
    table: Annotated[str, typer.Option("--table", help="decisions or outcomes.")] = "decisions",
    cls: Annotated[str | None, typer.Option("--class", help="Only this class (default, latency, throughput).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most recent rows.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help="SQLite history file.")] = None,
    config: ConfigOption = None,
) -> None:
    """Query the agent's history: decisions and measured outcomes (the paper's knowledge persistence)."""
    from dapb_mesh.classes import CLASS_NAMES
    from dapb_mesh.store import HistoryStore, StoreError

    if table not in TABLES:
        raise typer.BadParameter(f"{table!r}; choose from {', '.join(TABLES)}", param_hint="--table")
    if cls is not None and cls not in CLASS_NAMES.values():
        raise typer.BadParameter(f"{cls!r}; choose from {', '.join(CLASS_NAMES.values())}", param_hint="--class")
    path = store or load(config).agent.store
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist: has the agent run?", param_hint="--store")
    try:
        rows = HistoryStore(path).recent(table, limit, cls)
    except StoreError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    out = Table(title=f"{table} ({path})")
    for column in rows[0] if rows else ["(empty)"]:
        out.add_column(column)
    for row in rows:
        out.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(out)
