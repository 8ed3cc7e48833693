"""Configuration: defaults work, units convert, bad input names the field and the value."""

import pytest

from dapb_mesh.config import ConfigError, Settings, load_settings, parse_settings


def test_defaults_are_valid_and_ordered():
    s = Settings()
    assert s.policy.b_min_bytes <= s.policy.static_buffer_bytes <= s.policy.b_max_bytes
    assert s.policy.t_base_ms <= s.policy.static_timeout_ms <= s.policy.t_max_ms


def test_strings_with_units_are_converted():
    s = parse_settings({"policy": {"b_max_bytes": "32KiB", "t_max_ms": "0.1s", "t_base_ms": "500us"}})
    assert s.policy.b_max_bytes == 32768
    assert s.policy.t_max_ms == pytest.approx(100.0)
    assert s.policy.t_base_ms == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("data", "field", "value"),
    [
        ({"policy": {"b_min_bytes": -1}}, "policy.b_min_bytes", "-1"),
        ({"policy": {"t_base_ms": "5KiB"}}, "policy.t_base_ms", "5KiB"),
        ({"policy": {"b_max_bytes": "10ms"}}, "policy.b_max_bytes", "10ms"),
        ({"policy": {"bmax": 10}}, "policy.bmax", "10"),
        ({"policy": {"u_threshold": 1.5}}, "policy.u_threshold", "1.5"),
        ({"policy": {"alpha_bytes_per_ms": float("nan")}}, "policy.alpha_bytes_per_ms", "nan"),
        ({"kernel": {"tick_ms": 0}}, "kernel.tick_ms", "0"),
    ],
)
def test_bad_values_name_field_and_value(data, field, value):
    with pytest.raises(ConfigError) as caught:
        parse_settings(data)
    assert field in str(caught.value)
    assert value in str(caught.value)


def test_b_min_above_b_max_is_rejected_with_both_values():
    with pytest.raises(ConfigError) as caught:
        parse_settings({"policy": {"b_min_bytes": 4096, "b_max_bytes": 1024, "static_buffer_bytes": 2048}})
    message = str(caught.value)
    assert "b_min_bytes (4096)" in message and "b_max_bytes (1024)" in message


def test_yaml_file_then_environment(tmp_path):
    path = tmp_path / "dapb.yaml"
    path.write_text("policy:\n  b_max_bytes: 8KiB\n  alpha_bytes_per_ms: 10\n")
    s = load_settings(path, environ={"DAPB_POLICY__ALPHA_BYTES_PER_MS": "20", "UNRELATED": "x"})
    assert s.policy.b_max_bytes == 8192
    assert s.policy.alpha_bytes_per_ms == 20


def test_bad_environment_value_is_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"DAPB_POLICY__T_MAX_MS": "fast"})
    assert "policy.t_max_ms" in str(caught.value) and "environment" in str(caught.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "dapb.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(path, environ={})


def test_configuration_reference_in_docs_is_current():
    from pathlib import Path

    from dapb_mesh.config import settings_reference

    doc = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == settings_reference(), "regenerate: dapb config reference > docs/configuration.md"


@pytest.mark.parametrize(
    "agent, named",
    [
        ({"throughput": {"ports": [8080]}, "latency": {"ports": [8080]}}, "agent.throughput.ports and agent.latency"),
        ({"latency": {"ports": [15006]}}, "agent.latency.ports and agent.receiver_ports"),
    ],
)
def test_a_port_takes_one_class(agent, named):
    """The kernel's port map holds one class per port: a port named twice is refused, naming both places."""
    with pytest.raises(ConfigError, match=named):
        parse_settings({"agent": agent})
