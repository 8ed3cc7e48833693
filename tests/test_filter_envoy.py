"""The filter's hold in real Envoys (two sidecars, mutual TLS): nothing lost or held past T when the client aborts,
the upstream fails, the configuration changes, the proxy drains or is killed mid-stream.

The pattern of the disruptive tests: stream N messages, stay idle for longer than T, then disrupt. Every message
was sent more than T before the disruption, so every one must have reached the server app, in order, within T
(the server app records what it got even when the stream breaks).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest

from dapb_mesh.bench.envoy import WASM, bench_virtual_service, filter_config
from dapb_mesh.config import Settings
from dapb_mesh.mesh.virtualservice import urgencies
from dapb_mesh.policy import Sensitivity
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.mesh import Mesh

HOLD_MS = 50
HOLD_BYTES = 100_000  # never reached at these rates: T decides every release
PATH_MS = 5  # T + 2 ms of the issue, plus the 1.4-3 ms the path itself takes at worst (baseline's max here)
RATE, COUNT, SIZE = 200, 100, 64


def held_mesh(hold_ms: int = HOLD_MS, hold_bytes: int = HOLD_BYTES, **mesh_options) -> tuple[Mesh, callable]:
    """An inter-pod mesh whose filter holds /stream (a throughput route) for hold_ms; and a function that
    renders the filter configuration for another hold."""
    vs = bench_virtual_service(Sensitivity.THROUGHPUT)
    table, _ = urgencies(vs)
    settings = Settings()

    def config(hold: tuple[int, int], buffer_limit_bytes: int = 0) -> str:
        cfg = json.loads(filter_config(table, settings, hold))
        cfg.pop("buffer_limit_bytes")
        if buffer_limit_bytes:
            cfg["buffer_limit_bytes"] = buffer_limit_bytes
        return json.dumps(cfg)

    mesh = Mesh(
        "inter-pod",
        routes=ec.class_routes([vs]),
        wasm_filter=WASM,
        wasm_config=config((hold_bytes, hold_ms)),
        **mesh_options,
    )
    return mesh, config


def stream_id() -> str:
    return uuid.uuid4().hex[:12]


def assert_all_arrived_within(summary: dict, count: int, bound_ms: float) -> None:
    assert summary["messages"] == count and summary["bytes"] == count * SIZE, summary
    assert summary["in_order"] and summary["partial_bytes"] == 0
    assert summary["delay_ms"]["max"] <= bound_ms, f"a message waited {summary['delay_ms']} ms"


def in_background(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.fixture(scope="module")
def mesh():
    m, config = held_mesh()
    with m:
        m.config = config
        yield m


def test_a_held_stream_ends_whole_and_holds_close_to_t(mesh):
    sid = stream_id()
    r = mesh.stream(RATE, COUNT, SIZE, stream_id=sid)
    summary = mesh.stream_summary(sid)
    assert r["server"]["complete"] and summary["complete"]
    assert_all_arrived_within(summary, COUNT, HOLD_MS + PATH_MS)
    assert summary["delay_ms"]["max"] >= HOLD_MS - 10  # it did hold: the oldest byte waited about T


def test_client_abort_after_a_pause_loses_nothing(mesh):
    sid = stream_id()
    r = mesh.stream(RATE, COUNT, SIZE, stream_id=sid, pause_ms=HOLD_MS + 30, abort=True)
    assert r["error"] is None and r["messages_sent"] == COUNT
    summary = mesh.stream_summary(sid)
    assert not summary["complete"]  # the body never ended: the abort reached the server app
    assert_all_arrived_within(summary, COUNT, HOLD_MS + PATH_MS)


def test_upstream_failure_is_reported_and_the_next_stream_is_whole(mesh):
    sid = stream_id()
    r = mesh.stream(RATE, COUNT, SIZE, stream_id=sid, fail_after=COUNT // 2, allow_failure=True)
    assert r["error"] is not None  # a 503 or a reset reaches the client: no hang, no false success
    broken = mesh.stream_summary(sid)
    assert not broken["complete"] and broken["in_order"] and broken["messages"] >= COUNT // 2
    sid = stream_id()
    mesh.stream(RATE, COUNT, SIZE, stream_id=sid)
    assert_all_arrived_within(mesh.stream_summary(sid), COUNT, HOLD_MS + PATH_MS)


def test_reconfiguration_mid_stream_loses_nothing_and_applies_to_new_streams(mesh):
    """The new configuration (T = 20 ms) comes over ECDS while a stream is held under T = 50 ms."""
    sid = stream_id()
    thread, _ = in_background(lambda: mesh.stream(RATE, 3 * COUNT, SIZE, stream_id=sid))
    time.sleep(0.5)
    mesh.update_routes(mesh.routes, "reconfigured", mesh.config((HOLD_BYTES, 20)))
    mesh.wait_for_config(r"hold_ms\W+20\b")
    thread.join(30)
    assert_all_arrived_within(mesh.stream_summary(sid), 3 * COUNT, HOLD_MS + PATH_MS)
    sid = stream_id()
    mesh.stream(RATE, COUNT, SIZE, stream_id=sid)
    after = mesh.stream_summary(sid)
    assert_all_arrived_within(after, COUNT, 20 + PATH_MS)
    assert after["delay_ms"]["max"] >= 10  # still holding, now for the new T
    mesh.update_routes(mesh.routes, "restored", mesh.config((HOLD_BYTES, HOLD_MS)))
    mesh.wait_for_config(rf"hold_ms\W+{HOLD_MS}\b")


def test_a_hold_never_overflows_the_proxy_buffer_limit():
    """512 B at 2,000 msg/s (1 MB/s) held for up to 50 ms is 51 KB, past an 8 KiB per-connection limit. Told the
    limit, the filter releases at half of it (4 KiB: about 4 ms of this stream). Not told, it holds with flow
    control (StopIterationAndWatermark): Envoy stops reading from the client at the limit instead of answering 413,
    so the stream still succeeds whole, only slower (the client waits up to T)."""
    m, config = held_mesh(buffer_limit_bytes=8192)
    with m:
        results = {}
        for name, limit in (("told", 8192), ("not-told", 0)):
            m.update_routes(m.routes, name, config((HOLD_BYTES, HOLD_MS), buffer_limit_bytes=limit))
            m.wait_for_config(r"buffer_limit_bytes\W+8192\b" if limit else r"hold_ms\W+50\b(?!.*buffer_limit_bytes)")
            sid = stream_id()
            m.stream(2000, 1000, 512, stream_id=sid)
            results[name] = m.stream_summary(sid)
            assert results[name]["complete"] and results[name]["in_order"] and results[name]["bytes"] == 1000 * 512
        assert results["told"]["delay_ms"]["max"] <= 15  # released at 4 KiB, never against the limit
        assert results["not-told"]["delay_ms"]["max"] > results["told"]["delay_ms"]["max"]


def test_drain_mid_stream_loses_nothing():
    m, _ = held_mesh()
    with m:
        sid = stream_id()
        thread, result = in_background(lambda: m.stream(RATE, 3 * COUNT, SIZE, stream_id=sid, allow_failure=True))
        time.sleep(0.5)
        m.sidecars[0].get("/drain_listeners?graceful", method="POST")
        thread.join(30)
        assert result["error"] is None
        assert_all_arrived_within(m.stream_summary(sid), 3 * COUNT, HOLD_MS + PATH_MS)


def test_a_killed_sidecar_had_sent_everything_older_than_t():
    m, _ = held_mesh()
    with m:
        sid = stream_id()
        thread, result = in_background(
            lambda: m.stream(RATE, COUNT, SIZE, stream_id=sid, pause_ms=4000, allow_failure=True)
        )
        time.sleep(1.5)  # the client starts (~0.3 s), sends for 0.5 s, then idles for 4 s
        killed_ns = time.monotonic_ns()
        os.kill(m.sidecars[0].proc.pid, signal.SIGKILL)
        thread.join(30)
        assert result["messages_sent"] == COUNT
        assert killed_ns - result["sent_done_ns"] >= (HOLD_MS + 30) * 1e6, "the kill came too early to judge"
        summary = m.stream_summary(sid)
        assert not summary["complete"]
        assert_all_arrived_within(summary, COUNT, HOLD_MS + PATH_MS)


# ---- a filter that fails must not fail the requests (FAIL_OPEN) ----------------------------------------------------
TRAPPING_FILTER = r"""
// A proxy-wasm filter that traps on every request's headers: a stand-in for any fatal filter bug.
#define EXPORT(name) __attribute__((export_name(#name)))
static char heap[1 << 16];
static unsigned long used;
EXPORT(proxy_abi_version_0_2_1) void abi(void) {}
EXPORT(proxy_on_memory_allocate) void *allocate(unsigned long n)
{
	void *p = heap + used;
	used = (used + n + 7) & ~7ul;
	return used <= sizeof heap ? p : 0;
}
EXPORT(proxy_on_vm_start) int vm_start(int root, int size) { return 1; }
EXPORT(proxy_on_configure) int configure(int root, int size) { return 1; }
EXPORT(proxy_on_context_create) void context_create(int id, int parent) {}
EXPORT(proxy_on_request_headers) int request_headers(int id, int headers, int end) { __builtin_trap(); }
EXPORT(proxy_on_done) int done(int id) { return 1; }
EXPORT(proxy_on_delete) void delete(int id) {}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requests_through_envoy(tmp_path, wasm, failure_policy: str, count: int = 5) -> list[int]:
    """Statuses of ``count`` requests through one Envoy on loopback (no pods, no namespaces) whose only HTTP
    filter before the router is ``wasm`` under ``failure_policy``, to a local app that answers 200."""
    import http.client
    import http.server
    import subprocess

    from dapb_mesh.testbed.mesh import envoy_binary

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    listen = _free_port()
    wasm_filter = {
        "name": "trap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "trap",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
                "failure_policy": failure_policy,
            },
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
            ]
        },
        "http_filters": [
            wasm_filter,
            {
                "name": "router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    config = {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": app.server_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }
    path = tmp_path / f"envoy-{failure_policy}.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / f"envoy-{failure_policy}.log").open("wb")
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1", "-l", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    statuses = []
    try:
        deadline = time.monotonic() + 20
        while True:  # until the listener is up
            try:
                conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
                conn.request("GET", "/first")
                statuses.append(conn.getresponse().status)
                conn.close()
                break
            except OSError:
                if envoy.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / f"envoy-{failure_policy}.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        for i in range(count - 1):
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
            conn.request("GET", f"/{i}")
            statuses.append(conn.getresponse().status)
            conn.close()
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        log.close()
        app.shutdown()
    return statuses


def test_a_filter_that_traps_fails_open_and_requests_go_on(tmp_path):
    """What the WasmPlugin's failStrategy: FAIL_OPEN asks of Envoy 1.40 (failure_policy FAIL_OPEN): a filter that
    traps on every request costs only the request in flight when its VM traps (503: Envoy cannot finish a callback
    that trapped); from then on Envoy skips the filter and every request reaches the app. Under FAIL_CLOSED (what
    Istio's default, FAIL_CLOSE, asks for) the same filter fails every request."""
    import shutil
    import subprocess

    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang (bootstrap.sh installs it) builds the trapping filter")
    source = tmp_path / "trap.c"
    source.write_text(TRAPPING_FILTER)
    wasm = tmp_path / "trap.wasm"
    subprocess.run(
        [
            clang,
            "--target=wasm32",
            "-O2",
            "-nostdlib",
            "-Wl,--no-entry",
            "-Wl,--export-dynamic",
            str(source),
            "-o",
            str(wasm),
        ],
        check=True,
    )
    opened = _requests_through_envoy(tmp_path, wasm, "FAIL_OPEN", count=10)
    closed = _requests_through_envoy(tmp_path, wasm, "FAIL_CLOSED", count=10)
    assert opened[1:] == [200] * 9, opened  # measured: [503, 200, 200, ...]
    assert closed == [503] * 10, closed
