"""`dapb agent`: the node agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dapb_mesh.cli.common import ConfigOption, err_console, fail, load
from dapb_mesh.config import ConfigError


def agent(
    cgroup: Annotated[
        list[Path] | None, typer.Option("--cgroup", help="cgroup v2 directory to attach to (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and log; touch no kernel state.")] = False,
    listen: Annotated[str | None, typer.Option("--listen", help="host:port for /metrics, /healthz, /readyz.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="SQLite history file.")] = None,
    max_ticks: Annotated[int | None, typer.Option("--max-ticks", help="Stop after this many ticks.", min=1)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every decision change.")] = False,
    config: ConfigOption = None,
) -> None:
    """The node agent: attach to the given cgroups, read telemetry every tick, decide, write versioned policy.

    SIGTERM/SIGINT stop it gracefully (knobs off, programs detached); SIGHUP reloads the configuration; a restart
    after a crash adopts the pinned programs without a gap.
    """
    import logging

    from dapb_mesh.agent import Agent
    from dapb_mesh.config import parse_settings
    from dapb_mesh.exporter import serve
    from dapb_mesh.store import StoreError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    base = load(config).model_dump()
    overrides = {k: v for k, v in {"cgroups": cgroup, "listen": listen, "store": store}.items() if v}
    try:
        settings = parse_settings({**base, "agent": {**base["agent"], **overrides}}, "command line")
    except ConfigError as error:
        fail("invalid settings", error)
    if not settings.agent.cgroups and not dry_run:
        raise typer.BadParameter("give at least one cgroup v2 directory (or agent.cgroups)", param_hint="--cgroup")
    for path in settings.agent.cgroups:
        if not (path / "cgroup.procs").exists():
            raise typer.BadParameter(f"{path} is not a cgroup v2 directory", param_hint="--cgroup")
    the_agent = Agent(settings, dry_run=dry_run, config_path=config)
    the_agent.install_signal_handlers()
    try:
        server = serve(the_agent, settings.agent.listen)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot listen on {settings.agent.listen}: {error.strerror or error}", param_hint="--listen/agent.listen"
        ) from None
    err_console.print(f"dapb agent: metrics on http://{settings.agent.listen}/metrics")
    try:
        try:
            the_agent.start()
        except StoreError as error:  # the history is opened first, before anything touches the kernel
            raise typer.BadParameter(str(error), param_hint="--store/agent.store") from None
        the_agent.run(max_ticks=max_ticks)
    finally:
        the_agent.stop()
        server.shutdown()
