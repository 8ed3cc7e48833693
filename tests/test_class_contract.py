"""The class contract (dapb_mesh/classes.py) is the one Python definition of every class fact: it agrees with the
kernel's header (bpf/dapb.h), with the compiled Wasm filter, and everything that marks or matches a class takes
its DSCP and header from it."""

import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest

from dapb_mesh import classes
from dapb_mesh.agent import sensitivity_of
from dapb_mesh.config import AgentConfig, PolicyConfig, Settings
from dapb_mesh.kernel import layout
from dapb_mesh.mesh import manifests
from dapb_mesh.mesh.virtualservice import parse_value, plugin_config
from dapb_mesh.mesh.wasm_host import classify
from dapb_mesh.policy import Conditions, Sensitivity, decide
from dapb_mesh.testbed import envoy_config

ROOT = Path(__file__).resolve().parents[1]
FILTER = ROOT / "wasm_filter"


@pytest.fixture(scope="module")
def dapb_h() -> dict[str, int]:
    """Every `#define DAPB_NAME <integer>` of bpf/dapb.h."""
    text = (ROOT / "bpf" / "dapb.h").read_text()
    return {name: int(value, 0) for name, value in re.findall(r"^#define (DAPB_\w+) (0x[0-9A-Fa-f]+|\d+)", text, re.M)}


@pytest.fixture(scope="module")
def wasm() -> Path:
    """The filter as Envoy runs it, built from the current source."""
    subprocess.run(["make", "-s", "-C", str(FILTER)], check=True)
    return FILTER / "dapb_filter.wasm"


def test_class_ids_and_dscps_are_the_kernels(dapb_h):
    for cls, name in classes.CLASS_NAMES.items():
        assert dapb_h[f"DAPB_CLASS_{name.upper()}"] == cls, name
    assert dapb_h["DAPB_MAX_CLASSES"] == classes.MAX_CLASSES == len(classes.CLASS_NAMES)
    for name, dscp in classes.CLASS_DSCP.items():
        assert dapb_h[f"DAPB_DSCP_{name.upper()}"] == dscp, name
    assert dapb_h["DAPB_DSCP_LATENCY"] == classes.DSCP_LATENCY
    assert dapb_h["DAPB_DSCP_THROUGHPUT"] == classes.DSCP_THROUGHPUT


def test_every_class_has_one_name_and_the_decided_ones_a_sensitivity():
    assert set(classes.SENSITIVITY.values()) == {s.value for s in Sensitivity}
    configurable = AgentConfig.model_fields["default_sensitivity"].annotation
    assert set(get_args(configurable)) == set(classes.SENSITIVITY.values())
    assert set(classes.DECIDED) == set(classes.CLASS_NAMES) - {classes.CLASS_RECEIVER}
    assert {Sensitivity(s): cls for cls, s in classes.SENSITIVITY.items()} == layout.CLASS_OF
    settings = Settings()
    for cls, sensitivity in classes.SENSITIVITY.items():
        assert sensitivity_of(cls, settings) == Sensitivity(sensitivity)
    # a header class is named by its class name, and as an annotation value selects that class
    assert set(classes.CLASS_DSCP) <= set(classes.CLASS_NAMES.values())
    policy = PolicyConfig()
    assert parse_value("latency", 0.4) > policy.u_threshold
    assert parse_value("throughput", 0.4) < policy.throughput_below


def test_a_decision_carries_the_dscp_of_its_class():
    s = Settings()
    quiet = Conditions(rtt_ms=1.0, loss=0.0, jitter_ms=0.1)
    latency = decide(quiet, Sensitivity.LATENCY, s.policy, s.kernel)
    throughput = decide(quiet, Sensitivity.THROUGHPUT, s.policy, s.kernel)
    assert latency.knobs.dscp == classes.CLASS_DSCP["latency"]
    assert throughput.knobs.enforcer == "kernel"  # it holds, so it is marked as its class
    assert throughput.knobs.dscp == classes.CLASS_DSCP["throughput"]


def test_what_envoy_marks_is_what_the_agent_matches():
    option = {"level": 0, "name": 1, "int_value": classes.DSCP_THROUGHPUT << 2, "state": "STATE_PREBIND"}
    assert classes.tos_socket_option(classes.DSCP_THROUGHPUT) == option  # SOL_IP, IP_TOS, DSCP in the upper 6 bits
    agent = AgentConfig()
    marked_in_mesh = {
        p["match"]["cluster"]["subset"]: p["patch"]["value"]["upstream_bind_config"]["socket_options"]
        for p in manifests.envoy_filter()["spec"]["configPatches"]
    }
    marked_in_testbed = envoy_config.class_socket_options()
    for name, dscp in classes.CLASS_DSCP.items():
        assert getattr(agent, name).dscp == [dscp], name
        assert marked_in_mesh[manifests.SUBSET[name]] == [classes.tos_socket_option(dscp)], name
        assert marked_in_testbed[f"~{name}"] == [classes.tos_socket_option(dscp)], name
    assert agent.receiver_ports == [classes.INBOUND_PORT]
    assert agent.hold_uid == classes.SIDECAR_UID
    assert agent.listen.endswith(f":{classes.METRICS_PORT}")


def test_routes_match_the_header_on_every_class_name():
    example = manifests.example_virtual_service("svc", "ns")
    headers = {
        (header, value["exact"])
        for route in example["spec"]["http"]
        for m in route["match"]
        for header, value in m.get("headers", {}).items()
    }
    assert headers == {(classes.CLASS_HEADER, name) for name in classes.CLASS_DSCP}
    vs = {"metadata": {"name": "v"}, "spec": {"http": [{"name": "r", "route": [{"destination": {"host": "h"}}]}]}}
    testbed = {r.headers for r in envoy_config.class_routes([vs]) if r.headers}
    assert testbed == {((classes.CLASS_HEADER, name),) for name in classes.CLASS_DSCP}


def test_the_compiled_filter_carries_the_header_and_its_values(wasm):
    binary = wasm.read_bytes()
    for text in (classes.CLASS_HEADER, *classes.CLASS_DSCP):
        assert text.encode() + b"\0" in binary, text
    # the C passes each string with its length: every length must be the string's own
    source = (FILTER / "dapb_filter.c").read_text()
    passed = re.findall(r'"([\w-]+)", (\d+)', source)
    for text in (classes.CLASS_HEADER, *classes.CLASS_DSCP):
        lengths = {int(n) for s, n in passed if s == text}
        assert lengths == {len(text)}, text


@pytest.mark.parametrize(("priority", "expected"), [("u=0", "latency"), ("u=7", "throughput"), ("u=4", None)])
def test_the_filter_tags_requests_with_the_contracts_header(wasm, priority, expected):
    config = plugin_config([], PolicyConfig()).encode()
    cls, _ = classify(wasm, config, {"priority": priority, classes.CLASS_HEADER: "latency"}, route=None)
    assert cls == expected  # a class name, or none (a client's own header removed): the default class
    assert cls is None or cls in classes.CLASS_DSCP
