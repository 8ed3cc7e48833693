"""The Istio install: manifests for `dapb render istio`, written once here (istio/ holds the rendered copy).

How the pieces fit in a cluster:
- the WasmPlugin puts the DAPB filter on every sidecar's outbound HTTP traffic; it tags each request with
  x-dapb-class from its route's urgency (the companion keeps pluginConfig current) or its RFC 9218 priority;
- per service, a DestinationRule defines subsets dapb-latency and dapb-throughput, and the VirtualService routes
  requests carrying x-dapb-class to them (the annotated example shows how);
- the EnvoyFilter marks the sockets of those subsets' clusters with EF / AF11 (IP_TOS before connect), which the
  kernel programs classify by;
- the agent DaemonSet runs `dapb agent` with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, not privileged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from dapb_mesh import __version__
from dapb_mesh.classes import CLASS_DSCP, CLASS_HEADER, METRICS_PORT, tos_socket_option
from dapb_mesh.config import PolicyConfig
from dapb_mesh.mesh import virtualservice

NAMESPACE = "dapb-system"
PLACEHOLDER_REGISTRY = "ghcr.io/dapb-mesh"
"""Where the default image references point: a placeholder, this project publishes no image there. An install
renders with the references of the images it built and pushed (`dapb render istio --agent-image ...`)."""
IMAGE = f"{PLACEHOLDER_REGISTRY}/dapb-agent:{__version__}"
FILTER_IMAGE = f"{PLACEHOLDER_REGISTRY}/dapb-filter:{__version__}"
WASM_URL = f"oci://{FILTER_IMAGE}"

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*(?::[\w][\w.-]{{0,127}})?"
)
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def image_reference(value: str) -> str:
    """An image reference as registries read it (``[host[:port]/]path[:tag]``); ValueError says what is wrong.
    A digest goes in its own option, so that the WasmPlugin can carry it as Istio checks it (``sha256``)."""
    if "@" in value:
        raise ValueError(f"{value!r}: give the reference without @digest and the digest on its own")
    if "://" in value:
        raise ValueError(f"{value!r}: give the reference without a scheme (no oci://, no https://)")
    if len(value) > 255 or not _REFERENCE.fullmatch(value):
        raise ValueError(f"{value!r} is not an image reference: [host[:port]/]path[:tag], path in lower case")
    return value


def image_digest(value: str) -> str:
    """``sha256:HEX`` (or the 64 hex digits alone) -> the 64 hex digits; ValueError says what is wrong."""
    match = _DIGEST.fullmatch(value.strip().lower())
    if not match:
        raise ValueError(f"{value!r} is not a sha256 digest: sha256: and 64 hex digits")
    return match[1]


@dataclass(frozen=True)
class Images:
    """The images an install pulls: the agent's (the DaemonSet) and the filter's (the WasmPlugin's OCI image),
    each with the digest of its manifest if known (the DaemonSet then pulls by digest; Istio compares the filter
    image's manifest digest with the WasmPlugin's sha256 after pulling it)."""

    agent: str = IMAGE
    agent_digest: str | None = None
    filter: str = FILTER_IMAGE
    filter_digest: str | None = None

    def __post_init__(self) -> None:
        for ref in (self.agent, self.filter):
            image_reference(ref)
        for digest in (self.agent_digest, self.filter_digest):
            if digest is not None and image_digest(digest) != digest:
                raise ValueError(f"{digest!r}: give the 64 hex digits (image_digest)")

    @property
    def agent_image(self) -> str:
        return f"{self.agent}@sha256:{self.agent_digest}" if self.agent_digest else self.agent

    @property
    def filter_url(self) -> str:
        return f"oci://{self.filter}"

    def placeholders(self) -> list[str]:
        """The references that still point at the placeholder registry."""
        return [ref for ref in (self.agent, self.filter) if ref.startswith(f"{PLACEHOLDER_REGISTRY}/")]


DEFAULT_IMAGES = Images()
SUBSET = {cls: f"dapb-{cls}" for cls in CLASS_DSCP}


def istio_operator() -> dict:
    """`istioctl install -f` overlay: the settings DAPB needs from the mesh itself."""
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": "dapb", "namespace": "istio-system"},
        "spec": {
            "meshConfig": {
                "defaultConfig": {
                    # The companion finds the proxies' routes by asking istiod as a sidecar would.
                    "proxyMetadata": {"DAPB_ENABLED": "true"},
                    "proxyStatsMatcher": {"inclusionPrefixes": ["wasm.dapb", "cluster.outbound"]},
                },
            },
            "values": {"pilot": {"env": {"PILOT_ENABLE_WASM_PLUGIN": "true"}}},
        },
    }


def wasm_plugin(plugin_config: dict | None = None, images: Images = DEFAULT_IMAGES) -> dict:
    """The filter on every sidecar's outbound traffic. FAIL_OPEN: should the filter fail (a trap, a VM that does
    not start), Envoy skips it and requests go on unclassified; Istio's default, FAIL_CLOSE, would answer every
    request with 503. A bad configuration never fails it: the filter refuses the entry (mesh/filter_config.py)."""
    image = {"url": images.filter_url} | ({"sha256": images.filter_digest} if images.filter_digest else {})
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "dapb-filter", "namespace": "istio-system"},
        "spec": {
            **image,
            "phase": "STATS",
            "failStrategy": "FAIL_OPEN",
            "match": [{"mode": "CLIENT"}],
            "pluginName": "dapb",
            "pluginConfig": plugin_config or json.loads(virtualservice.plugin_config([], PolicyConfig())),
        },
    }


def tos_merge(dscp: int) -> dict:
    """The Envoy Cluster fragment merged into a subset's cluster: IP_TOS set before connect."""
    return {
        "upstream_bind_config": {
            "source_address": {"address": "0.0.0.0", "port_value": 0},
            "socket_options": [tos_socket_option(dscp)],
        }
    }


def envoy_filter() -> dict:
    patches = [
        {
            "applyTo": "CLUSTER",
            "match": {"context": "SIDECAR_OUTBOUND", "cluster": {"subset": SUBSET[cls]}},
            "patch": {"operation": "MERGE", "value": tos_merge(dscp)},
        }
        for cls, dscp in CLASS_DSCP.items()
    ]
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "dapb-class-dscp", "namespace": "istio-system"},
        "spec": {"configPatches": patches},
    }


def destination_rule(service: str, namespace: str, app_label: str) -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": f"{service}-dapb", "namespace": namespace},
        "spec": {
            "host": f"{service}.{namespace}.svc.cluster.local",
            "subsets": [{"name": SUBSET[cls], "labels": {"app": app_label}} for cls in CLASS_DSCP],
        },
    }


def example_virtual_service(service: str, namespace: str) -> dict:
    host = f"{service}.{namespace}.svc.cluster.local"

    def to(subset: str | None) -> list[dict]:
        dest: dict = {"host": host}
        if subset:
            dest["subset"] = subset
        return [{"destination": dest}]

    http = []
    for route, prefix in (("telemetry", "/telemetry"), ("api", "/")):
        for cls in CLASS_DSCP:
            http.append(
                {
                    "name": f"{route}~{cls}",
                    "match": [{"uri": {"prefix": prefix}, "headers": {CLASS_HEADER: {"exact": cls}}}],
                    "route": to(SUBSET[cls]),
                }
            )
        http.append({"name": route, "match": [{"uri": {"prefix": prefix}}], "route": to(None)})
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": service,
            "namespace": namespace,
            "annotations": {
                "dapb.io/urgency": "auto",
                "dapb.io/route-urgency": "telemetry: throughput\napi: 0.6\n",
            },
        },
        "spec": {"hosts": [host], "http": http},
    }


def agent_rbac() -> list[dict]:
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dapb-agent", "namespace": NAMESPACE}}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "dapb-agent"},
        "rules": [
            {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["extensions.istio.io"], "resources": ["wasmplugins"], "verbs": ["get", "patch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "dapb-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dapb-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "dapb-agent", "namespace": NAMESPACE}],
    }
    return [sa, role, binding]


def agent_daemonset(images: Images = DEFAULT_IMAGES) -> dict:
    host_path = lambda name, path: {"name": name, "hostPath": {"path": path, "type": "Directory"}}  # noqa: E731
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "dapb-agent", "namespace": NAMESPACE, "labels": {"app": "dapb-agent"}},
        "spec": {
            "selector": {"matchLabels": {"app": "dapb-agent"}},
            "template": {
                "metadata": {"labels": {"app": "dapb-agent"}, "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "serviceAccountName": "dapb-agent",
                    "hostNetwork": False,
                    "containers": [
                        {
                            "name": "agent",
                            "image": images.agent_image,
                            "args": [
                                "agent",
                                "--cgroup",
                                "/sys/fs/cgroup/kubepods.slice",
                                "--listen",
                                f"0.0.0.0:{METRICS_PORT}",
                            ],
                            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                            "securityContext": {
                                "privileged": False,
                                "runAsUser": 0,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]},
                            },
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT}},
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": METRICS_PORT},
                                "periodSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "volumeMounts": [
                                {"name": "bpffs", "mountPath": "/sys/fs/bpf"},
                                {"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": True},
                                {"name": "state", "mountPath": "/var/lib/dapb"},
                            ],
                        }
                    ],
                    "volumes": [
                        host_path("bpffs", "/sys/fs/bpf"),
                        host_path("cgroup", "/sys/fs/cgroup"),
                        {"name": "state", "hostPath": {"path": "/var/lib/dapb", "type": "DirectoryOrCreate"}},
                    ],
                },
            },
        },
    }


def namespace() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"istio-injection": "disabled"}},
    }


def render(
    service: str = "telemetry-ingest", service_namespace: str = "default", images: Images = DEFAULT_IMAGES
) -> dict[str, list[dict]]:
    """File name -> the documents it holds."""
    return {
        "istio-operator-overlay.yaml": [istio_operator()],
        "wasmplugin.yaml": [wasm_plugin(images=images)],
        "envoyfilter-class-dscp.yaml": [envoy_filter()],
        "agent.yaml": [namespace(), *agent_rbac(), agent_daemonset(images)],
        "example-destinationrule.yaml": [destination_rule(service, service_namespace, service)],
        "example-virtualservice.yaml": [example_virtual_service(service, service_namespace)],
    }


def write(out: Path, images: Images = DEFAULT_IMAGES) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    image_of = {"wasmplugin.yaml": ("filter", images.filter), "agent.yaml": ("agent", images.agent)}
    for name, docs in render(images=images).items():
        path = out / name
        header = f"# Rendered by `dapb render istio` (dapb-mesh {__version__}); see docs/mesh.md.\n"
        role, ref = image_of.get(name, ("", ""))
        if ref in images.placeholders():
            header += (
                f"# PLACEHOLDER image {ref}: nothing is published there. Build and push the {role} image, then\n"
                f"# render with --{role}-image and --{role}-digest (docs/install.md, Artifacts).\n"
            )
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False))
        paths.append(path)
    return paths
