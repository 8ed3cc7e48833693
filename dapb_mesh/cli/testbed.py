"""`dapb testbed up|down|status`: the embedded mesh on this machine."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dapb_mesh.cli.common import ConfigOption, console, err_console, interrupt_on_sigterm, load

app = typer.Typer(help="The embedded mesh: pods with real Envoy sidecars, on this machine.", no_args_is_help=True)


@app.command("up")
def testbed_up(
    arch: Annotated[
        str, typer.Option("--arch", help="inter-pod, intra-pod, chain:N or fan-out:N (N pods, 2 to 8).")
    ] = "inter-pod",
    plaintext: Annotated[bool, typer.Option("--plaintext", help="No mutual TLS between sidecars.")] = False,
    config: ConfigOption = None,
) -> None:
    """Bring the mesh up and keep it until Ctrl-C or SIGTERM (or `dapb testbed down`), then remove everything.

    Prints the pods and the commands to send traffic through the sidecars (curl, wrk, h2load).
    """
    import time

    from dapb_mesh import owners
    from dapb_mesh.testbed.mesh import Mesh, parse_arch

    settings = load(config)
    try:
        parse_arch(arch)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--arch") from None

    interrupt_on_sigterm()
    mesh = Mesh(arch, plaintext=plaintext, kernel=settings.kernel)
    owner = f"testbed-{mesh.run_id}"  # what `testbed down` may stop
    owners.register(owner)
    try:
        mesh.up(progress=lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
        print(f"testbed {mesh.run_id} is up", flush=True)
        table = Table(title=f"testbed {mesh.run_id} ({arch}, {'plaintext' if plaintext else 'mTLS'})")
        for column in ("pod", "netns", "address", "service", "Envoy admin"):
            table.add_column(column)
        for pod, svc, sidecar in zip(mesh.pods, mesh.services, mesh.sidecars, strict=True):
            table.add_row(pod.name, pod.netns, pod.address, f"{svc.name}:{svc.port}", str(sidecar.admin))
        console.print(table)
        target = mesh.targets[0]
        server, host = target.addresses[0], target.name
        ns = mesh.client_pod.netns
        console.print(
            "Send traffic through the sidecars from the client pod:\n"
            f"  nsenter --net=/run/netns/{ns} curl -s -H 'Host: {host}' http://{server}:8080/\n"
            f"  nsenter --net=/run/netns/{ns} h2load -n 1000 -c 4 -H 'Host: {host}' http://{server}:8080/\n"
            f"  nsenter --net=/run/netns/{ns} wrk -d 5 -c 4 -H 'Host: {host}' http://{server}:8080/\n"
            "Ctrl-C (or `dapb testbed down`) removes it all."
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        err_console.print("removing the testbed")
    finally:
        mesh.down()
        owners.release(owner)


@app.command("down")
def testbed_down() -> None:
    """Stop every running `testbed up` (SIGTERM) and remove what crashed runs left: netns, cgroups, pins."""
    import os
    import signal
    import time

    from dapb_mesh import owners
    from dapb_mesh.kernel.datapath import cleanup_stale as stale_bpf
    from dapb_mesh.testbed.mesh import cleanup_stale_meshes
    from dapb_mesh.testbed.netns import cleanup_stale

    runners = list(owners.OWNERS.glob("testbed-*")) if owners.OWNERS.is_dir() else []
    for entry in runners:
        pid = int(entry.read_text().strip() or 0)
        if pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
                console.print(f"asked runner {pid} ({entry.name}) to stop")
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(e.exists() and owners._alive(int(e.read_text() or 0)) for e in runners):
        time.sleep(0.2)
    removed = cleanup_stale() + cleanup_stale_meshes() + stale_bpf()
    for name in owners.stale("testbed"):
        owners.release(name)
    for what in removed:
        console.print(f"removed {what}")
    console.print("nothing left" if not removed else f"removed {len(removed)} stale resource(s)")


@app.command("status")
def testbed_status() -> None:
    """What testbed runs and DAPB instances exist on this machine, and whether their owners are alive."""
    from pyroute2 import netns

    from dapb_mesh import owners
    from dapb_mesh.testbed.netns import PREFIX

    table = Table(title="dapb runs")
    table.add_column("owner entry")
    table.add_column("pid")
    table.add_column("alive")
    for entry in sorted(owners.OWNERS.glob("*")) if owners.OWNERS.is_dir() else []:
        pid = int(entry.read_text().strip() or 0)
        table.add_row(entry.name, str(pid), "yes" if pid and owners._alive(pid) else "[red]no (stale)[/red]")
    console.print(table)
    spaces = [n for n in netns.listnetns() if n.startswith(PREFIX)]
    console.print(f"network namespaces: {', '.join(spaces) or 'none'}")
