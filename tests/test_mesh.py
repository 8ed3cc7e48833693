"""Mesh integration, without Envoy: VirtualService annotations, RFC 9218 priority, the Wasm filter in the Python
proxy-wasm host (the real .wasm that Envoy runs)."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dapb_mesh.config import PolicyConfig
from dapb_mesh.mesh.virtualservice import load_directory, parse_value, plugin_config, urgencies
from dapb_mesh.mesh.wasm_host import HostError, ProxyWasmHost, classify
from dapb_mesh.policy.urgency import priority_urgency

WASM = Path(__file__).resolve().parents[1] / "wasm_filter" / "dapb_filter.wasm"
CONFIG = plugin_config([], PolicyConfig()).encode()


def vs(name, routes, annotations=None):
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations or {}},
        "spec": {"hosts": [name], "http": [{"name": r, "route": [{"destination": {"host": name}}]} for r in routes]},
    }


def test_annotations_give_each_route_its_urgency():
    table, problems = urgencies(
        vs(
            "telemetry",
            ["ingest", "health"],
            {"dapb.io/urgency": "throughput", "dapb.io/route-urgency": "health: latency\n"},
        )
    )
    assert problems == []
    assert {(r.route, r.urgency) for r in table} == {("ingest", 0.0), ("health", 1.0)}
    assert parse_value("auto", 0.4) == 0.4 and parse_value(0.25, 0.4) == 0.25


@pytest.mark.parametrize(
    ("annotations", "route", "reason"),
    [
        ({"dapb.io/urgency": "fast"}, None, "neither a number"),
        ({"dapb.io/urgency": "1.5"}, None, "outside [0, 1]"),
        ({"dapb.io/route-urgency": "ingest: nan"}, "ingest", "outside [0, 1]"),
        ({"dapb.io/route-urgency": "- a\n- b"}, None, "must be a mapping"),
        ({"dapb.io/route-urgency": "ghost: 0.1"}, "ghost", "lacks"),
        ({"dapb.io/route-urgency": "{unclosed"}, None, "dapb.io/route-urgency"),
    ],
)
def test_invalid_annotations_name_resource_route_and_reason_and_never_crash(annotations, route, reason):
    table, problems = urgencies(vs("telemetry", ["ingest"], annotations))
    assert len(table) == 1  # the route still gets a (default) urgency
    assert problems and problems[0].route == route and reason in problems[0].reason
    assert "VirtualService shop/telemetry" in str(problems[0])


def test_yaml_directory_source(tmp_path):
    (tmp_path / "a.yaml").write_text("---\n" + json.dumps(vs("a", ["r1"])) + "\n---\nkind: Service\n")
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    found, problems = load_directory(tmp_path)
    assert [v["metadata"]["name"] for v in found] == ["a"]
    assert problems and "broken.yaml" in problems[0].resource


@pytest.mark.parametrize(
    ("header", "urgency"),
    [
        ("u=0", 1.0),
        ("u=7", 0.0),
        ("u=3, i", 0.571),
        ("i, u=1", 0.857),
        ("u=9", None),
        ("u=", None),
        ("i", None),
        ("xu=1", None),
        ("u=0, u=7", 0.0),  # an RFC 8941 Dictionary: the last u wins
        ("u=1;a=2", 0.857),  # parameters on the member
        ("u=00", 1.0),  # leading zeros
        ("u=1.0", None),  # not an integer: ignored
        ("u=1, i=?1", 0.857),
        ("u=1,", None),  # not a Dictionary: the whole header is ignored
        ("u=1, U=2", None),
    ],
)
def test_rfc9218_priority(header, urgency):
    assert priority_urgency(header) == urgency


@given(st.text(alphabet="u=0123456789i, ;x?.-\t", max_size=12))
@settings(max_examples=300, deadline=None)
def test_the_wasm_filter_and_python_agree_on_every_priority_header(header):
    cls, _ = classify(WASM, CONFIG, {"priority": header}, route=None)
    u = priority_urgency(header)
    u = 0.4 if u is None else u
    expected = "latency" if u > 0.5 else "throughput" if u < 0.3 else None
    assert cls == expected


def test_filter_classes_by_route_header_and_default():
    cfg = plugin_config(
        urgencies(vs("t", ["ingest", "login"], {"dapb.io/route-urgency": "ingest: 0.1\nlogin: 0.9"}))[0], PolicyConfig()
    ).encode()
    assert classify(WASM, cfg, {}, "ingest")[0] == "throughput"
    assert classify(WASM, cfg, {}, "ingest~throughput")[0] == "throughput"  # class variants keep the route's urgency
    assert classify(WASM, cfg, {}, "login")[0] == "latency"
    assert classify(WASM, cfg, {"priority": "u=0"}, "ingest")[0] == "latency"  # the application's declaration wins
    assert classify(WASM, cfg, {}, "unknown")[0] is None
    assert classify(WASM, cfg, {"x-dapb-class": "latency"}, "unknown")[0] is None  # clients cannot pick a class


def test_a_bad_plugin_configuration_entry_is_refused_alone_and_unreadable_text_named():
    """The contract in full: tests/test_filter_contract.py."""
    host = ProxyWasmHost(WASM, b'{"u_threshold": 7, "route:x": 0.9}')
    assert host.configure() and [(r.key, r.code) for r in host.refused] == [("u_threshold", "out_of_range")]
    assert classify(WASM, b'{"route:x": "fast", "route:y": 0.9}', {}, "y")[0] == "latency"
    with pytest.raises(HostError, match="rejected its configuration: not a JSON object"):
        classify(WASM, b"[1]", {}, "x")


def test_many_requests_do_not_grow_filter_memory():
    host = ProxyWasmHost(WASM, CONFIG)
    host.configure()
    for i in range(3000):
        ctx, _ = host.new_stream({"xds.route_name": b"r"})
        host.request_headers(ctx, {"priority": f"u={i % 8}"})
        host.finish(ctx)
        if i == 100:
            size = host.memory.size(host.store)
    assert host.memory.size(host.store) == size  # freed buffers are reused


def test_publisher_patches_the_wasmplugin_only_on_change_and_retries_after_a_failure(tmp_path):
    """A stand-in for kubernetes.client.CustomObjectsApi: no Kubernetes API server runs on this machine."""
    from dapb_mesh.mesh.publish import FilterConfigPublisher

    class FakeCustomObjects:
        def __init__(self):
            self.patches, self.fail_next = [], False

        def patch_namespaced_custom_object(self, **kw):
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("503 from the API server")
            self.patches.append(kw)

    api = FakeCustomObjects()
    out = tmp_path / "filter.json"
    pub = FilterConfigPublisher(out, "istio-system/dapb", api)
    first = plugin_config({"telemetry": 0.0}, PolicyConfig(), hold=(1448, 10))
    assert pub.publish(first) and not pub.publish(first)  # unchanged: no second patch
    patch = api.patches[0]
    assert (patch["group"], patch["plural"], patch["namespace"], patch["name"]) == (
        "extensions.istio.io",
        "wasmplugins",
        "istio-system",
        "dapb",
    )
    assert patch["body"]["spec"]["pluginConfig"]["hold_ms"] == 10 and json.loads(out.read_text())["hold_bytes"] == 1448
    second = plugin_config({"telemetry": 0.0}, PolicyConfig())
    api.fail_next = True
    assert not pub.publish(second) and pub.failures == 1
    assert pub.publish(second) and api.patches[-1]["body"]["spec"]["pluginConfig"]["hold_bytes"] == 0
    # the filter accepts what the publisher writes
    assert ProxyWasmHost(WASM, out.read_bytes()).configure()
