"""Run one tcpwork exchange across a PodPair and collect both sides' measurements."""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass

from dapb_mesh.testbed.netns import PodPair

MODULE = "dapb_mesh.testbed.tcpwork"


@dataclass
class HopResult:
    server: dict
    client: dict


def run_hop(
    pair: PodPair, mode: str, *, timeout_s: float = 60.0, server_args: tuple[str, ...] = (), during=None, **client_opts
) -> HopResult:
    """Start the server in pair.server, the client in pair.client; ``during(client_proc)`` runs mid-stream."""
    port = random.randint(20000, 40000)
    read_fd, write_fd = os.pipe()
    server = pair.server.python(
        MODULE,
        "server",
        "--port",
        str(port),
        "--mode",
        mode,
        "--ready-fd",
        str(write_fd),
        "--size",
        str(client_opts.get("size", 64)),
        "--timeout",
        str(timeout_s),
        *server_args,
        stdout=subprocess.PIPE,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        if ready.readline().strip() != "ready":
            server.kill()
            raise RuntimeError(f"server did not start: exit {server.wait()}")
    argv = ["client", "--host", pair.server.address, "--port", str(port), "--mode", mode, "--timeout", str(timeout_s)]
    for key, value in client_opts.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    client = pair.client.python(MODULE, *argv, stdout=subprocess.PIPE)
    if during is not None:
        during(client)
    client_out, _ = client.communicate(timeout=timeout_s)
    server_out, _ = server.communicate(timeout=timeout_s)
    if client.returncode or server.returncode:
        raise RuntimeError(f"workload failed: client exit {client.returncode}, server exit {server.returncode}")
    return HopResult(server=json.loads(server_out), client=json.loads(client_out))
