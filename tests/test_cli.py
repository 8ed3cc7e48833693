"""The CLI contracts: `dapb policy explain --json` fields and bounds, errors that name the bad value, and the
top-level guard: an unexpected error is one line (its traceback under --debug), Ctrl-C exits 130."""

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dapb_mesh import cli
from dapb_mesh.cli import policy as cli_policy
from dapb_mesh.config import Settings


def dapb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_policy_explain_json_within_bounds():
    out = dapb(
        "policy", "explain", "--rtt-ms", "20", "--loss", "0.01", "--jitter-ms", "3", "--sensitivity", "auto", "--json"
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    p = Settings().policy
    assert p.b_min_bytes <= d["buffer_bytes"] <= p.b_max_bytes
    assert p.t_base_ms <= d["timeout_ms"] <= p.t_max_ms
    assert d["enforced_timeout_ms"] >= d["timeout_ms"]
    assert {"energy", "knobs", "reason", "fallback"} <= d.keys()


def test_policy_explain_latency_gives_b_min():
    out = dapb(
        "policy",
        "explain",
        "--rtt-ms",
        "20",
        "--loss",
        "0.01",
        "--jitter-ms",
        "3",
        "--sensitivity",
        "latency",
        "--json",
    )
    d = json.loads(out.stdout)
    assert d["buffer_bytes"] == Settings().policy.b_min_bytes
    assert d["knobs"]["nodelay"] is True


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--rtt-ms", "-1", "--loss", "0", "--jitter-ms", "0"], "--rtt-ms"),
        (["--rtt-ms", "1", "--loss", "1.5", "--jitter-ms", "0"], "--loss"),
        (["--rtt-ms", "nan", "--loss", "0", "--jitter-ms", "0"], "--rtt-ms"),
        (["--rtt-ms", "1", "--loss", "0", "--jitter-ms", "0", "--sensitivity", "fast"], "--sensitivity"),
    ],
)
def test_invalid_cli_values_exit_nonzero_naming_the_option(args, named):
    out = dapb("policy", "explain", *args)
    assert out.returncode != 0
    assert named in out.stderr


def test_invalid_configuration_exits_nonzero_naming_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("policy:\n  b_min_bytes: 9000\n  b_max_bytes: 100\n")
    out = dapb("policy", "explain", "--rtt-ms", "1", "--loss", "0", "--jitter-ms", "0", "--config", str(path))
    assert out.returncode == 2
    assert "b_min_bytes" in out.stderr and "9000" in out.stderr


def test_filter_test_streams_a_body_through_the_filter_and_names_a_bad_spec():
    cfg = '{"hold_bytes": 4096, "hold_ms": 10, "route:telemetry": 0.0}'
    out = dapb("filter", "test", "--route", "telemetry", "--config", cfg, "--body", "64x20@1", "--tick-ms", "4")
    assert out.returncode == 0, out.stderr
    assert "x-dapb-class: throughput" in out.stdout and "20 chunks -> 3 writes" in out.stdout
    bad = dapb("filter", "test", "--body", "64 by 20")
    assert bad.returncode == 2 and "64 by 20" in bad.stderr


def explain_raising(monkeypatch, error: BaseException) -> list[str]:
    """`dapb policy explain` whose decision raises ``error``: the arguments to give main()."""

    def decide(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(cli_policy, "decide", decide)
    monkeypatch.delenv("DAPB_DEBUG", raising=False)
    return ["policy", "explain", "--rtt-ms", "1"]


def test_an_unexpected_error_is_one_line_naming_the_command_and_the_debug_switch(monkeypatch, capsys):
    args = explain_raising(monkeypatch, RuntimeError("the policy broke\non two lines"))
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "dapb policy explain: error: RuntimeError: the policy broke on two lines" in err
    assert "--debug" in err and "DAPB_DEBUG=1" in err


@pytest.mark.parametrize("switch", ["flag", "env"])
def test_debug_shows_the_unexpected_error_itself(monkeypatch, switch):
    args = explain_raising(monkeypatch, RuntimeError("the policy broke"))
    if switch == "env":
        monkeypatch.setenv("DAPB_DEBUG", "1")
    else:
        args = ["--debug", *args]
    with pytest.raises(RuntimeError, match="the policy broke"):
        cli.main(args)


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    args = explain_raising(monkeypatch, KeyboardInterrupt())
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 130
    assert "Traceback" not in capsys.readouterr().err


def test_the_console_script_is_the_guarded_entry_point():
    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["dapb"].partition(":")
    assert getattr(importlib.import_module(module), name) is cli.main
