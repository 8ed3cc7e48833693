"""The Envoy resources a sidecar gets, built as istiod builds them, as plain dicts in Envoy's v3 JSON form.

Pure functions: the testbed control plane turns these into protobufs (json_format.ParseDict) and serves them
over ADS; tests validate them the same way. Names follow Istio: virtualOutbound on 15001, virtualInbound on
15006, clusters "outbound|PORT||HOST" and "inbound|PORT||", routes carrying filter_metadata.istio.config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dapb_mesh.classes import CLASS_DSCP, CLASS_HEADER, INBOUND_PORT, OUTBOUND_PORT, tos_socket_option
from dapb_mesh.classes import SIDECAR_UID as SIDECAR_UID  # re-exported: the testbed's sidecars run as Istio's do

GRPC_PORT = 9090  # the apps' gRPC port: a second port of every service (HTTP/2 to the app, as Istio's grpc-*)
ADMIN_PORT = 15000
NAMESPACE = "default"
DOMAIN = "svc.cluster.local"

T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
T_ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
T_EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"  # ECDS, as istiod serves WasmPlugin
WASM_FILTER_NAME = "dapb.wasm"
_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_ADS = {"ads": {}, "resource_api_version": "V3"}


@dataclass(frozen=True)
class Tls:
    """Files of one pod's workload identity, for mutual TLS between sidecars."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Service:
    """A mesh service: its short name, the pod IPs behind it and its port."""

    name: str
    addresses: tuple[str, ...]
    port: int = 8080

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{NAMESPACE}.{DOMAIN}"

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.fqdn}"


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP route of a VirtualService, reduced to what the sidecar needs."""

    name: str
    virtual_service: str
    prefix: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    destination: str = ""  # service short name
    cluster_suffix: str = ""  # a class cluster (e.g. "~throughput"), set by the mesh integration


@dataclass
class SidecarSpec:
    """What one sidecar proxies: the services it may call, the app port it fronts, its identity."""

    pod: str
    address: str
    services: list[Service]
    routes: list[RouteSpec] = field(default_factory=list)
    app_port: int = 8080
    tls: Tls | None = None
    upstream_socket_options: dict[str, list[dict]] = field(default_factory=dict)  # cluster suffix -> options
    requests_per_connection: int = 0  # 0: unlimited (Envoy's default); 1: every request on a new connection
    upstream_idle_timeout_s: float = 0  # close idle sidecar-to-sidecar connections after this; 0: Envoy's 1 h
    wasm_filter: Path | None = None  # the DAPB filter on the outbound listener
    wasm_config: str = ""  # its plugin configuration (JSON)
    buffer_limit_bytes: int = 0  # the outbound listener's per-connection buffer limit; 0: Envoy's 1 MiB


def node_id(spec: SidecarSpec) -> str:
    return f"sidecar~{spec.address}~{spec.pod}.{NAMESPACE}~{NAMESPACE}.{DOMAIN}"


def virtual_service_path(name: str, namespace: str = NAMESPACE) -> str:
    """The filter_metadata.istio.config value istiod puts on a route built from a VirtualService."""
    return f"/apis/networking.istio.io/v1/namespaces/{namespace}/virtual-service/{name}"


def _tls_context(tls: Tls, alpn: list[str]) -> dict:
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(tls.cert)}, "private_key": {"filename": str(tls.key)}}
        ],
        "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
        "alpn_protocols": alpn,
    }


def wasm_extension_config(path: Path, configuration: str) -> dict:
    """The DAPB Wasm filter's configuration as an ECDS resource (V8 runtime, code from a local file)."""
    return {
        "name": WASM_FILTER_NAME,
        "typed_config": {
            "@type": _WASM,
            "config": {
                "name": "dapb",
                "root_id": "dapb",
                "vm_config": {
                    "vm_id": "dapb",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(path)}},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
            },
        },
    }


def wasm_http_filter() -> dict:
    """The filter's place in the outbound chain; its configuration comes over ECDS, as Istio delivers a
    WasmPlugin: a new configuration applies to new streams without draining the listener."""
    return {
        "name": WASM_FILTER_NAME,
        "config_discovery": {
            "config_source": _ADS,
            "type_urls": [_WASM],
        },
    }


def _hcm(stat_prefix: str, route: dict, filters: list[dict] | None = None) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            **route,
            "http_filters": [
                *(filters or []),
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
            ],
        },
    }


def _original_dst() -> dict:
    return {
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
    }


def listeners(spec: SidecarSpec) -> list[dict]:
    outbound_filters = [wasm_http_filter()] if spec.wasm_filter else []
    outbound = {
        "name": "virtualOutbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": OUTBOUND_PORT}},
        **({"per_connection_buffer_limit_bytes": spec.buffer_limit_bytes} if spec.buffer_limit_bytes else {}),
        "listener_filters": [_original_dst()],
        "filter_chains": [
            {
                "filters": [
                    _hcm(
                        "outbound", {"rds": {"route_config_name": "outbound", "config_source": _ADS}}, outbound_filters
                    )
                ]
            }
        ],
    }
    inbound_route = {
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {
                    "name": "inbound",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc"}}],
                            },
                            "route": {"cluster": f"inbound|{GRPC_PORT}||", "timeout": "0s"},
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": f"inbound|{spec.app_port}||", "timeout": "0s"}},
                    ],
                }
            ],
        }
    }
    chain: dict = {"filters": [_hcm("inbound", inbound_route)]}
    if spec.tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": _tls_context(spec.tls, ["h2", "http/1.1"]),
                "require_client_certificate": True,
            },
        }
    inbound = {
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": INBOUND_PORT}},
        "listener_filters": [_original_dst()],
        "filter_chains": [chain],
    }
    return [outbound, inbound]


def _outbound_cluster(spec: SidecarSpec, service: Service, suffix: str = "") -> dict:
    cluster: dict = {
        "name": service.cluster + suffix,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _ADS, "service_name": service.cluster},
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    common: dict = {}
    if spec.requests_per_connection:
        common["max_requests_per_connection"] = spec.requests_per_connection
    if spec.upstream_idle_timeout_s:
        common["idle_timeout"] = f"{spec.upstream_idle_timeout_s:g}s"
    if common:
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        options["common_http_protocol_options"] = common
    options = spec.upstream_socket_options.get(suffix)
    if options:
        cluster["upstream_bind_config"] = {
            "source_address": {"address": "0.0.0.0", "port_value": 0},
            "socket_options": options,
        }
    if spec.tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": _tls_context(spec.tls, ["h2"]),
                "sni": f"outbound_.{service.port}_._.{service.fqdn}",
            },
        }
    return cluster


def _inbound_cluster(port: int, http2: bool = False) -> dict:
    """The app behind the sidecar on localhost; HTTP/2 (cleartext) for its gRPC port."""
    name = f"inbound|{port}||"
    cluster: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def clusters(spec: SidecarSpec) -> list[dict]:
    suffixes = {""} | {r.cluster_suffix for r in spec.routes}
    out = [_outbound_cluster(spec, svc, suffix) for svc in spec.services for suffix in sorted(suffixes)]
    out += [_inbound_cluster(spec.app_port), _inbound_cluster(GRPC_PORT, http2=True)]
    return out


def endpoints(spec: SidecarSpec) -> list[dict]:
    return [
        {
            "cluster_name": svc.cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": svc.port}}}}
                        for ip in svc.addresses
                    ]
                }
            ],
        }
        for svc in spec.services
    ]


def _route_entry(route: RouteSpec, service: Service) -> dict:
    match: dict = {"prefix": route.prefix}
    if route.headers:
        match["headers"] = [{"name": k, "string_match": {"exact": v}} for k, v in route.headers]
    return {
        "name": route.name,
        "match": match,
        "route": {"cluster": service.cluster + route.cluster_suffix, "timeout": "0s"},
        "metadata": {"filter_metadata": {"istio": {"config": virtual_service_path(route.virtual_service)}}},
    }


def routes(spec: SidecarSpec) -> list[dict]:
    hosts = []
    for svc in spec.services:
        mine = [_route_entry(r, svc) for r in spec.routes if r.destination == svc.name]
        default = {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": svc.cluster, "timeout": "0s"}}
        names = [svc.name, svc.fqdn, *svc.addresses]
        hosts.append(
            {
                "name": f"{svc.fqdn}:{svc.port}",
                "domains": sorted({*names, *(f"{n}:{port}" for n in names for port in (svc.port, GRPC_PORT))}),
                "routes": [*mine, default],
            }
        )
    return [{"name": "outbound", "virtual_hosts": hosts}]


def resources(spec: SidecarSpec) -> dict[str, list[dict]]:
    """Every resource of one sidecar, by type URL."""
    return {
        T_LISTENER: listeners(spec),
        T_CLUSTER: clusters(spec),
        T_ROUTE: routes(spec),
        T_ENDPOINT: endpoints(spec),
        T_EXTENSION: [wasm_extension_config(spec.wasm_filter, spec.wasm_config)] if spec.wasm_filter else [],
    }


def bootstrap(spec: SidecarSpec, xds_socket: Path) -> dict:
    """The static part: node identity, admin on localhost, and the ADS cluster over a unix socket."""
    return {
        "node": {"id": node_id(spec), "cluster": spec.pod, "metadata": {"NAMESPACE": NAMESPACE, "DAPB_TESTBED": "1"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": _ADS,
            "lds_config": _ADS,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(xds_socket)}}}}]}
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": _HTTP_OPTS,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                }
            ]
        },
    }


def class_routes(virtual_services: list[dict]) -> list[RouteSpec]:
    """Routes from VirtualServices as istiod would build them, each with a variant per DAPB class placed first:
    the variant matches the x-dapb-class header the Wasm filter sets and goes to the class's cluster."""
    out = []
    for vs in virtual_services:
        name = (vs.get("metadata") or {}).get("name", "?")
        for http in (vs.get("spec") or {}).get("http") or []:
            route_name = http.get("name")
            dest = ((http.get("route") or [{}])[0].get("destination") or {}).get("host", "")
            prefix = "/"
            for m in http.get("match") or []:
                prefix = ((m or {}).get("uri") or {}).get("prefix", prefix)
            if not route_name or not dest:
                continue
            short = dest.split(".")[0]
            for cls in CLASS_DSCP:
                out.append(
                    RouteSpec(
                        name=f"{route_name}~{cls}",
                        virtual_service=name,
                        prefix=prefix,
                        headers=((CLASS_HEADER, cls),),
                        destination=short,
                        cluster_suffix=f"~{cls}",
                    )
                )
            out.append(RouteSpec(name=route_name, virtual_service=name, prefix=prefix, destination=short))
    return out


def class_socket_options() -> dict[str, list[dict]]:
    """IP_TOS per class cluster, set before connect: the DSCPs the kernel classifies by."""
    return {f"~{cls}": [tos_socket_option(dscp)] for cls, dscp in CLASS_DSCP.items()}
