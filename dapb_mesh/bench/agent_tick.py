"""The control loop's cost: one agent tick (read telemetry, decide, write maps) with N live sockets."""

from __future__ import annotations

import ctypes
import statistics
import time
import uuid
from collections.abc import Callable

from dapb_mesh.agent import Agent
from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.datapath import Datapath


def run_agent_tick(
    settings: Settings, sockets: int = 10_000, ticks: int = 30, progress: Callable[[str], None] = lambda _m: None
) -> dict:
    """Fill the telemetry map with ``sockets`` entries that change every tick, as live sockets do, and time ticks.

    The entries are written from user space (this machine cannot hold 10,000 real flows and measure calmly);
    the agent reads them through the same batch syscalls it uses for real sockets.
    """
    dp = Datapath.load(f"bench-tick-{uuid.uuid4().hex[:8]}", settings.kernel)
    s = settings.model_copy(update={"agent": settings.agent.model_copy(update={"min_write_interval_s": 0.0})})
    agent = Agent(s)
    agent.datapath = dp
    try:
        fd = dp._maps["dapb_sock_stats"]
        classes = (L.CLASS_DEFAULT, L.CLASS_THROUGHPUT, L.CLASS_LATENCY)
        cpu_ms: list[float] = []
        for t in range(ticks):
            progress(f"agent tick {t + 1}/{ticks} with {sockets} sockets")
            for i in range(sockets):
                st = L.SockStats(
                    cookie=i + 1,
                    class_id=classes[i % 3],
                    srtt_us=100 + (t * 37 + i) % 900,
                    data_segs_out=t * 10 + i,
                    bytes_acked=t * 6400,
                    total_retrans=t // 10,
                    state=1,
                    last_update_ns=t + 1,
                )
                libbpf.map_update(fd, ctypes.c_uint64(i + 1), st)
            report = agent.tick()
            cpu_ms.append(report.cpu_s * 1000)
        written = agent.writes
    finally:
        dp.destroy()
    tick_hz = settings.agent.tick_hz
    return {
        "scenario": "agent-tick",
        "sockets": sockets,
        "ticks": ticks,
        "tick_cpu_ms": {"p50": statistics.median(cpu_ms), "max": max(cpu_ms), "mean": statistics.mean(cpu_ms)},
        "core_share_at_tick_hz": statistics.mean(cpu_ms) / 1000 * tick_hz,
        "tick_hz": tick_hz,
        "policy_writes": written,
        "measured_at": time.strftime("%Y-%m-%d"),
    }
