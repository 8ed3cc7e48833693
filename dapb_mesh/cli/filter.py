"""`dapb filter test`: the Wasm filter run in the Python proxy-wasm host, without Envoy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh.cli.common import console, err_console
from dapb_mesh.config import PolicyConfig
from dapb_mesh.mesh.virtualservice import plugin_config

app = typer.Typer(help="The DSCP-tagging Wasm filter, run in the Python proxy-wasm host.", no_args_is_help=True)


@app.command("test")
def filter_test(
    route: Annotated[str | None, typer.Option("--route", help="The route name Envoy would report.")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="'name: value' (repeatable).")] = None,
    plugin_config: Annotated[
        str, typer.Option("--config", help="Plugin configuration JSON, or @FILE.")
    ] = plugin_config([], PolicyConfig()),
    wasm: Annotated[Path, typer.Option("--wasm", help="The filter module.")] = Path("wasm_filter/dapb_filter.wasm"),
    body: Annotated[
        str | None,
        typer.Option(
            "--body",
            help="Stream a body: SIZExCOUNT@GAP, e.g. 64x20@1 (20 chunks of 64 B, 1 ms apart), and print every "
            "write the filter lets through with the wait of its oldest byte.",
        ),
    ] = None,
    tick_ms: Annotated[
        float, typer.Option("--tick-ms", help="The host's tick (Envoy here: 4-4.5 ms when asked for 1).", min=0.1)
    ] = 4.0,
) -> None:
    """Run one request through the filter without Envoy and print the class it gives and the filter's log; with
    --body, how the filter holds and releases a streamed body under the given configuration."""
    from dapb_mesh.mesh.wasm_host import HostError, classify, simulate_body

    if not wasm.exists():
        raise typer.BadParameter(f"{wasm} not found: build it with `make -C wasm_filter`", param_hint="--wasm")
    config_bytes = Path(plugin_config[1:]).read_bytes() if plugin_config.startswith("@") else plugin_config.encode()
    headers = {}
    for item in header or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not 'name: value'", param_hint="--header")
        headers[name.strip()] = value.strip()
    chunks = _parse_body(body) if body else None
    try:
        if chunks is None:
            cls, logs = classify(wasm, config_bytes, headers, route)
        else:
            cls, releases, logs = simulate_body(wasm, config_bytes, headers, route, chunks, tick_ms)
    except HostError as error:
        err_console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    for level, line in logs:
        err_console.print(f"[dim]wasm {level}: {line}[/dim]")
    console.print(f"x-dapb-class: {cls or '(none: auto)'}")
    if chunks is not None:
        table = Table(title=f"{len(chunks)} chunks -> {len(releases)} writes")
        for column in ("at ms", "bytes", "oldest waited ms"):
            table.add_column(column, justify="right")
        for r in releases:
            table.add_row(f"{r.at_ms:.1f}", str(r.size), f"{r.oldest_wait_ms:.1f}")
        console.print(table)


def _parse_body(spec: str) -> list[tuple[float, bytes]]:
    """SIZExCOUNT@GAP (bytes, chunks, ms) -> [(arrival ms, chunk)]; BadParameter names the bad part."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+)@(\d+(?:\.\d+)?)", spec.strip())
    if not m:
        raise typer.BadParameter(f"{spec!r} is not SIZExCOUNT@GAP, e.g. 64x20@1", param_hint="--body")
    size, count, gap = int(m[1]), int(m[2]), float(m[3])
    if not (1 <= size <= 1 << 20 and 1 <= count <= 100_000):
        raise typer.BadParameter(f"{spec!r}: size 1..1048576 bytes, count 1..100000", param_hint="--body")
    return [(i * gap, bytes([i % 251]) * size) for i in range(count)]
