"""What every command group shares: the consoles, the --config option, loading settings, checks of numbers and of
output paths, JSON results, and SIGTERM as Ctrl-C."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from dapb_mesh.config import ConfigError, Settings, load_settings

# Wide tables stay readable when output goes to a file or CI log instead of a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file; DAPB_SECTION__FIELD environment variables override it.",
        envvar="DAPB_CONFIG",
        dir_okay=False,
    ),
]


def load(path: Path | None) -> Settings:
    """The settings from ``path`` and DAPB_* variables; exit 2 naming every bad field when they are invalid."""
    try:
        return load_settings(path)
    except ConfigError as error:
        fail("invalid configuration", error)


def fail(what: str, error: Exception | str, code: int = 2) -> NoReturn:
    """Print ``what`` and the error (which names the bad field or value) and exit with ``code``."""
    err_console.print(f"[red]{escape(what)}[/red]\n{escape(str(error))}", highlight=False)
    raise typer.Exit(code)


def finite(name: str, lower: float, upper: float = math.inf):
    """An option callback: the value is a finite number in [lower, upper] (None passes: not given)."""

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and lower <= value <= upper):
            bound = f"[{lower}, {upper}]" if math.isfinite(upper) else f">= {lower}"
            raise typer.BadParameter(f"{value!r} is not a finite number {bound}", param_hint=name)
        return value

    return check


def output_file(path: Path | None, option: str) -> None:
    """Check before any work is done that a result can be written to ``path``: its directory exists (it is made
    now) and the path is not a directory. BadParameter names the option, the path and why."""
    if path is None:
        return
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory, not a file", param_hint=option)
    output_dir(path.parent, option)


def output_dir(path: Path | None, option: str) -> None:
    """Make the directory ``path`` (and its parents) now; BadParameter names the option, the path and why."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} exists and is not a directory", param_hint=option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = error.filename if error.filename is not None else path
        raise typer.BadParameter(f"cannot create {where}: {error.strerror or error}", param_hint=option) from None


def write_json(path: Path | None, result: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    except OSError as error:
        fail(f"cannot write {path}", error.strerror or error, code=1)


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so every `with`/`finally` removes what it made: pods,
    Envoys, BPF instances, cgroups. Only in this process: pyroute2 forks helpers and stops them with SIGTERM,
    and they must simply die, not unwind the mesh."""
    import os
    import signal

    runner = os.getpid()

    def stop(signum, _frame):
        if os.getpid() != runner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
