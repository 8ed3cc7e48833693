"""The xDS companion: asks istiod (or the testbed control plane) for a proxy's listeners and routes over ADS, the
way a sidecar does, follows each route's filter_metadata.istio.config back to its VirtualService, and keeps a live
urgency table per route for the Wasm filter and the agent.

- Malformed resources are NACKed with the reason (error_detail) and a log line; the last good table stays.
- When the control plane is away, the table stays and the client reconnects with exponential backoff.
- VirtualServices come from a source (a YAML directory here); a change in either side rebuilds the table.
- A bad VirtualService, annotation or file is skipped with its reason (logged once, counted in
  ``rejected_inputs``); the rest of the table stays, and nothing a tenant writes stops the watch.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from dapb_mesh.mesh.sources import DirectorySource, KubernetesSource
from dapb_mesh.mesh.virtualservice import DEFAULT_URGENCY, Problem, RouteUrgency, clip, resource_name, urgencies

log = logging.getLogger("dapb.companion")

T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_VS_PATH = re.compile(r"^/apis/networking\.istio\.io/v[^/]+/namespaces/(?P<ns>[^/]+)/virtual-service/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class XdsRoute:
    """A route as the proxy has it: its name and the VirtualService istiod built it from (namespace/name)."""

    name: str
    virtual_service: str | None


@dataclass
class CompanionState:
    routes: dict[str, XdsRoute] = field(default_factory=dict)
    table: dict[str, float] = field(default_factory=dict)  # route name -> urgency
    problems: list[Problem] = field(default_factory=list)
    nacks: list[str] = field(default_factory=list)
    connected: bool = False
    updates: int = 0


def parse_routes(route_configs: list) -> dict[str, XdsRoute]:
    """Routes with their VirtualService, from RouteConfiguration protobufs."""
    out = {}
    for rc in route_configs:
        for vh in rc.virtual_hosts:
            for r in vh.routes:
                vs = None
                istio = r.metadata.filter_metadata.get("istio")
                if istio is not None and "config" in istio.fields:
                    m = _VS_PATH.match(istio.fields["config"].string_value)
                    if m:
                        vs = f"{m['ns']}/{m['name']}"
                out[r.name] = XdsRoute(r.name, vs)
    return out


def join(routes: dict[str, XdsRoute], table: list[RouteUrgency]) -> dict[str, float]:
    """Urgency per Envoy route: the VirtualService route of the same name in the VirtualService it came from.
    Class variants (NAME~class) belong to their route."""
    by_vs = {(u.virtual_service, u.route): u.urgency for u in table}
    out = {}
    for name, route in routes.items():
        base = name.split("~", 1)[0]
        if route.virtual_service and (route.virtual_service, base) in by_vs:
            out[base] = by_vs[(route.virtual_service, base)]
    return out


class Companion:
    """Runs the ADS client and the VirtualService watch in threads; ``on_change(table)`` gets every new table."""

    def __init__(
        self,
        target: str,
        node_id: str,
        source: Path | DirectorySource | KubernetesSource,
        *,
        default_urgency: float = DEFAULT_URGENCY,
        on_change: Callable[[dict[str, float]], None] | None = None,
        poll_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ):
        self.target, self.node_id = target, node_id
        self.source = DirectorySource(source) if isinstance(source, Path) else source
        self.default_urgency = default_urgency
        self.on_change = on_change or (lambda _t: None)
        self.poll_s, self.backoff_max_s = poll_s, backoff_max_s
        self.state = CompanionState()
        self._vs_table: list[RouteUrgency] = []
        self._vs_good: dict[str, list[RouteUrgency]] = {}  # namespace/name -> its entries when last readable
        self._vs_version = -1
        self._watch_error: str | None = None
        self.rejected_inputs: Counter[tuple[str, str]] = Counter()
        """(source, reason) -> inputs rejected: counted when a problem appears, not on every rebuild it lasts."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._call = None  # the live ADS stream, cancelled on stop

    # -- the table --------------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        with self._lock:
            table = join(self.state.routes, self._vs_table)
            if table != self.state.table:
                self.state.table = table
                self.state.updates += 1
                log.info("urgency table: %s", table)
                try:
                    self.on_change(dict(table))
                except Exception as error:  # a failing subscriber must not stop the thread that rebuilt the table
                    log.error("urgency table subscriber failed: %s", clip(error))

    def _read_virtual_services(self) -> None:
        version, found, problems = self.source.poll()
        if version == self._vs_version:
            return
        self._vs_version = version
        problems = list(problems)
        table: list[RouteUrgency] = []
        good: dict[str, list[RouteUrgency]] = {}
        for vs in found:
            key = resource_name(vs)
            try:
                entries, more = urgencies(vs, self.default_urgency)
                good[key] = entries
            except Exception as error:  # input no check foresaw: skip this VirtualService, keep its last good routes
                entries = self._vs_good.get(key, [])
                if entries:
                    good[key] = entries
                reason = f"skipped ({type(error).__name__}: {clip(error)}); keeping its last good routes"
                more = [Problem(f"VirtualService {key}", None, reason, "virtualservice", "unreadable")]
            table += entries
            problems += more
        known = set(self.state.problems)
        for problem in problems:
            if problem not in known:  # each problem once, not again on every rebuild while it lasts
                log.warning("%s", problem)
                self.rejected_inputs[(problem.source, problem.code)] += 1
        self._vs_good = good
        self._vs_table = table
        self.state.problems = problems
        self._rebuild()

    def _watch_source(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_virtual_services()
                self._watch_error = None
            except Exception as error:  # the source itself failed (a directory gone, ...): keep the table, retry
                reason = f"{type(error).__name__}: {clip(error)}"
                if reason != self._watch_error:  # once per failure, not every poll while it lasts
                    log.warning("reading VirtualServices: %s; keeping the last table", reason)
                    self.rejected_inputs[("source", type(error).__name__)] += 1
                self._watch_error = reason
            self._stop.wait(self.poll_s)

    # -- ADS ----------------------------------------------------------------------------------------------
    def _request(self, type_url: str, names: list[str], version: str = "", nonce: str = "", error: str = ""):
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2
        from google.rpc import status_pb2

        req = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id=self.node_id, cluster="dapb-companion"),
            type_url=type_url,
            resource_names=names,
            version_info=version,
            response_nonce=nonce,
        )
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))  # INVALID_ARGUMENT
        return req

    def _stream_once(self) -> None:
        from envoy.config.listener.v3 import listener_pb2
        from envoy.config.route.v3 import route_pb2
        from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
        from envoy.service.discovery.v3 import ads_pb2_grpc

        outbox: queue.Queue = queue.Queue()
        outbox.put(self._request(T_LISTENER, []))
        accepted = {T_LISTENER: "", T_ROUTE: ""}
        route_names: list[str] = []

        def requests():
            while not self._stop.is_set():
                try:
                    item = outbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                yield item

        channel = grpc.insecure_channel(self.target)
        try:
            stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(requests())
            self._call = stream
            for resp in stream:
                self.state.connected = True
                try:
                    if resp.type_url == T_LISTENER:
                        names = []
                        for any_msg in resp.resources:
                            lis = listener_pb2.Listener()
                            if not any_msg.Unpack(lis):
                                raise ValueError(f"resource of type {any_msg.type_url} is not a Listener")
                            for chain in lis.filter_chains:
                                for f in chain.filters:
                                    manager = hcm.HttpConnectionManager()
                                    if f.typed_config.Unpack(manager) and manager.HasField("rds"):
                                        names.append(manager.rds.route_config_name)
                        route_names = sorted(set(names))
                        if route_names:
                            outbox.put(self._request(T_ROUTE, route_names, accepted[T_ROUTE]))
                    elif resp.type_url == T_ROUTE:
                        configs = []
                        for any_msg in resp.resources:
                            rc = route_pb2.RouteConfiguration()
                            if not any_msg.Unpack(rc):
                                raise ValueError(f"resource of type {any_msg.type_url} is not a RouteConfiguration")
                            configs.append(rc)
                        routes = parse_routes(configs)
                        with self._lock:
                            self.state.routes = routes
                        self._rebuild()
                except ValueError as error:
                    reason = f"{resp.type_url.rsplit('.', 1)[-1]} version {resp.version_info}: {error}"
                    log.error("NACK %s (keeping the last good table)", reason)
                    self.state.nacks.append(reason)
                    names = route_names if resp.type_url == T_ROUTE else []
                    outbox.put(self._request(resp.type_url, names, accepted[resp.type_url], resp.nonce, str(error)))
                    continue
                accepted[resp.type_url] = resp.version_info
                names = route_names if resp.type_url == T_ROUTE else []
                outbox.put(self._request(resp.type_url, names, resp.version_info, resp.nonce))  # ACK
        finally:
            outbox.put(None)
            channel.close()
            self.state.connected = False

    def _run_ads(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._stream_once()
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return  # our own stop cancelled the stream
                code = error.code() if hasattr(error, "code") else "?"
                log.warning("control plane %s unreachable (%s); keeping the last table", self.target, code)
            if time.monotonic() - started > 10:
                backoff = 0.1  # it was up for a while: start the backoff over
            self._stop.wait(backoff)
            backoff = min(self.backoff_max_s, backoff * 2)

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> Companion:
        for target in (self._watch_source, self._run_ads):
            t = threading.Thread(target=target, daemon=True, name=f"companion-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        for t in self._threads:
            t.join(timeout=3)
