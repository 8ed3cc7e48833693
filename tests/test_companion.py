"""The xDS companion against the testbed control plane (a stand-in for istiod, which cannot run here)."""

import json
import time

import pytest
from google.protobuf import any_pb2
from polling import wait_until

from dapb_mesh.mesh.companion import Companion
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.control_plane import ControlPlane, Snapshot

NODE = "sidecar~10.0.0.1~client.default~default.svc.cluster.local"


def vs_doc(route_urgency: str) -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "svc-b", "namespace": "default", "annotations": {"dapb.io/route-urgency": route_urgency}},
        "spec": {
            "hosts": ["svc-b"],
            "http": [
                {
                    "name": "telemetry",
                    "match": [{"uri": {"prefix": "/telemetry"}}],
                    "route": [{"destination": {"host": "svc-b"}}],
                },
                {"name": "api", "route": [{"destination": {"host": "svc-b"}}]},
            ],
        },
    }


def snapshot(version: str, vs: dict) -> Snapshot:
    spec = ec.SidecarSpec(
        pod="client", address="10.0.0.1", services=[ec.Service("svc-b", ("10.0.0.2",))], routes=ec.class_routes([vs])
    )
    return Snapshot.build(version, ec.resources(spec))


@pytest.fixture
def plane(tmp_path):
    cp = ControlPlane(tmp_path / "xds.sock").start()
    yield cp
    cp.stop()


def test_table_from_routes_and_annotations_and_updates_within_a_second(plane, tmp_path):
    vs_dir = tmp_path / "vs"
    vs_dir.mkdir()
    (vs_dir / "svc-b.yaml").write_text(json.dumps(vs_doc("telemetry: throughput")))
    plane.set_snapshot(NODE, snapshot("1", vs_doc("")))
    seen = []
    companion = Companion(f"unix:{plane.socket_path}", NODE, vs_dir, on_change=seen.append).start()
    try:
        assert wait_until(lambda: companion.state.table == {"telemetry": 0.0, "api": 0.4})
        (vs_dir / "svc-b.yaml").write_text(json.dumps(vs_doc("telemetry: throughput\napi: latency")))
        changed_at = time.monotonic()
        assert wait_until(lambda: companion.state.table.get("api") == 1.0, 1.0)
        assert time.monotonic() - changed_at < 1.0
        assert seen[-1] == {"telemetry": 0.0, "api": 1.0}
    finally:
        companion.stop()


def test_malformed_resources_are_nacked_and_the_last_table_kept(plane, tmp_path):
    vs_dir = tmp_path / "vs"
    vs_dir.mkdir()
    (vs_dir / "svc-b.yaml").write_text(json.dumps(vs_doc("telemetry: throughput")))
    plane.set_snapshot(NODE, snapshot("1", vs_doc("")))
    companion = Companion(f"unix:{plane.socket_path}", NODE, vs_dir).start()
    try:
        assert wait_until(lambda: companion.state.table == {"telemetry": 0.0, "api": 0.4})
        good = plane.snapshot_for(NODE)
        bogus = any_pb2.Any()
        bogus.Pack(good.resources[ec.T_CLUSTER][next(iter(good.resources[ec.T_CLUSTER]))])  # a Cluster as a route
        bad = Snapshot("2", {**good.resources, ec.T_ROUTE: {"outbound": bogus}})
        plane.set_snapshot(NODE, bad)
        assert wait_until(lambda: companion.state.nacks)
        assert "is not a RouteConfiguration" in companion.state.nacks[0]
        assert wait_until(lambda: any("is not a RouteConfiguration" in n[2] for n in plane.nacks))  # the server saw it
        assert companion.state.table == {"telemetry": 0.0, "api": 0.4}
    finally:
        companion.stop()


def test_control_plane_away_keeps_the_table_and_reconnects(tmp_path):
    vs_dir = tmp_path / "vs"
    vs_dir.mkdir()
    (vs_dir / "svc-b.yaml").write_text(json.dumps(vs_doc("telemetry: throughput")))
    socket_path = tmp_path / "xds.sock"
    plane = ControlPlane(socket_path).start()
    plane.set_snapshot(NODE, snapshot("1", vs_doc("")))
    companion = Companion(f"unix:{socket_path}", NODE, vs_dir, backoff_max_s=0.5).start()
    try:
        assert wait_until(lambda: companion.state.table == {"telemetry": 0.0, "api": 0.4})
        plane.stop()
        assert wait_until(lambda: not companion.state.connected)
        time.sleep(0.5)
        assert companion.state.table == {"telemetry": 0.0, "api": 0.4}  # last good table kept
        plane = ControlPlane(socket_path).start()
        plane.set_snapshot(NODE, snapshot("2", vs_doc("")))
        assert wait_until(lambda: companion.state.connected, 5.0)
    finally:
        companion.stop()
        plane.stop()


def test_kubernetes_source_lists_and_watches_virtual_services():
    """The official client against a stand-in API server (a Kubernetes API server cannot run here): it serves
    the VirtualService list and a watch stream, as /apis/networking.istio.io/v1/virtualservices does."""
    import queue
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from dapb_mesh.mesh.sources import KubernetesSource

    items = {"default/svc-b": vs_doc("telemetry: throughput")}
    events: queue.Queue = queue.Queue()

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if not self.path.startswith("/apis/networking.istio.io/v1/virtualservices"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("connection", "close")
            self.end_headers()
            if "watch=true" in self.path:
                try:
                    while True:
                        ev = events.get(timeout=1.0)
                        self.wfile.write((json.dumps(ev) + "\n").encode())
                        self.wfile.flush()
                except queue.Empty:
                    return
            else:
                body = {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualServiceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": list(items.values()),
                }
                self.wfile.write(json.dumps(body).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    source = KubernetesSource(client.ApiClient(config)).start()
    try:
        assert wait_until(lambda: len(source.poll()[1]) == 1)
        version = source.poll()[0]
        changed = vs_doc("telemetry: latency")

        def publish(kind, obj):  # the stand-in keeps its list consistent with the events it sends
            if kind == "DELETED":
                items.pop("default/svc-b", None)
            else:
                items["default/svc-b"] = obj
            events.put({"type": kind, "object": obj})

        publish("MODIFIED", changed)
        assert wait_until(
            lambda: (
                source.poll()[0] > version
                and source.poll()[1][0]["metadata"]["annotations"]["dapb.io/route-urgency"] == "telemetry: latency"
            )
        )
        publish("DELETED", changed)
        assert wait_until(lambda: source.poll()[1] == [])
    finally:
        source.stop()
        server.shutdown()
