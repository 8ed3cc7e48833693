"""The fallback without eBPF (the paper's risk 7): the same delayed-ACK bound, set per destination route.

A route's ``rto_min`` metric (iproute2 locks it) caps the receiver's delayed ACK exactly as TCP_BPF_RTO_MIN does,
for every socket whose traffic uses that route. What it cannot do: classify sockets (it is per destination prefix),
turn Nagle back on in a proxy that sets TCP_NODELAY itself (Envoy overrides its own socket options with
TCP_NODELAY=1; measured), or report telemetry. Applications that leave Nagle on get bounded stalls instead of
40 ms ones. See docs/kernel.md.
"""

from __future__ import annotations

import ipaddress
import math
import subprocess
from dataclasses import dataclass

from dapb_mesh.config import KernelConfig


@dataclass(frozen=True)
class RouteBound:
    """One route whose delayed ACK (and retransmission floor) is bounded at ``rto_min_ms``."""

    prefix: str
    device: str
    rto_min_ms: int
    via: str | None = None

    def command(self, restore: bool = False) -> list[str]:
        cmd = ["ip", "route", "replace", self.prefix, "dev", self.device]
        if self.via:
            cmd += ["via", self.via]
        return cmd if restore else [*cmd, "rto_min", f"{self.rto_min_ms}ms"]


def route_bound(
    prefix: str, device: str, timeout_ms: float, kernel: KernelConfig, via: str | None = None
) -> RouteBound:
    """The route setting for a decided T: whole ticks, never under what the kernel enforces (8 ms here)."""
    ipaddress.ip_network(prefix)  # raises ValueError naming the bad prefix
    ticks = max(kernel.delack_floor_ms, math.ceil(timeout_ms / kernel.tick_ms - 1e-9) * kernel.tick_ms)
    return RouteBound(prefix=prefix, device=device, rto_min_ms=int(ticks), via=via)


def _run(cmd: list[str], netns: str | None) -> None:
    argv = ["nsenter", f"--net=/run/netns/{netns}", *cmd] if netns else cmd
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def apply(bound: RouteBound, netns: str | None = None) -> None:
    _run(bound.command(), netns)


def remove(bound: RouteBound, netns: str | None = None) -> None:
    """Put the route back without the metric (the kernel's default 200 ms floor)."""
    _run(bound.command(restore=True), netns)
