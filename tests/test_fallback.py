"""The eBPF-free fallback on a real hop: a route rto_min bounds the delayed-ACK stall of an app using Nagle."""

import pytest

from dapb_mesh.config import KernelConfig
from dapb_mesh.kernel import fallback
from dapb_mesh.testbed.hop import run_hop


def test_route_bound_rounds_to_ticks_and_checks_the_prefix():
    k = KernelConfig()
    assert fallback.route_bound("10.1.0.0/24", "eth0", 2, k).rto_min_ms == 8
    assert fallback.route_bound("10.1.0.0/24", "eth0", 17, k).rto_min_ms == 20
    with pytest.raises(ValueError, match=r"10\.1\.0\.0/33"):
        fallback.route_bound("10.1.0.0/33", "eth0", 8, k)


def test_route_rto_min_bounds_the_nagle_stall_without_any_bpf(pair):
    """The bound is judged against the same run's exchanges without Nagle (the machine's own scheduling delay,
    which a loaded node adds to every exchange). The streams by the best of three, and loosely: the route's low
    rto_min makes the receiver quick-ACK after any pause of the sender longer than it, which a CPU-starved
    sender takes often (measured with one core busy: 0.52 segments per message in three runs of three; 0.09 on a
    quiet node); docs/kernel.md, "Fallback without eBPF"."""
    bound = fallback.route_bound(f"{pair.subnet}.0/24", pair.server.ifname, 8, KernelConfig())
    plain = run_hop(pair, "wwr", count=20, size=64, gap_ms=2, nodelay="never")
    prompt = run_hop(pair, "wwr", count=20, size=64, gap_ms=2)  # TCP_NODELAY: no hold at all
    fallback.apply(bound, pair.server.netns)
    try:
        bounded = run_hop(pair, "wwr", count=20, size=64, gap_ms=2, nodelay="never")
        streams = []
        for _ in range(3):
            streams.append(run_hop(pair, "stream", rate=20_000, count=20_000, size=64, nodelay="never"))
            if streams[-1].client["data_segs_out"] <= 0.6 * 20_000:
                break
    finally:
        fallback.remove(bound, pair.server.netns)
    assert plain.client["exchange_ms"]["p50"] > 30  # Nagle + delayed ACK, unbounded
    tick = KernelConfig().tick_ms
    assert bounded.client["exchange_ms"]["max"] <= prompt.client["exchange_ms"]["max"] + bound.rto_min_ms + tick
    assert bounded.client["exchange_ms"]["p50"] <= bound.rto_min_ms + tick
    assert all(s.server["bytes"] == 1_280_000 for s in streams)
    assert min(s.client["data_segs_out"] for s in streams) <= 0.6 * 20_000
