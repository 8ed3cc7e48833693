"""`dapb filter test`: the Wasm filter run in the Python proxy-wasm host, without Envoy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh import artifacts
from dapb_mesh.cli.common import console, err_console, fail, finite
from dapb_mesh.config import PolicyConfig
from dapb_mesh.mesh.virtualservice import plugin_config

WASM_MAGIC = b"\0asm"
SHIPPED_WASM = artifacts.path(artifacts.WASM_FILTER)
"""--wasm's default: the filter this dapb ships (dapb_mesh/artifacts.py)."""
MAX_BODY_MS = 60_000.0
"""The longest streamed body --body simulates (the filter's longest hold is 60 s; a longer one shows nothing more
and would take the host millions of ticks)."""

app = typer.Typer(help="The DSCP-tagging Wasm filter, run in the Python proxy-wasm host.", no_args_is_help=True)


@app.command("test")
def filter_test(
    route: Annotated[str | None, typer.Option("--route", help="The route name Envoy would report.")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H", help="'name: value' (repeatable).")] = None,
    plugin_config: Annotated[
        str, typer.Option("--config", help="Plugin configuration JSON, or @FILE.")
    ] = plugin_config([], PolicyConfig()),
    wasm: Annotated[
        Path, typer.Option("--wasm", help="The filter module (default: the one this dapb ships).")
    ] = SHIPPED_WASM,
    body: Annotated[
        str | None,
        typer.Option(
            "--body",
            help="Stream a body: SIZExCOUNT@GAP, e.g. 64x20@1 (20 chunks of 64 B, 1 ms apart), and print every "
            "write the filter lets through with the wait of its oldest byte.",
        ),
    ] = None,
    tick_ms: Annotated[
        float,
        typer.Option(
            "--tick-ms",
            help="The host's tick (Envoy here: 4-4.5 ms when asked for 1).",
            min=0.1,
            callback=finite("--tick-ms", 0.1),
        ),
    ] = 4.0,
) -> None:
    """Run one request through the filter without Envoy and print the class it gives and the filter's log; with
    --body, how the filter holds and releases a streamed body under the given configuration. Exits 2 naming every
    entry of --config the filter refused (it runs with the rest, as in Envoy)."""
    import wasmtime

    from dapb_mesh.mesh.wasm_host import HostError, classify, read_refusals, simulate_body

    _check_module(wasm)
    if route is not None and not _is_text(route):
        raise typer.BadParameter(f"{route!r} is not UTF-8 text", param_hint="--route")
    config_bytes = _read_config(plugin_config)
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
    except HostError as error:  # the filter refused the configuration (its reason), or the module broke the ABI
        shown = plugin_config if len(plugin_config) <= 200 else f"{plugin_config[:200]}..."
        fail(f"filter test with --wasm {wasm} --config {shown}", error, code=1)
    except wasmtime.Trap as error:
        fail(f"the filter in {wasm} trapped", str(error).strip().splitlines()[0], code=1)
    except wasmtime.WasmtimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise typer.BadParameter(f"{wasm} is not a module this host can run: {first}", param_hint="--wasm") from None
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
    refused, _ = read_refusals(logs)
    if refused:  # the filter ran with the rest, as Envoy would; the configuration given is still wrong
        reasons = "\n".join(f"{r.key!r} ({r.code}): {r.reason}" for r in refused)
        fail(f"--config: the filter refused {len(refused)} entr{'y' if len(refused) == 1 else 'ies'}", reasons)


def _check_module(wasm: Path) -> None:
    """--wasm names a readable WebAssembly binary; BadParameter says what it is instead."""
    if not wasm.exists():
        hint = artifacts.missing(artifacts.WASM_FILTER) if wasm == SHIPPED_WASM else None
        raise typer.BadParameter(hint or f"{wasm} not found", param_hint="--wasm")
    try:
        with wasm.open("rb") as module:
            magic = module.read(4)
    except OSError as error:
        raise typer.BadParameter(f"cannot read {wasm}: {error.strerror or error}", param_hint="--wasm") from None
    if magic != WASM_MAGIC:
        raise typer.BadParameter(f"{wasm} is not a WebAssembly module (no \\0asm header)", param_hint="--wasm")


def _is_text(value: str) -> bool:
    """Whether a command-line string was valid UTF-8 (undecodable bytes arrive as lone surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read_config(option: str) -> bytes:
    """--config: the JSON itself, or @FILE; BadParameter names an unreadable file."""
    if not option.startswith("@"):
        return option.encode("utf-8", "surrogateescape")  # the bytes as given: the filter judges them
    path = Path(option[1:])
    try:
        return path.read_bytes()
    except OSError as error:
        raise typer.BadParameter(f"cannot read {path}: {error.strerror or error}", param_hint="--config") from None


def _parse_body(spec: str) -> list[tuple[float, bytes]]:
    """SIZExCOUNT@GAP (bytes, chunks, ms) -> [(arrival ms, chunk)]; BadParameter names the bad part."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+)@(\d+(?:\.\d+)?)", spec.strip())
    if not m:
        raise typer.BadParameter(f"{spec!r} is not SIZExCOUNT@GAP, e.g. 64x20@1", param_hint="--body")
    size, count, gap = int(m[1]), int(m[2]), float(m[3])
    if not (1 <= size <= 1 << 20 and 1 <= count <= 100_000):
        raise typer.BadParameter(f"{spec!r}: size 1..1048576 bytes, count 1..100000", param_hint="--body")
    if (count - 1) * gap > MAX_BODY_MS:
        raise typer.BadParameter(f"{spec!r}: the body lasts over {MAX_BODY_MS:g} ms", param_hint="--body")
    return [(i * gap, bytes([i % 251]) * size) for i in range(count)]
