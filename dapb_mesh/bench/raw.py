"""Benchmarks on the raw-TCP hop model (`--arch raw`): two pods, no sidecars, the kernel datapath alone.

All modes run on the same pods in one run, interleaved (the order rotates every repeat) so that machine noise
favours none. Segment counts come from the kernel (TCP_INFO and the tc counters), delays from the receiver.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from dapb_mesh.bench.metrics import RawRun
from dapb_mesh.bench.modes import load_model, plan
from dapb_mesh.bench.runner import impair, run_modes
from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.policy import Conditions, Sensitivity
from dapb_mesh.testbed.hop import HopResult, run_hop
from dapb_mesh.testbed.impair import NO_IMPAIRMENT, Impairment
from dapb_mesh.testbed.netns import PodPair


@dataclass(frozen=True)
class RawScenario:
    name: str
    mode: str  # tcpwork mode
    sensitivity: Sensitivity
    description: str


RAW_SCENARIOS = {
    s.name: s
    for s in (
        RawScenario("stream-small", "stream", Sensitivity.THROUGHPUT, "small messages at a fixed rate, one stream"),
        RawScenario("stream-auto", "stream", Sensitivity.AUTO, "stream-small in the auto class: the policy decides"),
        RawScenario("burst", "burst", Sensitivity.THROUGHPUT, "back-to-back small writes"),
        RawScenario("write-write-read", "wwr", Sensitivity.AUTO, "a request in two writes, then the answer"),
        RawScenario("pingpong", "pingpong", Sensitivity.LATENCY, "one small request, one small answer"),
    )
}


def _to_raw(scn: RawScenario, r: HopResult, count: int, size: int) -> RawRun:
    if scn.mode in ("stream", "burst"):
        delay = r.server["delay_ms"]
        received = r.server["bytes"]
        sent = r.client["bytes_sent"]
    else:
        delay = r.client["exchange_ms" if scn.mode == "wwr" else "rtt_ms"]
        sent = received = count * size
    return RawRun.from_delays(
        delay,
        messages=count,
        bytes_sent=sent,
        bytes_received=received,
        elapsed_s=r.client["elapsed_s"],
        data_segments=r.client["data_segs_out"],
        mss=r.client.get("mss") or 1448,
    )


def run_raw(
    scenario: str,
    modes: list[str],
    settings: Settings,
    *,
    rate: float = 10_000,
    msg_size: int = 64,
    duration_s: float = 2.0,
    repeats: int = 1,
    impairment: Impairment = NO_IMPAIRMENT,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    scn = RAW_SCENARIOS[scenario]
    count = {"stream": int(rate * duration_s), "burst": 10_000, "wwr": 100, "pingpong": 2_000}[scn.mode]
    extra: dict = {"rate": rate} if scn.mode == "stream" else {"gap_ms": 2} if scn.mode == "wwr" else {}
    conditions = Conditions(rtt_ms=0.05, loss=0.0, jitter_ms=0.01)  # veth between namespaces, measured order
    predictor = load_model(settings) if "dapb-ml" in modes else None
    load = rate * msg_size if scn.mode == "stream" else 0.0
    plans = {
        m: plan(m, scn.sensitivity, conditions, settings, predictor=predictor, load_bytes_per_s=load) for m in modes
    }
    with PodPair(settings.kernel) as pair, libbpf.run_time_stats():
        dp = Datapath.load(f"bench-{uuid.uuid4().hex[:8]}", settings.kernel)
        try:
            # the pods stand in for two sidecars (any owner may hold), the server's delayed ACK bounded
            dp.set_guard(L.ANY_UID, [f"{pair.server.address}/32"])
            dp.attach_tc(pair.client.ifname, netns=pair.client.netns)
            impair(dp, impairment, (pair.client.netns, pair.client.ifname), (pair.server.netns, pair.server.ifname))
            result_modes = run_modes(
                dp,
                modes,
                repeats,
                plans,
                [p.cgroup for p in pair.pods],
                lambda: _to_raw(scn, run_hop(pair, scn.mode, count=count, size=msg_size, **extra), count, msg_size),
                progress,
                scenario,
            )
        finally:
            dp.destroy()
    return {
        "scenario": scenario,
        "arch": "raw",
        "workload": {"mode": scn.mode, "messages": count, "msg_size": msg_size, **extra},
        "impairment": impairment.describe(),
        "sensitivity": scn.sensitivity.value,
        "predictor": None if predictor is None else str(predictor.path),
        "modes": result_modes,
    }
