"""Timed aggregation in the Wasm filter, driven chunk by chunk and tick by tick in the Python proxy-wasm host."""

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dapb_mesh.mesh.wasm_host import ACTION_CONTINUE, ACTION_PAUSE, ProxyWasmHost

WASM = Path(__file__).resolve().parents[1] / "wasm_filter" / "dapb_filter.wasm"


def host(hold_bytes=1000, hold_ms=10, **extra):
    cfg = {
        "u_threshold": 0.5,
        "throughput_below": 0.3,
        "default_urgency": 0.4,
        "hold_bytes": hold_bytes,
        "hold_ms": hold_ms,
        "route:telemetry": 0.0,
        **extra,
    }
    h = ProxyWasmHost(WASM, json.dumps(cfg).encode())
    assert h.configure()
    return h


def open_stream(h, route="telemetry", headers=None):
    ctx, stream = h.new_stream({"xds.route_name": route.encode()})
    h.request_headers(ctx, headers or {}, end_of_stream=False)
    return ctx, stream


def test_holds_until_b_bytes_then_releases_one_write():
    h = host(hold_bytes=256)
    ctx, s = open_stream(h)
    assert [h.request_body(ctx, b"m" * 64) for _ in range(3)] == [ACTION_PAUSE] * 3
    assert s.forwarded == []
    assert h.request_body(ctx, b"m" * 64) == ACTION_CONTINUE  # 256 bytes buffered
    assert [len(w) for _, w in s.forwarded] == [256]


def test_oldest_byte_never_waits_past_t():
    h = host(hold_bytes=10_000, hold_ms=10)
    ctx, s = open_stream(h)
    h.request_body(ctx, b"a" * 64)  # arrives at t=0
    for _ in range(9):
        h.tick(1)
    assert s.forwarded == []
    h.tick(1)  # t = 10 ms
    assert [(t // 1_000_000, len(w)) for t, w in s.forwarded] == [(10, 64)]
    assert h.tick_period_ms == 1


def test_end_of_stream_releases_everything_in_order():
    h = host(hold_bytes=10_000)
    ctx, s = open_stream(h)
    for i in range(5):
        h.request_body(ctx, bytes([i]) * 10)
    assert h.request_body(ctx, b"", end_of_stream=True) == ACTION_CONTINUE
    assert b"".join(w for _, w in s.forwarded) == b"".join(bytes([i]) * 10 for i in range(5))


def test_latency_and_auto_streams_pass_untouched():
    h = host()
    for route, headers in (("telemetry", {"priority": "u=0"}), ("other", {})):
        ctx, s = open_stream(h, route, headers)
        assert h.request_body(ctx, b"x" * 10) == ACTION_CONTINUE
        assert [len(w) for _, w in s.forwarded] == [10]


def test_a_hold_needs_a_time_bound_and_zero_turns_it_off():
    assert not ProxyWasmHost(WASM, b'{"hold_bytes": 100, "hold_ms": 0}').configure()
    h = host(hold_bytes=0, hold_ms=0)
    ctx, _s = open_stream(h)
    assert h.request_body(ctx, b"x") == ACTION_CONTINUE and h.tick_period_ms == 0


def test_reset_leaves_no_state_and_new_streams_are_held_again():
    h = host(hold_bytes=1000)
    for _ in range(300):  # more streams than the filter's hold table: slots are freed on done
        ctx, _ = open_stream(h)
        h.request_body(ctx, b"x" * 10)
        h.reset(ctx)
    ctx, _s = open_stream(h)
    assert h.request_body(ctx, b"y" * 10) == ACTION_PAUSE


@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(0, 4)), min_size=1, max_size=60),
    st.integers(64, 2000),
    st.integers(1, 30),
)
@settings(max_examples=150, deadline=None)
def test_no_byte_lost_reordered_or_held_past_t(chunks, hold_bytes, hold_ms):
    """Any sequence of chunk sizes and gaps: every byte forwarded once, in order, none waiting past T (+ a tick)."""
    h = host(hold_bytes=hold_bytes, hold_ms=hold_ms)
    ctx, s = open_stream(h)
    sent, arrivals = bytearray(), []
    for i, (size, gap_ms) in enumerate(chunks):
        for _ in range(gap_ms):
            h.tick(1)
        data = bytes([i % 251]) * size
        arrivals.append((h.now_ns, len(sent), len(sent) + size))
        sent += data
        h.request_body(ctx, data)
    for _ in range(hold_ms + 1):
        h.tick(1)
    out, offset = bytearray(), 0
    for t, write in s.forwarded:
        for arrived, start, _end in arrivals:
            if offset <= start < offset + len(write):
                assert t - arrived <= hold_ms * 1_000_000, "a byte waited past T"
        out += write
        offset += len(write)
    assert bytes(out) == bytes(sent)
    assert all(len(w) <= max(hold_bytes, 300) + 300 for _, w in s.forwarded)  # memory bounded by about B
