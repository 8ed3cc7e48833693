"""Hostile input never breaks the mesh (issue 14): a tenant's VirtualService, a SIGHUP'd configuration, a model file
and a history file, each as bad as can be, are refused with a named reason while everything else keeps working.

Pure: no root, no kernel, no Envoy. The agent runs in dry-run mode; ONNX models are built in tmp_path.
"""

import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import wait_until

from dapb_mesh.agent import Agent, columns_from_samples
from dapb_mesh.config import ConfigError, Settings, load_settings, parse_settings
from dapb_mesh.mesh.companion import Companion, XdsRoute
from dapb_mesh.mesh.sources import DirectorySource
from dapb_mesh.mesh.virtualservice import (
    MAX_ANNOTATION_CHARS,
    load_directory,
    load_file,
    urgencies,
)
from dapb_mesh.predictor import ModelError, OnnxPredictor, load_predictor
from dapb_mesh.predictor.features import as_matrix
from dapb_mesh.store import SCHEMA_VERSION, HistoryStore, Outcome, StoreError

ROUTES = "dapb.io/route-urgency"
DEFAULT = Settings().policy.default_urgency

# Nine to the seventh (4.8 million) strings behind route r in 400 bytes of YAML: printing the value in a message
# took seconds and tens of megabytes, and three more lines of it never finish.
ALIAS_BOMB = "\n".join(
    [
        'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)),
        "r: *a6",
    ]
)


def vs(name: str, routes: list, annotations: dict | None = None, namespace: str = "shop") -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"hosts": [name], "http": [{"name": r, "route": [{"destination": {"host": name}}]} for r in routes]},
    }


def codes(problems) -> set[tuple[str, str]]:
    return {(p.source, p.code) for p in problems}


# -- 1. VirtualServices, annotations and files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "bad_key"),
    [
        ("1: 0.5\nzz: 0.2\nr: latency", "1"),  # YAML makes `1` an int: sorted() of int and str raised TypeError
        ("~: 0.5\nr: latency", "None"),  # `~` is null
        ("true: 0.5\n2.5: 0.1\nr: latency", "True"),
    ],
)
def test_route_names_yaml_turns_into_non_strings_are_reported_and_the_rest_applies(annotation, bad_key):
    table, problems = urgencies(vs("a", ["r", "s"], {ROUTES: annotation}))
    assert {(e.route, e.urgency) for e in table} == {("r", 1.0), ("s", DEFAULT)}
    assert ("annotation", "bad_route_name") in codes(problems)
    named = [p for p in problems if p.code == "bad_route_name"]
    assert any(bad_key in p.reason and "not a string" in p.reason for p in named), named
    assert all("VirtualService shop/a" in str(p) for p in problems)


@pytest.mark.parametrize("name", [["list"], {"a": 1}, 7, 1.5, True])
def test_a_route_name_that_is_not_a_string_skips_that_route_only(name):
    doc = vs("a", ["good"], {ROUTES: "good: latency"})
    doc["spec"]["http"].insert(0, {"name": name, "route": []})
    table, problems = urgencies(doc)
    assert [(e.route, e.urgency) for e in table] == [("good", 1.0)]
    assert codes(problems) == {("virtualservice", "bad_route_name")}
    assert "spec.http[0].name must be a string" in problems[0].reason


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"kind": "VirtualService", "metadata": ["x"], "spec": {"http": [{"name": "r"}]}}, "metadata must be"),
        ({"metadata": {"name": "a", "annotations": "x"}, "spec": {"http": [{"name": "r"}]}}, "annotations must be"),
        ({"metadata": {"name": "a"}, "spec": "nope"}, "spec must be a mapping"),
        ({"metadata": {"name": "a"}, "spec": {"http": {"name": "r"}}}, "spec.http must be a list"),
        ("not even a mapping", "the resource must be a mapping"),
    ],
)
def test_a_malformed_virtual_service_is_reported_not_raised(doc, reason):
    _table, problems = urgencies(doc)
    assert any(p.code == "malformed" and reason in p.reason for p in problems), problems


def test_an_alias_bomb_annotation_is_refused_at_once():
    started = time.monotonic()
    table, problems = urgencies(vs("a", ["r"], {ROUTES: ALIAS_BOMB}))
    assert time.monotonic() - started < 1.0
    assert [(e.route, e.urgency) for e in table] == [("r", DEFAULT)]
    assert codes(problems) == {("annotation", "alias")}
    assert "aliases" in problems[0].reason and len(str(problems[0])) < 300


def test_a_huge_or_deep_annotation_is_refused_before_yaml_reads_it():
    _t, problems = urgencies(vs("a", ["r"], {ROUTES: "r: 0.1\n" + "#" * MAX_ANNOTATION_CHARS}))
    assert codes(problems) == {("annotation", "too_large")}
    _t, problems = urgencies(vs("a", ["r"], {ROUTES: "r: " + "[" * 5000}))  # deeper than Python's recursion
    assert codes(problems) == {("annotation", "too_deep")}
    _t, problems = urgencies(vs("a", ["r"], {ROUTES: {"r": 0.1}}))  # a mapping, not the string Kubernetes stores
    assert codes(problems) == {("annotation", "not_a_string")}


def test_messages_about_huge_values_stay_short():
    huge = "r: [" + ", ".join(["1"] * 3000) + "]"
    _t, problems = urgencies(vs("a", ["r"], {ROUTES: huge, "dapb.io/urgency": "fast" * 25_000}))
    assert codes(problems) == {("annotation", "bad_value")}
    assert all(len(str(p)) < 300 for p in problems), [len(str(p)) for p in problems]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    metadata=st.one_of(json_values, st.fixed_dictionaries({"name": json_values, "annotations": json_values})),
    annotation=st.one_of(json_values, st.text(max_size=200)),
    http=st.one_of(json_values, st.lists(st.one_of(json_values, st.fixed_dictionaries({"name": json_values})))),
)
def test_any_shape_of_virtual_service_gives_an_answer(metadata, annotation, http):
    if isinstance(metadata, dict):
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            annotations[ROUTES] = annotation
    table, problems = urgencies({"kind": "VirtualService", "metadata": metadata, "spec": {"http": http}})
    assert all(isinstance(e.route, str) and 0.0 <= e.urgency <= 1.0 for e in table)
    assert all(len(str(p)) < 600 and p.source and p.code for p in problems)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_route_urgency_text_gives_an_answer(text):
    table, problems = urgencies(vs("a", ["r"], {ROUTES: text}))
    assert [e.route for e in table] == ["r"]
    assert all(p.source == "annotation" for p in problems)


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"kind: VirtualService\nmetadata: {name: \xff\xfe}\n", "not_utf8"),
        (b"kind: [unclosed\n", "not_yaml"),
        (b"when: 2001-13-45\n", "not_yaml"),  # PyYAML raises ValueError, not YAMLError, for an impossible date
        (b"n: " + b"9" * 5000 + b"\n", "not_yaml"),  # ValueError: past Python's int digit limit
        (b"a: " + b"[" * 100_000 + b"\n", "too_deep"),  # RecursionError in PyYAML's composer
    ],
)
def test_a_bad_file_is_refused_with_a_named_reason(tmp_path, content, code):
    (tmp_path / "bad.yaml").write_bytes(content)
    (tmp_path / "good.yaml").write_text(json.dumps(vs("a", ["r"])))
    found, problems = load_directory(tmp_path)
    assert [d["metadata"]["name"] for d in found] == ["a"]
    assert codes(problems) == {("file", code)} and "bad.yaml" in problems[0].resource


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_any_bytes_in_a_watched_file_give_an_answer(tmp_path, data):
    path = tmp_path / "any.yaml"
    path.write_bytes(data)
    found, problems = load_file(path)
    assert all(isinstance(d, dict) for d in found)
    assert all(p.source == "file" for p in problems)


def test_an_unreadable_file_keeps_its_last_readable_version_until_removed(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(json.dumps(vs("a", ["r"])))
    source = DirectorySource(tmp_path)
    version, found, problems = source.poll()
    assert [d["metadata"]["name"] for d in found] == ["a"] and problems == []
    path.write_bytes(b"kind: VirtualService\n\xff\xfe\xfd")  # half written, or not UTF-8
    version2, found, problems = source.poll()
    assert version2 > version and [d["metadata"]["name"] for d in found] == ["a"]
    assert codes(problems) == {("file", "not_utf8")} and "keeping its last readable version" in problems[0].reason
    path.unlink()
    _v, found, problems = source.poll()
    assert found == [] and problems == []


def test_a_kubernetes_object_with_odd_metadata_does_not_stop_the_watch():
    from kubernetes import client

    from dapb_mesh.mesh.sources import KubernetesSource

    source = KubernetesSource(client.ApiClient())  # not started: _apply is what the watch loop calls per event
    source._apply(event=("ADDED", {"metadata": ["not", "a", "mapping"]}))
    source._apply(event=("ADDED", {"metadata": {"name": ["x"], "namespace": 5}}))
    source._apply(event=("ADDED", vs("a", ["r"])))
    assert len(source.poll()[1]) == 3


def write_vs(path: Path, doc: dict) -> None:
    replace_file(path, json.dumps(doc).encode())


def replace_file(path: Path, data: bytes) -> None:
    """Atomically, as a ConfigMap update does: the watch never sees the file half written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_the_companion_watch_survives_every_hostile_input_and_keeps_the_rest(tmp_path):
    """The watch thread against a directory a tenant keeps breaking: each bad input is logged and counted once,
    the other VirtualServices keep their urgencies, and a good change afterwards still arrives."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write_vs(a, vs("a", ["r1", "r2"], {ROUTES: "r1: throughput"}))
    write_vs(b, vs("b", ["q"], {ROUTES: "q: latency"}))
    companion = Companion(f"unix:{tmp_path}/absent.sock", "node", tmp_path, poll_s=0.02, backoff_max_s=0.5)
    companion.state.routes = {  # the proxy's routes, as ADS would give them (no control plane here)
        "r1": XdsRoute("r1", "shop/a"),
        "r2": XdsRoute("r2", "shop/a"),
        "q": XdsRoute("q", "shop/b"),
        "x": XdsRoute("x", "shop/c"),
    }
    companion.start()
    watch = next(t for t in companion._threads if t.name == "companion-_watch_source")
    try:
        assert wait_until(lambda: companion.state.table == {"r1": 0.0, "r2": DEFAULT, "q": 1.0})

        write_vs(b, vs("b", ["q"], {ROUTES: "1: 0.5\nzz: 0.2\nq: latency"}))
        assert wait_until(lambda: companion.rejected_inputs[("annotation", "bad_route_name")] == 1)
        assert companion.rejected_inputs[("annotation", "unknown_route")] == 1
        assert companion.state.table == {"r1": 0.0, "r2": DEFAULT, "q": 1.0}

        write_vs(b, vs("b", ["q"], {ROUTES: "~: 0.5\nq: latency"}))
        assert wait_until(lambda: companion.rejected_inputs[("annotation", "bad_route_name")] == 2)

        replace_file(b, b"kind: VirtualService\nmetadata: {name: b, namespace: shop}\n\xff\xfe")
        assert wait_until(lambda: companion.rejected_inputs[("file", "not_utf8")] == 1)
        assert companion.state.table == {"r1": 0.0, "r2": DEFAULT, "q": 1.0}  # b's last readable version stays

        c = vs("c", ["x"], {ROUTES: "x: latency"})
        c["spec"]["http"].append({"name": ["a", "list"], "route": []})
        write_vs(tmp_path / "c.yaml", c)
        assert wait_until(lambda: companion.rejected_inputs[("virtualservice", "bad_route_name")] == 1)
        assert wait_until(lambda: companion.state.table.get("x") == 1.0)

        write_vs(b, vs("b", ["q"], {ROUTES: ALIAS_BOMB}))
        assert wait_until(lambda: companion.rejected_inputs[("annotation", "alias")] == 1)
        assert wait_until(lambda: companion.state.table.get("q") == DEFAULT)  # b read again: q has no value now

        write_vs(a, vs("a", ["r1", "r2"], {ROUTES: "r1: throughput\nr2: latency"}))
        assert wait_until(lambda: companion.state.table.get("r2") == 1.0)  # the watch still runs
        assert watch.is_alive()
        # each problem counted once, however many rebuilds it lasted through
        assert companion.rejected_inputs[("annotation", "alias")] == 1
        assert companion.rejected_inputs[("virtualservice", "bad_route_name")] == 1
    finally:
        companion.stop()


def test_a_virtual_service_that_breaks_the_parser_keeps_its_last_good_routes(tmp_path, monkeypatch, caplog):
    """Whatever urgencies() may one day raise for one VirtualService, the others are read and the watch goes on."""
    import dapb_mesh.mesh.companion as companion_module

    write_vs(tmp_path / "a.yaml", vs("a", ["r"], {ROUTES: "r: throughput"}))
    write_vs(tmp_path / "b.yaml", vs("b", ["q"], {ROUTES: "q: latency"}))
    companion = Companion("unix:absent", "node", tmp_path)
    companion.state.routes = {"r": XdsRoute("r", "shop/a"), "q": XdsRoute("q", "shop/b")}
    companion._read_virtual_services()
    assert companion.state.table == {"r": 0.0, "q": 1.0}

    real = companion_module.urgencies

    def breaks_on_b(doc, default):
        if doc["metadata"]["name"] == "b":
            raise TypeError("'<' not supported between instances of 'str' and 'int'")
        return real(doc, default)

    monkeypatch.setattr(companion_module, "urgencies", breaks_on_b)
    write_vs(tmp_path / "a.yaml", vs("a", ["r"], {ROUTES: "r: 0.25"}))
    write_vs(tmp_path / "b.yaml", vs("b", ["q"], {ROUTES: "q: 0.75"}))
    with caplog.at_level(logging.WARNING, "dapb.companion"):
        companion._read_virtual_services()
    assert companion.state.table == {"r": 0.25, "q": 1.0}  # a's change applied, b's last good value kept
    assert companion.rejected_inputs == {("virtualservice", "unreadable"): 1}
    assert "VirtualService shop/b" in caplog.text and "TypeError" in caplog.text
    write_vs(tmp_path / "a.yaml", vs("a", ["r"], {ROUTES: "r: 0.5"}))
    companion._read_virtual_services()  # the same problem again: not counted again
    assert companion.state.table == {"r": 0.5, "q": 1.0}
    assert companion.rejected_inputs == {("virtualservice", "unreadable"): 1}


def test_a_failing_source_is_counted_once_and_the_watch_goes_on(tmp_path):
    class FlakySource:
        def __init__(self):
            self.calls = 0

        def poll(self):
            self.calls += 1
            if self.calls <= 5:
                raise TypeError("a source bug")
            return 1, [vs("a", ["r"], {ROUTES: "r: latency"})], []

    source = FlakySource()
    companion = Companion("unix:absent", "node", source, poll_s=0.01)  # type: ignore[arg-type]
    companion.state.routes = {"r": XdsRoute("r", "shop/a")}
    thread = threading.Thread(target=companion._watch_source, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: companion.state.table == {"r": 1.0})
        assert source.calls > 5 and thread.is_alive()
        assert companion.rejected_inputs == {("source", "TypeError"): 1}
    finally:
        companion._stop.set()
        thread.join(timeout=2)


# -- 2. SIGHUP ----------------------------------------------------------------------------------------------------


def dry_agent(tmp_path: Path, config: Path, **agent) -> Agent:
    settings = parse_settings({"agent": {"store": str(tmp_path / "history.db"), "instance": "dry", **agent}})
    return Agent(settings, dry_run=True, config_path=config)


def test_a_non_utf8_config_file_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "dapb.yaml"
    path.write_bytes(b"agent:\n  instance: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"dapb\.yaml: not UTF-8"):
        load_settings(path)


@pytest.mark.parametrize(
    "content",
    [
        b"agent:\n  instance: \xff\xfe\n",  # UnicodeDecodeError used to escape the SIGHUP handler
        b"policy:\n  b_max_bytes: " + b"9" * 5000 + b"\n",  # PyYAML's ValueError, not a ConfigError
        b"policy: [unclosed\n",
    ],
)
def test_sighup_with_a_bad_file_keeps_the_running_configuration(tmp_path, content, caplog):
    path = tmp_path / "dapb.yaml"
    path.write_bytes(content)
    agent = dry_agent(tmp_path, path)
    running = agent.settings
    with caplog.at_level(logging.ERROR, "dapb.agent"):
        assert agent.reload() is False
    assert agent.settings is running and agent.aggregator.settings is running
    assert agent.reloads == {"ok": 0, "rejected": 1}
    assert "keeping the running one" in caplog.text


def test_sighup_never_raises_whatever_fails(tmp_path, monkeypatch):
    path = tmp_path / "dapb.yaml"
    path.write_text("agent:\n  default_sensitivity: latency\n  receiver_ports: [15006, 9000]\n")
    agent = dry_agent(tmp_path, path)
    running = agent.settings

    class BrokenDatapath:  # the kernel refusing a rule (the real datapath needs root)
        def __init__(self):
            self.ports: list[int] = []

        def set_port_rules(self, rules):
            if 9000 in rules:
                raise OSError(28, "No space left on device")
            self.ports = list(rules)

        def set_dscp_class(self, _dscp, _cls):
            pass

        def set_guard(self, _uid, _peers):
            pass

    agent.datapath = BrokenDatapath()
    assert agent.reload() is False
    assert agent.settings is running and agent.reloads["rejected"] == 1
    assert agent.datapath.ports[-1] == 15006  # the running rules written again after the half-written new ones
    agent.datapath = None
    monkeypatch.setattr("dapb_mesh.agent.load_settings", lambda _path: 1 / 0)
    assert agent.reload() is False and agent.reloads["rejected"] == 2 and agent.settings is running


def test_sighup_cannot_change_fields_read_only_at_start(tmp_path, caplog):
    path = tmp_path / "dapb.yaml"
    path.write_text(
        f"agent:\n  store: {tmp_path / 'other.db'}\n  instance: other\n  default_sensitivity: latency\n"
        "kernel:\n  bpffs: /elsewhere\n"
    )
    agent = dry_agent(tmp_path, path)
    with caplog.at_level(logging.WARNING, "dapb.agent"):
        assert agent.reload() is True
    assert agent.settings.agent.default_sensitivity == "latency"  # applied
    assert agent.settings.agent.store == tmp_path / "history.db" and agent.settings.agent.instance == "dry"
    assert agent.settings.kernel.bpffs == Path("/sys/fs/bpf")
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("agent.store", "agent.instance", "kernel.bpffs"):
        assert name in warning
    assert "configuration reloaded" in warning and "restart" in warning


# -- 3. Models ----------------------------------------------------------------------------------------------------


def onnx_model(
    tmp_path: Path,
    name: str,
    nodes: list,
    *,
    input_shape: list | tuple | None = ("N", 4),
    output_shape: list | None = None,
    input_type: int | None = None,
    extra_inputs: tuple = (),
) -> Path:
    """A small real ONNX graph over 'features' (the serving input name) with one output 'out'."""
    from onnx import TensorProto, checker, helper

    constants = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
        helper.make_tensor("three", TensorProto.INT64, [1], [3]),
        helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("col0", TensorProto.INT64, [], [0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
    ]
    inputs = [
        helper.make_tensor_value_info(
            "features", input_type or TensorProto.FLOAT, None if input_shape is None else list(input_shape)
        ),
        *(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in extra_inputs),
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, name, inputs, [output], [c for c in constants if c.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if input_shape is not None and output_shape is not None:  # the checker wants declared shapes; ORT does not
        checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def first_two_columns(source: str = "features", out: str = "out", end: str = "two") -> list:
    from onnx import TensorProto, helper

    return [
        helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["as_float", "zero", end, "last"], [out]),
    ]


def mean_row() -> list:
    from onnx import helper

    return [
        helper.make_node("ReduceMean", ["features"], ["mean"], axes=[0], keepdims=1),
        *first_two_columns("mean"),
    ]


def wrong_models(tmp_path: Path) -> list[tuple[Path, str]]:
    from onnx import TensorProto, helper

    return [
        (onnx_model(tmp_path, "fixed_1x2", mean_row(), output_shape=[1, 2]), "fixes the batch size at 1"),
        (onnx_model(tmp_path, "shapeless_1x2", mean_row(), input_shape=None), "probe batch of 3 rows"),  # run to see
        (
            onnx_model(
                tmp_path,
                "two_inputs",
                [*first_two_columns(out="cols"), helper.make_node("Add", ["cols", "extra"], ["out"])],
                output_shape=["N", 2],
                extra_inputs=("extra",),
            ),
            "expects one input 'features'",
        ),
        (onnx_model(tmp_path, "rank1", first_two_columns(), input_shape=[4], output_shape=[2]), "1 dimensions"),
        (onnx_model(tmp_path, "fixed_batch", first_two_columns(), input_shape=[1, 4]), "fixes the batch size"),
        (
            onnx_model(tmp_path, "double", first_two_columns(), input_type=TensorProto.DOUBLE, output_shape=["N", 2]),
            "not tensor(float)",
        ),
        (
            onnx_model(tmp_path, "three_columns", first_two_columns(end="three"), output_shape=["N", 3]),
            "3 columns, not 2",
        ),
    ]


def test_wrongly_shaped_models_are_refused_at_load_with_the_reason(tmp_path, caplog):
    for path, reason in wrong_models(tmp_path):
        with pytest.raises(ModelError) as refused:
            OnnxPredictor(path)
        assert path.name in str(refused.value) and reason in str(refused.value), (path.name, str(refused.value))
        caplog.clear()
        with caplog.at_level(logging.ERROR, "dapb.predictor"):
            assert load_predictor(path) is None
        assert "predictor disabled, using the formula" in caplog.text and reason in caplog.text


def test_a_model_of_unknown_declared_shape_that_serves_one_row_per_row_is_accepted(tmp_path):
    path = onnx_model(tmp_path, "shapeless", first_two_columns(), input_shape=None, output_shape=None)
    predictor = OnnxPredictor(path)
    assert len(predictor.predict(np.ones((3, 4), dtype=np.float32), Settings().policy)) == 3


def test_agent_with_a_fixed_output_model_decides_by_formula_from_its_first_tick(tmp_path):
    path = onnx_model(tmp_path, "fixed_1x2", mean_row(), output_shape=[1, 2])
    s = parse_settings({"agent": {"use_predictor": True, "model": str(path), "store": str(tmp_path / "h.db")}})
    agent = Agent(s, dry_run=True)
    agent.start()
    try:
        assert agent.predictor is None
        agent.tick(columns_from_samples([]))
        sources = {src for (_, src) in agent.decision_counts}
        assert "formula" in sources and "prediction" not in sources and "fallback" not in sources
    finally:
        agent.stop()


def test_predictions_of_the_wrong_length_at_run_time_fall_back(tmp_path, caplog):
    """A real model whose row count depends on the data: it keeps only rows with RTT above 0.5 ms, so the probe
    (1 ms) passes and an idle mesh's rows (0 ms) come back as none. The agent's tick must not crash on it."""
    from onnx import helper

    nodes = [
        helper.make_node("Gather", ["features", "col0"], ["rtt"], axis=1),
        helper.make_node("Greater", ["rtt", "half"], ["busy"]),
        helper.make_node("Compress", ["features", "busy"], ["kept"], axis=0),
        *first_two_columns("kept"),
    ]
    path = onnx_model(tmp_path, "data_dependent", nodes, output_shape=["M", 2])
    with pytest.raises(ModelError, match="for 3 rows"):
        OnnxPredictor(path).predict(as_matrix([[0.0, 0.0, 0.0, 0.0]] * 3), Settings().policy)
    s = parse_settings({"agent": {"use_predictor": True, "model": str(path), "store": str(tmp_path / "h.db")}})
    agent = Agent(s, dry_run=True)
    with caplog.at_level(logging.ERROR, "dapb.agent"):
        agent.start()  # decides once at start: an idle mesh, so the model returns no rows
        try:
            assert agent.predictor is not None
            agent.tick(columns_from_samples([]))
        finally:
            agent.stop()
    assert "predictor failed" in caplog.text
    assert "prediction" not in {src for (_, src) in agent.decision_counts}


# -- 4. History ---------------------------------------------------------------------------------------------------


def usable(store: HistoryStore) -> None:
    store.record_outcome(Outcome("default", 0.1, 1, 2, 3, 0))
    assert store.count("outcomes") == 1 and store.recent("outcomes")[0]["class"] == "default"


def set_aside(path: Path) -> list[Path]:
    """The moved-aside databases (not their journal files)."""
    moved = path.parent.glob(f"{path.name}.corrupt-*")
    return sorted(p for p in moved if not p.name.endswith(("-wal", "-shm", "-journal")))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=100, max_size=8192), st.booleans())
def test_a_history_of_random_bytes_is_moved_aside_and_a_fresh_one_starts(data, sqlite_header):
    if sqlite_header:
        data = b"SQLite format 3\x00" + data  # the header of an SQLite file, the rest garbage
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.db"
        path.write_bytes(data)
        store = HistoryStore(path)
        try:
            usable(store)
        finally:
            store.close()
        moved = set_aside(path)
        if not sqlite_header:
            assert len(moved) == 1
        if moved:
            assert moved[0].read_bytes() == data  # kept as it was, for a post-mortem


def test_a_history_of_another_schema_is_moved_aside_with_the_reason(tmp_path, caplog):
    path = tmp_path / "history.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    db.execute("INSERT INTO decisions (payload) VALUES (x'00')")
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR, "dapb.store"):
        store = HistoryStore(path)
    usable(store)
    store.close()
    assert len(set_aside(path)) == 1
    assert "table decisions lacks columns ts, class" in caplog.text and ".corrupt-" in caplog.text


def test_a_history_missing_a_column_is_moved_aside_and_keeps_its_rows(tmp_path, caplog):
    path = tmp_path / "history.db"
    store = HistoryStore(path)
    store.record_outcome(Outcome("throughput", 0.1, 1, 2, 3, 0, rtt_ms=1.0))
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE outcomes DROP COLUMN rtt_ms")
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR, "dapb.store"):
        store = HistoryStore(path)
    usable(store)
    store.close()
    [moved] = set_aside(path)
    assert "table outcomes lacks column rtt_ms" in caplog.text
    old = sqlite3.connect(moved)
    assert old.execute("SELECT class FROM outcomes").fetchall() == [("throughput",)]
    old.close()


@pytest.mark.parametrize(("value", "moved"), [("two", True), ("0", True), (str(SCHEMA_VERSION + 1), False)])
def test_a_history_schema_version_that_is_not_ours(tmp_path, value, moved):
    path = tmp_path / "history.db"
    HistoryStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    db.commit()
    db.close()
    if moved:  # garbage: moved aside
        store = HistoryStore(path)
        usable(store)
        store.close()
        assert len(set_aside(path)) == 1
    else:  # a newer dapb's history is not corrupt: refused by name, left in place
        with pytest.raises(StoreError, match=f"schema version {value}, this dapb reads {SCHEMA_VERSION}"):
            HistoryStore(path)
        assert set_aside(path) == []


def test_corruption_found_by_a_write_moves_the_history_aside_and_recording_goes_on(tmp_path, caplog):
    path = tmp_path / "history.db"
    store = HistoryStore(path)
    for _ in range(5000):
        store.record_outcome(Outcome("default", 0.1, 1, 2, 3, 0))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    last_schema_page = store.db.execute("SELECT MAX(rootpage) FROM sqlite_master").fetchone()[0]
    page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
    store.close()
    data = bytearray(path.read_bytes())
    start = last_schema_page * page_size  # every page after the schema's roots: the outcomes table's rows
    data[start:] = np.random.default_rng(3).bytes(len(data) - start)
    path.write_bytes(bytes(data))
    store = HistoryStore(path)
    assert set_aside(path) == []  # opening reads only the schema: the damage is not seen yet
    with caplog.at_level(logging.ERROR, "dapb.store"):
        store.record_outcome(Outcome("default", 0.1, 1, 2, 3, 0))
    assert store.count("outcomes") == 1 and len(set_aside(path)) == 1
    assert "malformed" in caplog.text
    store.close()


def test_dapb_history_on_a_corrupt_file_answers_without_a_traceback(tmp_path):
    path = tmp_path / "history.db"
    path.write_bytes(os.urandom(4096))
    out = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "history", "--store", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert json.loads(out.stdout) == [] and len(set_aside(path)) == 1


def test_filter_entries_the_filter_cannot_take_are_counted_once_and_exported(tmp_path):
    """A route name the filter cannot hold (over its byte limit) is left out of the published configuration,
    counted once in dapb_rejected_inputs_total{source="filter_config"} however often it is published, and the
    other routes go on."""
    from types import SimpleNamespace

    from dapb_mesh.exporter import AgentCollector
    from dapb_mesh.mesh.filter_config import MAX_ROUTE_NAME_BYTES

    agent = dry_agent(tmp_path, tmp_path / "none.yaml")
    long_name = "r" * (MAX_ROUTE_NAME_BYTES + 1)
    agent.companion = SimpleNamespace(
        state=SimpleNamespace(table={long_name: 0.9, "checkout": 0.8}), rejected_inputs=Counter()
    )
    for _ in range(3):
        published = json.loads(agent.filter_config())
    assert "route:checkout" in published and f"route:{long_name}" not in published
    assert agent.rejected_inputs == {("filter_config", "name_too_long"): 1}
    agent.companion = None  # the agent's own count is exported with or without a companion
    (family,) = [m for m in AgentCollector(agent).collect() if m.name == "dapb_rejected_inputs"]
    assert {(s.labels["source"], s.labels["reason"], s.value) for s in family.samples if s.name.endswith("_total")} == {
        ("filter_config", "name_too_long", 1)
    }
