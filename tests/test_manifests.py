"""`dapb render istio`: every manifest validates against Istio's schemas (cloudcoil-models-istio) or Kubernetes'
(kubernetes-validate), and the Envoy payloads inside parse with xds-protos. No cluster runs here; these are the
schemas the API servers would apply."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dapb_mesh.mesh.manifests import render, write
from dapb_mesh.mesh.virtualservice import urgencies

ISTIO_MODELS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): "cloudcoil.models.istio.extensions.v1alpha1:WasmPlugin",
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): "cloudcoil.models.istio.networking.v1alpha3:EnvoyFilter",
    ("networking.istio.io/v1", "VirtualService"): "cloudcoil.models.istio.networking.v1:VirtualService",
    ("networking.istio.io/v1", "DestinationRule"): "cloudcoil.models.istio.networking.v1:DestinationRule",
}


def model(api_version, kind):
    import importlib

    module, name = ISTIO_MODELS[(api_version, kind)].split(":")
    return getattr(importlib.import_module(module), name)


def all_docs():
    return [doc for docs in render().values() for doc in docs]


@pytest.mark.parametrize("doc", all_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_validates(doc):
    key = (doc["apiVersion"], doc["kind"])
    if key in ISTIO_MODELS:
        model(*key).model_validate(doc)
    elif doc["kind"] == "IstioOperator":
        # No IstioOperator model on PyPI: check the overlay's shape against what istioctl reads.
        assert doc["apiVersion"] == "install.istio.io/v1alpha1" and set(doc["spec"]) <= {"meshConfig", "values"}
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_an_invalid_manifest_is_caught():
    bad = render()["wasmplugin.yaml"][0] | {"spec": {"phase": "WHENEVER", "url": "oci://x"}}
    with pytest.raises(Exception, match="phase"):
        model("extensions.istio.io/v1alpha1", "WasmPlugin").model_validate(bad)


def test_envoy_payloads_parse_with_xds_protos():
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    patches = render()["envoyfilter-class-dscp.yaml"][0]["spec"]["configPatches"]
    assert len(patches) == 2
    for patch in patches:
        cluster = json_format.ParseDict(patch["patch"]["value"], cluster_pb2.Cluster())
        assert cluster.upstream_bind_config.socket_options[0].int_value in (46 << 2, 10 << 2)


def test_agent_runs_with_only_the_capabilities_it_needs():
    ds = next(d for d in render()["agent.yaml"] if d["kind"] == "DaemonSet")
    sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]}


def test_example_virtual_service_annotations_parse_cleanly():
    vs = render()["example-virtualservice.yaml"][0]
    table, problems = urgencies(vs)
    assert problems == []
    assert {(r.route, r.urgency) for r in table if "~" not in r.route} == {("telemetry", 0.0), ("api", 0.6)}


def test_istio_directory_is_the_rendered_output(tmp_path):
    write(tmp_path)
    committed = Path(__file__).resolve().parents[1] / "istio"
    for path in tmp_path.iterdir():
        assert (committed / path.name).read_text() == path.read_text(), "re-run: dapb render istio --out istio"


def test_render_cli_writes_loadable_yaml(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "render", "istio", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for p in sorted(tmp_path.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    assert {d["kind"] for d in docs} >= {
        "IstioOperator",
        "WasmPlugin",
        "EnvoyFilter",
        "DaemonSet",
        "ClusterRole",
        "ServiceAccount",
        "VirtualService",
        "DestinationRule",
    }
