"""Issue 14, hostile input never breaks the mesh: T_max bounds what is enforced, a configuration is refused with
a ConfigError naming the field and value (never a traceback, a hang or a wrapped kernel value), and RFC 9218
priority headers are read as RFC 8941 Dictionaries. Pure: no root, no kernel, no Envoy."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dapb_mesh.config import U32_MAX, ConfigError, Settings, load_settings, parse_settings, split_listen
from dapb_mesh.kernel.layout import ClassPolicy
from dapb_mesh.policy import Conditions, Prediction, Sensitivity, decide, enforced_timeout


def dapb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dapb_mesh.cli", *args], capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    """The CLI's error console wraps long lines: compare messages with the whitespace folded."""
    return " ".join(text.split())


# --- 1. T_max is a ceiling on the enforced bound -------------------------------------------------------------------


def test_high_rtt_throughput_is_enforced_within_t_max():
    s = Settings()
    d = decide(Conditions(rtt_ms=100, loss=0, jitter_ms=0), Sensitivity.THROUGHPUT, s.policy, s.kernel)
    # T(t) = 2 + 0.5 * 100 = 52 -> 50; the kernel would enforce 52 + 4 = 56: T goes down to 44, T_eff = 48
    assert d.knobs.enforcer == "kernel"
    assert d.enforced_timeout_ms == 48.0 and d.timeout_ms == 44.0
    assert d.knobs.ack_bound_ms == d.enforced_timeout_ms <= s.policy.t_max_ms
    assert "rounded down" in d.reason


def test_default_throughput_class_still_gets_the_12_ms_bound():
    s = Settings()
    d = decide(Conditions(rtt_ms=0.1, loss=0, jitter_ms=0), Sensitivity.THROUGHPUT, s.policy, s.kernel)
    assert d.enforced_timeout_ms == 12.0 and "rounded down" not in d.reason


def test_t_max_at_the_kernel_floor_is_kept_exactly():
    s = parse_settings({"policy": {"t_max_ms": 12}})
    d = decide(Conditions(rtt_ms=100, loss=0.5, jitter_ms=50), Sensitivity.THROUGHPUT, s.policy, s.kernel)
    assert d.enforced_timeout_ms == 12.0


@pytest.mark.parametrize(
    ("data", "shortest"),
    [
        ({"policy": {"t_max_ms": 10}}, "12.0"),  # floor 8 + DELACK_MAX's extra 4
        ({"policy": {"t_max_ms": 7.9, "static_timeout_ms": 5}, "kernel": {"ack_bound": "rto_min"}}, "8.0"),
        ({"kernel": {"delack_floor_ms": 48}}, "52.0"),  # the default T_max, 50, is below it
    ],
)
def test_t_max_below_the_kernel_floor_is_refused(data, shortest):
    with pytest.raises(ConfigError) as caught:
        parse_settings(data)
    message = str(caught.value)
    assert "t_max_ms" in message and "delack_floor_ms" in message and shortest in message


def test_rto_min_lets_a_10_ms_t_max_through_and_keeps_it():
    s = parse_settings({"policy": {"t_max_ms": 10}, "kernel": {"ack_bound": "rto_min"}})
    d = decide(Conditions(rtt_ms=100, loss=0, jitter_ms=0), Sensitivity.THROUGHPUT, s.policy, s.kernel)
    assert d.enforced_timeout_ms == 8.0 and d.timeout_ms == 8.0


def test_the_filter_hold_stays_within_t_max():
    s = parse_settings({"policy": {"t_max_ms": 20, "filter_min_hold_ms": 30}})
    d = decide(Conditions(0.1, 0, 0), Sensitivity.THROUGHPUT, s.policy, s.kernel, offered_bytes_per_s=1000.0)
    assert d.knobs.enforcer == "filter"
    assert d.enforced_timeout_ms == 20.0 and d.filter_hold[1] <= 20


def test_a_policy_and_kernel_no_validation_paired_never_hold_past_t_max():
    s = Settings()
    tight = s.policy.model_copy(update={"t_max_ms": 5.0, "static_timeout_ms": 2.0})  # skips the Settings check
    d = decide(Conditions(100, 0, 0), Sensitivity.THROUGHPUT, tight, s.kernel)
    assert d.enforced_timeout_ms is None and d.knobs.nodelay and "exceeds T_max" in d.reason


@st.composite
def valid_settings(draw) -> Settings:
    """Any settings a user could write that the validation must accept: built to satisfy every documented rule."""
    tick = draw(st.floats(1, 20))
    floor = draw(st.floats(tick, 60))
    extra = draw(st.floats(0, 20))
    ack_bound = draw(st.sampled_from(["delack_max", "rto_min"]))
    shortest = floor + (extra if ack_bound == "delack_max" else 0.0)
    t_max = draw(st.floats(shortest, 2000))
    t_base = draw(st.floats(0, t_max))
    b_min = draw(st.integers(0, 4096))
    b_max = draw(st.integers(b_min, 1 << 20))
    weights = st.floats(0, 1e6)
    data = {
        "kernel": {"tick_ms": tick, "delack_floor_ms": floor, "delack_max_extra_ms": extra, "ack_bound": ack_bound},
        "policy": {
            "b_min_bytes": b_min,
            "b_max_bytes": b_max,
            "static_buffer_bytes": draw(st.integers(b_min, b_max)),
            "min_hold_bytes": draw(st.integers(0, 4096)),
            "t_base_ms": t_base,
            "t_max_ms": t_max,
            "static_timeout_ms": draw(st.floats(t_base, t_max)),
            "filter_min_hold_ms": draw(st.floats(1, 1000)),
            "alpha_bytes_per_ms": draw(weights),
            "beta_bytes_per_loss": draw(weights),
            "gamma_bytes_per_ms": draw(weights),
            "delta": draw(weights),
            "epsilon_ms_per_loss": draw(weights),
            "xi": draw(weights),
        },
    }
    return parse_settings(data)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
conditions = st.builds(
    Conditions,
    rtt_ms=st.floats(0, 10_000),
    loss=st.floats(0, 1),
    jitter_ms=st.floats(0, 10_000),
)
predictions = st.none() | st.builds(
    Prediction, buffer_bytes=finite_or_not, confidence=finite_or_not, timeout_ms=st.none() | finite_or_not
)


@given(
    valid_settings(),
    conditions,
    st.sampled_from(list(Sensitivity)),
    finite_or_not,
    st.booleans(),
    predictions,
    st.none() | st.floats(0, 1e9),
)
@settings(max_examples=400, deadline=None)
def test_no_decision_is_enforced_past_t_max(s, cond, sensitivity, urgency, use_predictor, prediction, offered):
    d = decide(
        cond,
        sensitivity,
        s.policy,
        s.kernel,
        urgency=urgency,
        use_predictor=use_predictor,
        prediction=prediction,
        offered_bytes_per_s=offered,
    )
    assert d.enforced_timeout_ms is None or d.enforced_timeout_ms <= s.policy.t_max_ms
    assert d.filter_hold[1] <= s.policy.t_max_ms
    assert "exceeds T_max" not in d.reason  # valid settings never lose the kernel path to the ceiling
    if d.knobs.enforcer == "kernel":
        # the kernel is asked for T = timeout_ms; what it enforces for that is what the decision reports
        assert d.enforced_timeout_ms == enforced_timeout(d.timeout_ms, s.kernel) == d.knobs.ack_bound_ms


def test_cli_explain_reports_a_bound_within_t_max_and_refuses_an_unkeepable_t_max(tmp_path):
    import json

    out = dapb("policy", "explain", "--rtt-ms", "100", "--sensitivity", "throughput", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["enforced_timeout_ms"] <= Settings().policy.t_max_ms
    config = tmp_path / "dapb.yaml"
    config.write_text("policy:\n  t_max_ms: 10\n")
    out = dapb("policy", "explain", "--rtt-ms", "100", "--sensitivity", "throughput", "--config", str(config))
    assert out.returncode == 2
    assert "t_max_ms (10.0)" in one_line(out.stderr) and "delack_floor_ms (8.0)" in one_line(out.stderr)


def test_cli_errors_keep_their_brackets(tmp_path):
    """Messages went through rich markup: "[t_base_ms, t_max_ms]" vanished from them."""
    config = tmp_path / "dapb.yaml"
    config.write_text("policy:\n  static_timeout_ms: 60\n")
    out = dapb("config", "check", str(config))
    assert out.returncode == 2 and "[t_base_ms, t_max_ms] = [2.0, 50.0]" in one_line(out.stderr)


# --- 2. Configuration values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e309", "1e400ms", "1e999s", "inf", "-inf ms", float("inf"), float("nan")])
def test_infinite_durations_are_refused_whatever_the_spelling(value):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"policy": {"t_max_ms": value}})
    assert "policy.t_max_ms" in str(caught.value)


def test_infinite_duration_from_yaml_and_environment_is_refused(tmp_path):
    path = tmp_path / "dapb.yaml"
    path.write_text("policy:\n  t_max_ms: 1e309\n")  # YAML 1.1 reads this as the string "1e309"
    with pytest.raises(ConfigError, match=r"policy\.t_max_ms = '1e309': must be a finite number"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"policy\.t_max_ms = '1e999': must be a finite number"):
        load_settings(None, environ={"DAPB_POLICY__T_MAX_MS": "1e999"})


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("policy", "b_max_bytes", 5_000_000_000),
        ("policy", "b_max_bytes", "5GB"),
        ("policy", "b_max_bytes", 1 << 24),  # the filter refuses a hold of 2^24 or more
        ("policy", "min_hold_bytes", 1 << 32),
        ("agent", "proxy_buffer_limit_bytes", "64MiB"),
        ("kernel", "mss_bytes", 0),
        ("kernel", "mss_bytes", 535),
        ("kernel", "mss_bytes", 65536),
        ("kernel", "tick_ms", 1e-300),
        ("kernel", "tick_ms", "500us"),
        ("policy", "t_max_ms", "61s"),  # the filter refuses a hold over 60 s
        ("policy", "b_max_bytes", "16MiB"),
        ("policy", "t_max_ms", 86_400_000),
    ],
)
def test_out_of_range_values_are_refused_naming_field_and_value(section, field, value):
    with pytest.raises(ConfigError) as caught:
        parse_settings({section: {field: value}})
    message = str(caught.value)
    assert f"{section}.{field}" in message and repr(value) in message


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("kernel", "mss_bytes", 536, 536),
        ("kernel", "mss_bytes", "8948B", 8948),  # jumbo frames
        ("kernel", "tick_ms", "1ms", 1.0),
        ("kernel", "mss_bytes", 65535, 65535),
        ("policy", "b_max_bytes", 16 * 1024 * 1024 - 1, 16 * 1024 * 1024 - 1),
    ],
)
def test_values_inside_the_bounds_are_accepted(section, field, value, expected):
    assert getattr(getattr(parse_settings({section: {field: value}}), section), field) == expected


def test_a_kernel_floor_under_one_tick_is_refused():
    with pytest.raises(ConfigError, match=r"delack_floor_ms \(8\.0\) must be at least one tick_ms \(10\.0\)"):
        parse_settings({"kernel": {"tick_ms": 10}})
    assert parse_settings({"kernel": {"tick_ms": 10, "delack_floor_ms": 20}}).kernel.tick_ms == 10  # CONFIG_HZ=100


BYTE_FIELDS = [
    ("policy", "b_min_bytes"),
    ("policy", "b_max_bytes"),
    ("policy", "static_buffer_bytes"),
    ("policy", "min_hold_bytes"),
    ("agent", "proxy_buffer_limit_bytes"),
]


@given(st.sampled_from(BYTE_FIELDS), st.integers(0, 2**40) | st.integers(-(2**40), -1))
def test_every_accepted_size_fits_its_u32_kernel_slot(field, value):
    section, name = field
    try:
        got = getattr(getattr(parse_settings({section: {name: value}}), section), name)
    except ConfigError:
        return
    assert 0 <= got <= U32_MAX
    assert ClassPolicy(buffer_bytes=got).buffer_bytes == got  # ctypes would wrap silently


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("policy:\n  b_max_bytes: 8KiB\n  b_max_bytes: 4KiB\n", "'b_max_bytes'"),
        ("policy:\n  t_max_ms: 40\nkernel: {}\npolicy:\n  t_max_ms: 30\n", "'policy'"),
        ("agent: {listen: '127.0.0.1:1', listen: '127.0.0.1:2'}\n", "'listen'"),
    ],
)
def test_duplicate_yaml_keys_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "dapb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "duplicate key" in str(caught.value) and key in str(caught.value)


def alias_bomb(levels: int = 9) -> str:
    lines = ['  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "policy:\n" + "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    out = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "alias" in out.stderr


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("# padding\n" * 120_000, "longer than"),
        ("policy: " + "[" * 100_000, "nested more than"),
        ("policy:\n  b_max_bytes: " + "9" * 5000 + "\n", "integer of 5000 characters"),
        ("policy:\n  b_max_bytes: " + ":".join(["59"] * 50_000) + "\n", "integer of"),  # base 60: quadratic
        ("base: &b {b_max_bytes: 1}\npolicy:\n  <<: *b\n", "alias"),
    ],
)
def test_oversized_deep_or_aliased_yaml_is_a_config_error(tmp_path, text, why):
    path = tmp_path / "dapb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    "environ",
    [
        {"DAPB_POLICY__B_MAX_BYTES__X": "1"},
        {"DAPB_POLICY__B_MAX_BYTES": "5", "DAPB_POLICY__B_MAX_BYTES__X": "1"},
        {"DAPB_POLICY__B_MAX_BYTES__X": "1", "DAPB_POLICY__B_MAX_BYTES": "5"},
    ],
)
def test_an_environment_path_below_a_value_names_the_variable(environ):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ=environ)
    message = str(caught.value)
    assert "DAPB_POLICY__B_MAX_BYTES__X" in message and "policy.b_max_bytes is a value" in message


def test_an_environment_value_and_a_section_below_it_conflict_by_name():
    with pytest.raises(ConfigError, match=r"agent\.throughput is already set as a whole by DAPB_AGENT__THROUGHPUT"):
        load_settings(None, environ={"DAPB_AGENT__THROUGHPUT__PORTS": "1", "DAPB_AGENT__THROUGHPUT": "x"})


env_parts = st.sampled_from(
    ["policy", "kernel", "agent", "estimator", "throughput", "ports", "b_max_bytes", "listen", "x", "", "T_MAX_MS"]
)


@given(
    st.dictionaries(
        st.lists(env_parts, min_size=1, max_size=4).map(lambda parts: "DAPB_" + "__".join(parts).upper()),
        st.text(max_size=12),
        max_size=6,
    )
)
def test_any_dapb_environment_gives_settings_or_a_config_error(environ):
    try:
        assert isinstance(load_settings(None, environ=environ), Settings)
    except ConfigError as error:
        assert str(error)


@pytest.mark.parametrize(
    "listen",
    [
        "not-an-address",
        "127.0.0.1:99999",
        "127.0.0.1:",
        "127.0.0.1:-1",
        "127.0.0.1: 80",
        "[::1]:9464",
        "::1",
        "999.1.1.1:80",
        "-bad-:80",
        "a b:80",
        "host:1e3",
        "host:٣",
    ],
)
def test_a_bad_listen_address_is_refused_naming_it(listen):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"agent": {"listen": listen}})
    assert "agent.listen" in str(caught.value) and repr(listen) in str(caught.value)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:65535", "localhost", 65535),
        ("dapb-agent.dapb-system.svc.cluster.local:9464", "dapb-agent.dapb-system.svc.cluster.local", 9464),
        (":9464", "127.0.0.1", 9464),
    ],
)
def test_good_listen_addresses_are_accepted_and_split(listen, host, port):
    assert parse_settings({"agent": {"listen": listen}}).agent.listen == listen
    assert split_listen(listen) == (host, port)


@given(st.text(alphabet="0123456789.:abz-[] ", max_size=24))
def test_an_accepted_listen_address_is_one_the_exporter_can_bind(listen):
    try:
        parse_settings({"agent": {"listen": listen}})
    except ConfigError:
        return
    host, port = split_listen(listen)
    assert 0 <= port <= 65535 and host and " " not in host and "[" not in host
