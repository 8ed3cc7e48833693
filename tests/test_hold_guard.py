"""The hold guard in the kernel: a socket holds only where DAPB bounds the wait of every byte.

Raw TCP over veth between two namespaces this test creates (tests/conftest.py). The throughput class asks for
Nagle on every socket; the guard must refuse it for a peer whose delayed ACK DAPB does not bound, for a socket
another owner made, and for request/response traffic; a one-way stream to a bounded peer still coalesces.
"""

import statistics

from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.policy import Conditions, Sensitivity, decide
from dapb_mesh.testbed.hop import run_hop

SETTINGS = Settings()
VETH = Conditions(rtt_ms=0.05, loss=0.0, jitter_ms=0.01)


def hold_everything(dp) -> float:
    """Every socket of the pods in the throughput class (Nagle + bounded delayed ACK), guarded; returns T_eff."""
    decision = decide(VETH, Sensitivity.THROUGHPUT, SETTINGS.policy, SETTINGS.kernel)
    policy = L.class_policy(decision, SETTINGS.kernel)
    dp.write_policy({L.CLASS_THROUGHPUT: policy}, default_class=L.CLASS_THROUGHPUT, unguarded=False)
    return decision.enforced_timeout_ms


def client_socket(dp, data_segs_out: int):
    """The client's sending socket in the kernel's telemetry (the one that sent at least this many segments)."""
    senders = [s for s in dp.sock_stats() if s.data_segs_out >= data_segs_out and s.remote_port != 0]
    assert senders, "the client's socket is not in the telemetry"
    return max(senders, key=lambda s: s.data_segs_out)


def stream(pair):
    r = run_hop(pair, "stream", rate=10_000, count=5_000, size=64)
    assert r.server["bytes"] == 5_000 * 64 and r.server["in_order"]
    return r


def test_a_stream_to_a_bounded_peer_still_coalesces(pair, datapath):
    hold_everything(datapath)
    r = stream(pair)
    assert r.client["data_segs_out"] <= 0.15 * 5_000
    s = client_socket(datapath, r.client["data_segs_out"])
    assert s.applied_flags & L.F_NAGLE and not s.applied_flags & (L.S_UNBOUNDED_PEER | L.S_INTERACTIVE)


def test_a_peer_whose_delayed_ack_is_not_bounded_is_never_held(pair, datapath):
    """The same stream, but the server is not among the bounded peers (an app, an unmanaged pod): no Nagle."""
    datapath.set_guard(L.ANY_UID, ["192.0.2.0/24"])
    hold_everything(datapath)
    r = stream(pair)
    assert r.client["data_segs_out"] >= 0.9 * 5_000  # one segment per message, as without DAPB
    s = client_socket(datapath, r.client["data_segs_out"])
    assert s.applied_flags & L.S_UNBOUNDED_PEER and not s.applied_flags & L.F_NAGLE


def test_a_socket_of_another_owner_is_never_held(pair, datapath):
    """Only the sidecar's own sockets hold (hold_uid); the pods' processes here run as root."""
    datapath.set_guard(4242, [f"{pair.server.address}/32"])
    hold_everything(datapath)
    r = stream(pair)
    assert r.client["data_segs_out"] >= 0.9 * 5_000
    assert client_socket(datapath, r.client["data_segs_out"]).applied_flags & L.S_UNBOUNDED_PEER


def test_request_response_on_a_holding_class_is_never_held(pair, datapath):
    """Write-write-read exchanges in the throughput class to a bounded peer: the replies between our ACKs keep
    the socket interactive, so no exchange waits for the (bounded) delayed ACK: not one reaches the kernel's
    shortest bound, and the median matches baseline (paired, interleaved)."""
    base, dapb = [], []
    for _ in range(2):
        datapath.write_policy({}, default_class=L.CLASS_DEFAULT, unguarded=False)
        base.append(run_hop(pair, "wwr", count=40, size=64, gap_ms=2).client["exchange_ms"])
        hold_everything(datapath)
        dapb.append(run_hop(pair, "wwr", count=40, size=64, gap_ms=2).client["exchange_ms"])
    print(
        f"wwr p50 baseline {[b['p50'] for b in base]}, dapb {[d['p50'] for d in dapb]}; max {[d['max'] for d in dapb]}"
    )
    assert max(d["max"] for d in dapb) < SETTINGS.kernel.delack_floor_ms
    assert statistics.median(d["p50"] for d in dapb) <= statistics.median(b["p50"] for b in base) + 0.5
    eligible = [s for s in datapath.sock_stats() if not s.applied_flags & L.S_UNBOUNDED_PEER]
    s = max(eligible, key=lambda s: s.last_update_ns)  # the client's latest socket: the only one that may hold
    assert s.applied_flags & L.S_INTERACTIVE and s.turn_score >= L.TURN_HOLD_BELOW


def test_the_guard_releases_a_hold_when_replies_start(pair, datapath):
    """A socket that streamed (held) and then turns to request/response is released by the kernel itself."""
    hold_everything(datapath)
    r = run_hop(pair, "wwr", count=60, size=64, gap_ms=1, prelude=2_000, server_args=("--prelude", "2000"))
    assert r.server["prelude_bytes"] == 2_000 * 64
    s = client_socket(datapath, 2_000 * 64 // 1448)
    assert s.guard_releases >= 1 and s.applied_flags & L.S_INTERACTIVE and not s.applied_flags & L.F_NAGLE
    assert r.client["exchange_ms"]["p50"] < SETTINGS.kernel.delack_floor_ms
