"""`dapb train collect`: measure every candidate decision in a grid of contexts on the raw hop, into the store.

A measurement in the lab (two pods of the testbed), so it lives with the bench; the predictor only reads its rows.

A context is an offered load (message rate x size) and a loss rate. In each, the hop runs once without DAPB (its
p99 is the reference for added delay) and once per candidate: no hold, or Nagle with a delayed-ACK bound
requested at each of CANDIDATE_TIMEOUTS_MS. Loss is injected on the receiver's ingress by the tc program.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.predictor.features import CANDIDATE_TIMEOUTS_MS
from dapb_mesh.store import HistoryStore
from dapb_mesh.testbed.hop import run_hop
from dapb_mesh.testbed.netns import PodPair


@dataclass(frozen=True)
class Context:
    rate: float
    size: int
    loss: float

    def key(self) -> str:
        return json.dumps({"rate": self.rate, "size": self.size, "loss": self.loss}, sort_keys=True)


def grid(rates: Iterable[float], sizes: Iterable[int], losses: Iterable[float]) -> list[Context]:
    return [Context(r, s, lo) for r in rates for s in sizes for lo in losses]


FULL_GRID = grid((500, 1000, 2000, 3000, 5000, 8000, 12000, 20000), (64, 256), (0.0, 0.01))
HELD_OUT = grid((1500, 7000, 15000), (64,), (0.0,))
"""Contexts never used for training: the evaluation in `dapb bench --modes ...,dapb-ml` runs on these."""
QUICK_GRID = grid((1000, 10000), (64,), (0.0,))


def collect(
    contexts: list[Context],
    store: HistoryStore,
    settings: Settings,
    *,
    duration_s: float = 1.0,
    timeouts_ms: Iterable[float] = CANDIDATE_TIMEOUTS_MS,
    progress: Callable[[str], None] = lambda _m: None,
) -> int:
    rows = 0
    candidates = [(0, 0.0)] + [(1, t) for t in timeouts_ms]
    rto = L.F_ACK_RTO_MIN if settings.kernel.ack_bound == "rto_min" else 0
    with PodPair(settings.kernel) as pair:
        dp = Datapath.load(f"collect-{uuid.uuid4().hex[:8]}", settings.kernel)
        try:
            dp.attach_tc(pair.server.ifname, netns=pair.server.netns)  # loss on the receiver's ingress
            dp.set_guard(L.ANY_UID, [f"{pair.server.address}/32"])  # the pods stand in for two sidecars
            for n, ctx in enumerate(contexts, 1):
                count = max(200, int(ctx.rate * duration_s))
                drop = round(ctx.loss * 1_000_000)
                progress(f"context {n}/{len(contexts)}: {ctx.rate:g} msg/s x {ctx.size} B, loss {ctx.loss:g}")
                for cg in (p.cgroup for p in pair.pods):
                    dp.detach_cgroup(cg)
                dp.write_policy({}, drop_per_million=drop)
                base = run_hop(pair, "stream", rate=ctx.rate, count=count, size=ctx.size)
                # The path's RTT: min_rtt, since the smoothed RTT includes the receiver's delayed ACKs.
                rtt_ms = base.client.get("min_rtt_us", 0) / 1000
                for cg in (p.cgroup for p in pair.pods):
                    dp.attach_cgroup(cg)
                for hold, timeout in candidates:
                    flags = (L.F_NAGLE | L.F_ACK_BOUND | rto) if hold else 0
                    policy = L.ClassPolicy(flags=flags, ack_bound_us=round(timeout * 1000))
                    dp.write_policy(
                        {L.CLASS_THROUGHPUT: policy}, default_class=L.CLASS_THROUGHPUT, drop_per_million=drop
                    )
                    r = run_hop(pair, "stream", rate=ctx.rate, count=count, size=ctx.size)
                    store.record_sample(
                        {
                            "context": ctx.key(),
                            "rtt_ms": rtt_ms,
                            "loss": ctx.loss,
                            "jitter_ms": 0.0,
                            "bytes_per_s": ctx.rate * ctx.size,
                            "hold": hold,
                            "timeout_ms": timeout,
                            "segments_per_message": r.client["data_segs_out"] / count,
                            "p50_ms": r.server["delay_ms"]["p50"],
                            "p99_ms": r.server["delay_ms"]["p99"],
                            "max_ms": r.server["delay_ms"]["max"],
                            "lost_bytes": r.client["bytes_sent"] - r.server["bytes"],
                            "baseline_p99_ms": base.server["delay_ms"]["p99"],
                        }
                    )
                    rows += 1
        finally:
            dp.destroy()
    return rows
