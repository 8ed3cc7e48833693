"""The testbed control plane: an ADS server (state of the world) serving versioned, checked snapshots.

In the manner of go-control-plane: a snapshot is an internally consistent set of resources per node; a
consistency check runs before anything is served; a new snapshot is pushed to every connected sidecar. It
listens on a unix socket, which sidecars in any network namespace reach through the filesystem.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import any_pb2, json_format

from dapb_mesh.testbed import envoy_config as ec

log = logging.getLogger("dapb.control_plane")

_MESSAGE_TYPES = {
    ec.T_LISTENER: "envoy.config.listener.v3.listener_pb2:Listener",
    ec.T_CLUSTER: "envoy.config.cluster.v3.cluster_pb2:Cluster",
    ec.T_ROUTE: "envoy.config.route.v3.route_pb2:RouteConfiguration",
    ec.T_ENDPOINT: "envoy.config.endpoint.v3.endpoint_pb2:ClusterLoadAssignment",
    ec.T_EXTENSION: "envoy.config.core.v3.extension_pb2:TypedExtensionConfig",
}


class SnapshotError(ValueError):
    """A snapshot that is not internally consistent or not valid Envoy configuration; never served."""


def _message_class(type_url: str):
    import importlib

    module, name = _MESSAGE_TYPES[type_url].split(":")
    return getattr(importlib.import_module(module), name)


def _register_extension_types() -> None:
    """Import the typed_config messages so ParseDict can resolve their @type URLs."""
    import importlib

    for module in (
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "envoy.extensions.filters.http.router.v3.router_pb2",
        "envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2",
        "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
        "envoy.extensions.filters.http.wasm.v3.wasm_pb2",
    ):
        importlib.import_module(module)


def to_proto(type_url: str, resource: dict):
    """A resource dict as its Envoy protobuf; SnapshotError names the resource and the bad field."""
    _register_extension_types()
    try:
        return json_format.ParseDict(resource, _message_class(type_url)())
    except json_format.ParseError as error:
        name = resource.get("name") or resource.get("cluster_name")
        raise SnapshotError(f"{type_url.rsplit('.', 1)[-1]} {name!r}: {error}") from None


@dataclass(frozen=True)
class Snapshot:
    """Resources for one node, by type URL and name, with a version."""

    version: str
    resources: dict[str, dict[str, any_pb2.Any]]

    @classmethod
    def build(cls, version: str, by_type: dict[str, list[dict]]) -> Snapshot:
        packed: dict[str, dict[str, any_pb2.Any]] = {}
        for type_url, items in by_type.items():
            packed[type_url] = {}
            for item in items:
                msg = to_proto(type_url, item)
                wrapped = any_pb2.Any()
                wrapped.Pack(msg)
                packed[type_url][item.get("name") or item["cluster_name"]] = wrapped
        snap = cls(version, packed)
        snap.check(by_type)
        return snap

    @staticmethod
    def check(by_type: dict[str, list[dict]]) -> None:
        """Every route points at a defined cluster, every EDS cluster has endpoints, every filter a listener
        discovers (ECDS) is defined."""
        clusters = {c["name"]: c for c in by_type.get(ec.T_CLUSTER, [])}
        assignments = {e["cluster_name"] for e in by_type.get(ec.T_ENDPOINT, [])}
        for rc in by_type.get(ec.T_ROUTE, []):
            for vh in rc.get("virtual_hosts", []):
                for r in vh.get("routes", []):
                    target = r.get("route", {}).get("cluster")
                    if target and target not in clusters:
                        raise SnapshotError(
                            f"route {r.get('name')!r} in {rc['name']!r} points at unknown cluster {target!r}"
                        )
        extensions = {e["name"] for e in by_type.get(ec.T_EXTENSION, [])}
        for listener in by_type.get(ec.T_LISTENER, []):
            for chain in listener.get("filter_chains", []):
                for f in chain.get("filters", []):
                    for http_filter in f.get("typed_config", {}).get("http_filters", []):
                        if "config_discovery" in http_filter and http_filter["name"] not in extensions:
                            raise SnapshotError(
                                f"listener {listener['name']!r} discovers filter {http_filter['name']!r}, "
                                "which the snapshot does not define"
                            )
        for name, c in clusters.items():
            if c.get("type") == "EDS":
                service = c.get("eds_cluster_config", {}).get("service_name", name)
                if service not in assignments:
                    raise SnapshotError(f"EDS cluster {name!r} has no endpoints for {service!r}")


class _Servicer:
    """StreamAggregatedResources, state of the world (incremental xDS is refused)."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane

    def DeltaAggregatedResources(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the testbed control plane serves state-of-the-world ADS only")

    def StreamAggregatedResources(self, request_iterator, context) -> Iterator:
        from envoy.service.discovery.v3 import discovery_pb2

        inbox: queue.Queue = queue.Queue()
        node = {"id": ""}

        def reader() -> None:
            try:
                for request in request_iterator:
                    inbox.put(request)
            except grpc.RpcError:
                pass
            inbox.put(None)

        threading.Thread(target=reader, daemon=True).start()
        subscribed: dict[str, list[str]] = {}
        sent_version: dict[str, str] = {}
        nonce = 0
        watcher = self.plane._watch()
        try:
            while context.is_active():
                try:
                    request = inbox.get(timeout=0.1)
                except queue.Empty:
                    request = ...
                if request is None:
                    return
                if request is not ...:
                    if request.node.id:
                        node["id"] = request.node.id
                    if request.HasField("error_detail"):
                        self.plane.nacks.append((node["id"], request.type_url, request.error_detail.message))
                        log.warning(
                            "NACK from %s for %s: %s", node["id"], request.type_url, request.error_detail.message
                        )
                    names = list(request.resource_names)
                    same_names = subscribed.get(request.type_url) == names
                    subscribed[request.type_url] = names
                    if (
                        same_names
                        and request.version_info
                        and request.version_info == sent_version.get(request.type_url)
                    ):
                        continue  # an ACK of what we sent
                    sent_version.pop(request.type_url, None)
                elif not watcher.is_set():
                    continue
                watcher.clear()
                snap = self.plane.snapshot_for(node["id"])
                if snap is None:
                    continue
                for type_url, names in subscribed.items():
                    if sent_version.get(type_url) == snap.version:
                        continue
                    available = snap.resources.get(type_url, {})
                    chosen = [available[n] for n in names if n in available] if names else list(available.values())
                    nonce += 1
                    yield discovery_pb2.DiscoveryResponse(
                        version_info=snap.version, resources=chosen, type_url=type_url, nonce=str(nonce)
                    )
                    sent_version[type_url] = snap.version
        finally:
            self.plane._unwatch(watcher)


class ControlPlane:
    """Holds one snapshot per node id and serves them over ADS on a unix socket."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        self._watchers: set[threading.Event] = set()
        self.nacks: list[tuple[str, str, str]] = []
        self._server: grpc.Server | None = None

    def start(self) -> ControlPlane:
        from envoy.service.discovery.v3 import ads_pb2_grpc

        self.socket_path.unlink(missing_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), self._server)
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2)
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshots[node_id] = snapshot
            for w in self._watchers:
                w.set()

    def snapshot_for(self, node_id: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(node_id)

    def _watch(self) -> threading.Event:
        event = threading.Event()
        event.set()
        with self._lock:
            self._watchers.add(event)
        return event

    def _unwatch(self, event: threading.Event) -> None:
        with self._lock:
            self._watchers.discard(event)
