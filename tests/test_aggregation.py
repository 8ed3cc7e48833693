"""Timed aggregation in the Wasm filter, driven chunk by chunk and tick by tick in the Python proxy-wasm host."""

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dapb_mesh.mesh.wasm_host import (
    ACTION_CONTINUE,
    ACTION_PAUSE_WATERMARK,
    STREAM_REQUEST,
    STREAM_RESPONSE,
    ProxyWasmHost,
)

HELD = ACTION_PAUSE_WATERMARK  # Envoy keeps the bytes, with flow control: never a 413

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
    assert [h.request_body(ctx, b"m" * 64) for _ in range(3)] == [HELD] * 3
    assert s.forwarded == []
    assert h.request_body(ctx, b"m" * 64) == ACTION_CONTINUE  # 256 bytes buffered
    assert [len(w) for _, w in s.forwarded] == [256]


def test_oldest_byte_goes_at_the_last_tick_before_t():
    h = host(hold_bytes=10_000, hold_ms=10)
    for _ in range(40):  # the filter learns that ticks come every 1 ms (it assumes 5 ms until it has seen them)
        h.tick(1)
    start = h.now_ns
    ctx, s = open_stream(h)
    h.request_body(ctx, b"a" * 64)  # arrives at t=0
    for _ in range(8):
        h.tick(1)
    assert s.forwarded == []
    h.tick(1)  # t = 9 ms: the next 1 ms tick would be at T
    assert [((t - start) // 1_000_000, len(w)) for t, w in s.forwarded] == [(9, 64)]
    assert h.tick_period_ms == 1


def test_late_ticks_still_release_before_t():
    """Envoy ticks every 3-4.5 ms when asked for 1 ms: the filter learns the interval and releases early enough."""
    h = host(hold_bytes=10_000, hold_ms=50)
    ctx, s = open_stream(h)
    arrivals = []  # (time, first byte offset) of each 10-byte chunk
    for step in range(200):  # ticks every 4.5 ms, a chunk every 45 ms
        if step % 10 == 0:
            arrivals.append(h.now_ns)
            h.request_body(ctx, b"c" * 10)
        h.tick(4.5)
    waits, offset = [], 0
    for t, write in s.forwarded:
        waits.append((t - arrivals[offset // 10]) / 1e6)
        offset += len(write)
    assert offset == 10 * len(arrivals)
    assert max(waits) <= 50 and min(waits) >= 50 - 2 * 4.5 - 1  # held close to T, never past it


def test_response_bodies_are_held_and_released_too():
    h = host(hold_bytes=200, hold_ms=10)
    ctx, s = open_stream(h)
    assert h.response_headers(ctx, {":status": "200"}) == ACTION_CONTINUE
    assert [h.response_body(ctx, b"r" * 64) for _ in range(3)] == [HELD] * 3
    assert h.response_body(ctx, b"r" * 64) == ACTION_CONTINUE
    assert [len(w) for _, w in s.returned] == [256] and s.forwarded == []
    h.response_body(ctx, b"t" * 8)
    assert h.response_body(ctx, b"", end_of_stream=True) == ACTION_CONTINUE
    assert [len(w) for _, w in s.returned] == [256, 8]


def test_trailers_release_what_is_held():
    h = host(hold_bytes=10_000)
    ctx, s = open_stream(h)
    h.request_body(ctx, b"g" * 30)
    assert h.trailers(ctx, STREAM_REQUEST) == ACTION_CONTINUE
    h.response_body(ctx, b"h" * 30)
    assert h.trailers(ctx, STREAM_RESPONSE) == ACTION_CONTINUE
    assert [w for _, w in s.forwarded] == [b"g" * 30] and [w for _, w in s.returned] == [b"h" * 30]


def test_an_urgent_message_goes_at_once_with_everything_before_it():
    h = host(hold_bytes=10_000, urgent_prefix="!ALARM")
    ctx, s = open_stream(h)
    assert h.request_body(ctx, b"routine-1") == HELD
    assert h.request_body(ctx, b"routine-!ALARM-not-at-start") == HELD
    assert h.request_body(ctx, b"!ALARM: disk full") == ACTION_CONTINUE
    assert [w for _, w in s.forwarded] == [b"routine-1routine-!ALARM-not-at-start!ALARM: disk full"]


def test_grpc_messages_are_checked_after_their_five_byte_header():
    h = host(hold_bytes=10_000, urgent_prefix="!")
    ctx, s = open_stream(h, headers={"content-type": "application/grpc+proto"})
    frame = b"\x00\x00\x00\x00\x04"
    assert h.request_body(ctx, frame + b"calm") == HELD
    assert h.request_body(ctx, b"!" + b"\x00\x00\x00\x04" + b"calm") == HELD  # '!' is a header byte here
    assert h.request_body(ctx, frame[:4] + b"\x05" + b"!help") == ACTION_CONTINUE
    assert len(s.forwarded) == 1


def test_a_hold_stays_under_half_the_proxy_buffer_limit():
    """Envoy adds each chunk to its buffer before asking the filter and answers 413 past the limit."""
    h = host(hold_bytes=60_000, buffer_limit_bytes=4096)
    ctx, s = open_stream(h)
    actions = [h.request_body(ctx, b"b" * 500) for _ in range(10)]
    assert actions[:4] == [HELD] * 4 and actions[4] == ACTION_CONTINUE  # 2500 B >= 4096 / 2
    assert all(len(w) <= 4096 // 2 + 500 for _, w in s.forwarded)


def test_unary_requests_pass_untouched():
    h = host()
    ctx, s = open_stream(h)
    assert h.request_body(ctx, b"one message", end_of_stream=True) == ACTION_CONTINUE
    assert [w for _, w in s.forwarded] == [b"one message"]


def test_reconfiguration_releases_what_is_held_and_applies_to_open_streams_too():
    """Envoy applies a new plugin configuration as a new root context in the same VM, while a long-lived stream
    stays open under the old one: what it holds goes at once, and its next chunks follow the new B and T."""
    h = host(hold_bytes=10_000, hold_ms=40)
    old_ctx, old = open_stream(h)
    h.request_body(old_ctx, b"o" * 10)
    new = {"hold_bytes": 10_000, "hold_ms": 10, "throughput_below": 0.3, "route:telemetry": 0.0}
    root, ok = h.reconfigure(json.dumps(new).encode())
    assert ok and root != 1
    assert [w for _, w in old.forwarded] == [b"o" * 10]  # released by the reconfiguration, not lost
    start = h.now_ns
    h.request_body(old_ctx, b"p" * 10)
    for _ in range(12):
        h.tick(1)
    assert [(w, (t - start) // 1_000_000 <= 10) for t, w in old.forwarded[1:]] == [(b"p" * 10, True)]  # new T
    new_ctx, _fresh = open_stream(h)
    assert h.request_body(new_ctx, b"n" * 10) == HELD
    h.delete_root(1)  # the old root goes: the stream it started keeps following the configuration in force
    assert h.request_body(old_ctx, b"q" * 10) == HELD


def test_streams_of_a_root_whose_timer_stopped_are_released_by_the_new_roots_ticks():
    """Seen in Envoy: after an ECDS update the old root context gets no more ticks while a stream it started
    still sends; the new root's ticks must keep the old stream's bound."""
    h = host(hold_bytes=10_000, hold_ms=30)
    old_ctx, old = open_stream(h)
    new_root, ok = h.reconfigure(json.dumps({"hold_bytes": 0, "hold_ms": 0}).encode())  # the new one holds nothing
    assert ok and h.tick_period_ms == 1  # but something is (about to be) held: keep ticking
    h.request_body(old_ctx, b"o" * 10)
    for _ in range(30):
        h.tick(1, roots=[new_root])
    assert [w for _, w in old.forwarded] == [b"o" * 10]
    h.finish(old_ctx)
    h.delete_root(1)
    h.tick(1, roots=[new_root])
    assert h.tick_period_ms == 0  # nothing held and no configuration that holds: the timer stops


def test_a_reconfiguration_with_an_unbounded_hold_keeps_the_hold_in_force():
    h = host(hold_bytes=10_000, hold_ms=10)
    _root, ok = h.reconfigure(b'{"hold_bytes": 100, "hold_ms": 0, "route:telemetry": 0}')
    assert ok and [(r.key, r.code) for r in h.refused] == [("hold_bytes", "unbounded_hold")]
    ctx, _s = open_stream(h)
    assert h.request_body(ctx, b"x" * 100) == HELD  # B is still 10,000, not 100


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
    first = ProxyWasmHost(WASM, b'{"hold_bytes": 100, "hold_ms": 0, "route:telemetry": 0}')
    assert first.configure() and [r.code for r in first.refused] == ["unbounded_hold"]
    ctx, _s = open_stream(first)
    assert first.request_body(ctx, b"x") == ACTION_CONTINUE  # refused: no hold
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
    assert h.request_body(ctx, b"y" * 10) == HELD


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
    h.request_body(ctx, b"", end_of_stream=True)
    out, offset = bytearray(), 0
    for t, write in s.forwarded:
        for arrived, start, _end in arrivals:
            if offset <= start < offset + len(write):
                assert t - arrived <= hold_ms * 1_000_000, "a byte waited past T"
        out += write
        offset += len(write)
    assert bytes(out) == bytes(sent)
    assert all(len(w) <= max(hold_bytes, 300) + 300 for _, w in s.forwarded)  # memory bounded by about B


def test_many_reconfigurations_while_old_roots_live_on_are_all_taken():
    """Long-lived streams keep replaced root contexts alive: more of them than the filter has slots for."""
    h = host()
    ctx, s = open_stream(h)
    for hold_ms in range(10, 30):
        _root, ok = h.reconfigure(
            json.dumps({"hold_bytes": 10_000, "hold_ms": hold_ms, "route:telemetry": 0.0}).encode()
        )
        assert ok
    start = h.now_ns
    h.request_body(ctx, b"z" * 10)
    for _ in range(40):
        h.tick(1)
    ((t, write),) = s.forwarded
    assert write == b"z" * 10 and 24 <= (t - start) / 1e6 <= 29  # the last configuration's T (29 ms) holds
