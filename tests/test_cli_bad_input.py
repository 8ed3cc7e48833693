"""No traceback reaches a user on bad input (issue 14): every command and subcommand of `dapb`, read from the
command tree itself so that a new one cannot be left out, run as a user runs it (`python -m dapb_mesh.cli` in a
subprocess) with bad arguments, files and environment variables. Each run must exit non-zero, print no traceback,
not fall through to the last-resort "unexpected error" line, and name the bad option, field, value or path.

Commands that touch the kernel when their input is good (doctor, bench, agent without --dry-run, train collect,
testbed up and down) are given only input that is refused before anything is made. These tests can therefore not
show that such a command reports a failure of the kernel itself cleanly (that is the top-level guard's job, tested
in test_cli.py). As a safety net, every run here carries a `sitecustomize` audit hook that stops the process with
exit 97 the moment it reaches for the kernel (libbpf, a netlink socket, a child process, bpffs, cgroupfs, a signal).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from dapb_mesh.cli import app

ROOT = Path(__file__).resolve().parents[1]
WASM = ROOT / "wasm_filter" / "dapb_filter.wasm"
KERNEL_REACHED = 97

KERNEL_GUARD = textwrap.dedent(
    """
    import os
    import socket
    import sys

    PATHS = ("/sys/fs/bpf", "/sys/fs/cgroup", "/run/netns", "/var/run/netns", "/proc/sys/net")


    def stop(event, args):
        os.write(2, f"KERNEL-GUARD: {event} {args!r}\\n".encode(errors="replace"))
        os._exit(KERNEL_REACHED)


    def hook(event, args):
        if event == "ctypes.dlopen" and "bpf" in str(args[0] if args else ""):
            stop(event, args)
        elif event == "socket.__new__" and len(args) > 1 and args[1] == socket.AF_NETLINK:
            stop(event, args)
        elif event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.kill"):
            stop(event, args)
        elif event in ("open", "os.mkdir") and args and str(args[0]).startswith(PATHS):
            stop(event, args)


    sys.addaudithook(hook)
    """
).replace("KERNEL_REACHED", str(KERNEL_REACHED))


@dataclass(frozen=True)
class Case:
    """Bad input for one command: its arguments and environment ({placeholders} name the files made below), and
    what the error must name."""

    args: tuple[str, ...]
    named: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def case(*args: str, named: tuple[str, ...] | str, env: dict[str, str] | None = None) -> Case:
    return Case(args, (named,) if isinstance(named, str) else named, env or {})


BAD_ENV = {"DAPB_POLICY__B_MAX_BYTES__X": "1"}
DRY = ("--dry-run", "--max-ticks", "1", "--store", "{cwd}/history.db")  # a dry run that got through stays here

CASES: dict[tuple[str, ...], list[Case]] = {
    (): [case("--bogus", named="--bogus"), case("bogus", named="bogus")],
    ("doctor",): [
        case("--config", "{missing}", named="{missing}"),
        case("--config", "{nonutf8}", named=("{nonutf8}", "UTF-8")),
        case(named="DAPB_POLICY__B_MAX_BYTES__X", env=BAD_ENV),
        case("--json", "extra", named="extra"),
    ],
    ("bench",): [
        case(named=("--scenario", "--client")),
        case("--scenario", "bogus", named=("--scenario", "bogus")),
        case("--scenario", "stream-small", "--modes", "bogus", named=("--modes", "bogus")),
        case("--scenario", "stream-small", "--rate", "abc", named=("--rate", "abc")),
        case("--scenario", "stream-small", "--rate", "nan", named=("--rate", "nan")),
        case("--scenario", "stream-small", "--arch", "chain:99", named=("--arch", "chain:99")),
        case("--scenario", "stream-small", "--impair", "loss=200%", named=("--impair", "loss=200%")),
        case("--scenario", "stream-small", "--msg-size", "1", named="--msg-size"),
        case("--scenario", "stream-small", "--config", "{badyaml}", named=("{badyaml}", "YAML")),
        case("--client", "bogus", named=("--client", "bogus")),
        case("--client", ",", named="--client"),
        case("--client", "wrk:c4", "--modes", "dapb", named=("--modes", "dapb")),
        case("--client", "wrk:c4", "--load-cores", "-1", named="--load-cores"),
        case("--scenario", "agent-tick", "--json", "{dir}", named=("--json", "{dir}")),
        case("--scenario", "agent-tick", "--json", "{notdir}/x.json", named=("--json", "{notdir}")),
        case("--scenario", "agent-tick", "--report", "{text}", named=("--report", "{text}")),
        case("--quick", "compare", "{result}", "{result}", named=("--quick", "compare")),
    ],
    ("bench", "report"): [
        case(named="RESULT"),
        case("{missing}", "--out", "{cwd}/r", named=("RESULT", "{missing}")),
        case("{dir}", "--out", "{cwd}/r", named=("RESULT", "{dir}")),
        case("{text}", "--out", "{cwd}/r", named=("RESULT", "{text}", "not JSON")),
        case("{nonresult}", "--out", "{cwd}/r", named=("RESULT", "{nonresult}", "not a dapb bench result")),
        case("{result}", "--out", "{text}", named=("--out", "{text}")),
        case("{result}", named="--out"),
    ],
    ("bench", "compare"): [
        case(named="RUN..."),
        case("{result}", named=("RUN...", "at least two")),
        case("{result}", "{missing}", named=("RUN...", "{missing}")),
        case("{result}", "{text}", named=("RUN...", "{text}", "not JSON")),
        case("{result}", "=x", named=("RUN...", "=x")),
        case("{result}", "{nonresult}", named=("RUN...", "{nonresult}")),
        case("{result}", "{result}", "--report", "{text}", named=("--report", "{text}")),
    ],
    ("agent",): [
        case(*DRY, "--listen", "not-an-address", named=("agent.listen", "not-an-address")),
        case(*DRY, "--listen", "127.0.0.1:99999", named=("agent.listen", "99999")),
        case(*DRY, "--listen", "192.0.2.1:9464", named=("--listen", "192.0.2.1:9464")),
        case(*DRY, "--listen", "127.0.0.1:0", "--store", "{dir}", named=("--store", "{dir}")),
        case(*DRY, "--listen", "127.0.0.1:0", "--store", "{notdir}/h.db", named=("--store", "{notdir}")),
        case("--dry-run", "--max-ticks", "0", named="--max-ticks"),
        case(*DRY, named=("agent.listen", "nowhere"), env={"DAPB_AGENT__LISTEN": "nowhere"}),
        case("--cgroup", "{dir}", named=("--cgroup", "{dir}")),
        case("--max-ticks", "1", named="--cgroup"),
    ],
    ("history",): [
        case("--store", "{missing}", named=("--store", "{missing}")),
        case("--store", "{dir}", named=("--store", "{dir}")),
        case("--table", "bogus", named=("--table", "bogus")),
        case("--class", "bogus", named=("--class", "bogus")),
        case("--limit", "0", named="--limit"),
        case("--config", "{unknownkey}", named="policy.nope"),
    ],
    ("demo",): [
        case("--config", "{badyaml}", named=("{badyaml}", "YAML")),
        case("--config", "{dir}", named=("--config", "{dir}")),
        case(named="{missing}", env={"DAPB_CONFIG": "{missing}"}),
        case(named=("policy.b_max_bytes", "lots"), env={"DAPB_POLICY__B_MAX_BYTES": "lots"}),
    ],
    ("policy",): [case("bogus", named="bogus")],
    ("policy", "explain"): [
        case(named="--rtt-ms"),
        case("--rtt-ms", "abc", named="--rtt-ms"),
        case("--rtt-ms", "nan", named=("--rtt-ms", "nan")),
        case("--rtt-ms", "1", "--loss", "2", named=("--loss", "2")),
        case("--rtt-ms", "1", "--sensitivity", "fast", named=("--sensitivity", "fast")),
        case("--rtt-ms", "1", "--predicted-bytes", "inf", named=("--predicted-bytes", "inf")),
        case("--rtt-ms", "1", "--offered-bytes-per-s", "-1", named=("--offered-bytes-per-s", "-1")),
        case("--rtt-ms", "1", "--config", "{notdir}", named="{notdir}"),
    ],
    ("render",): [case("bogus", named="bogus")],
    ("render", "istio"): [
        case("--out", "/proc/dapb-no-such-dir", named=("--out", "/proc/dapb-no-such-dir")),
        case("--out", "{text}", named=("--out", "{text}")),
        case("--out", "{notdir}/istio", named=("--out", "{notdir}")),
        case("--bogus", named="--bogus"),
        case("--out", "{cwd}/istio", "--agent-image", "Not A Ref", named=("--agent-image", "Not A Ref")),
        case("--out", "{cwd}/istio", "--filter-image", "oci://r/f:1", named=("--filter-image", "scheme")),
        case("--out", "{cwd}/istio", "--filter-image", "r/f@sha256:ab", named=("--filter-image", "digest")),
        case("--out", "{cwd}/istio", "--filter-image", "r/f:1", "--filter-digest", "12ab", named="--filter-digest"),
        case("--out", "{cwd}/istio", "--agent-digest", "sha256:" + "a" * 64, named=("--agent-digest", "--agent-image")),
    ],
    ("filter",): [case("bogus", named="bogus")],
    ("filter", "test"): [
        case("--wasm", "{missing}", named=("--wasm", "{missing}")),
        case("--wasm", "{dir}", named=("--wasm", "{dir}")),
        case("--wasm", "{text}", named=("--wasm", "{text}")),
        case("--wasm", "{badwasm}", named=("--wasm", "{badwasm}")),
        case("--wasm", "{wasm}", "--config", "@{missing}", named=("--config", "{missing}")),
        case("--wasm", "{wasm}", "--config", "@{dir}", named=("--config", "{dir}")),
        case("--wasm", "{wasm}", "--config", "{{bad json", named=("--config", "{{bad json")),
        case("--wasm", "{wasm}", "--config", '{{"nope": 1}}', named=("--config", "nope", "unknown_key")),
        case("--wasm", "{wasm}", "--route", "\udcff", named=("--route", "UTF-8")),
        case("--wasm", "{wasm}", "-H", "nocolon", named=("--header", "nocolon")),
        case("--wasm", "{wasm}", "--body", "64 by 20", named=("--body", "64 by 20")),
        case("--wasm", "{wasm}", "--body", "64x100000@100", named=("--body", "64x100000@100")),
        case("--wasm", "{wasm}", "--body", "64x2@1", "--tick-ms", "inf", named=("--tick-ms", "inf")),
    ],
    ("train",): [case("bogus", named="bogus")],
    ("train", "collect"): [
        case("--grid", "bogus", named=("--grid", "bogus")),
        case("--duration", "0.1", named="--duration"),
        case("--duration", "inf", named=("--duration", "inf")),
        case("--grid", "quick", "--store", "{dir}", named=("--store", "{dir}")),
        case("--grid", "quick", "--config", "{nonutf8}", named=("{nonutf8}", "UTF-8")),
    ],
    ("train", "fit"): [
        case("--store", "{missing}", named=("--store", "{missing}")),
        case("--store", "{dir}", named=("--store", "{dir}")),
        case("--store", "{notdb}", named=("--store", "contexts")),
        case("--store", "{notdb}", "--model", "{notdir}/m.onnx", named=("--model", "{notdir}")),
        case("--store", "{notdb}", "--card", "{dir}", named=("--card", "{dir}")),
    ],
    ("testbed",): [case("bogus", named="bogus")],
    ("testbed", "up"): [
        case("--arch", "bogus", named=("--arch", "bogus")),
        case("--arch", "chain:1", named=("--arch", "chain:1")),
        case("--config", "{missing}", named="{missing}"),
        case(named="DAPB_POLICY__B_MAX_BYTES__X", env=BAD_ENV),
    ],
    ("testbed", "down"): [case("--bogus", named="--bogus"), case("extra", named="extra")],
    ("testbed", "status"): [case("--bogus", named="--bogus"), case("extra", named="extra")],
    ("config",): [case("bogus", named="bogus")],
    ("config", "reference"): [case("--bogus", named="--bogus"), case("extra", named="extra")],
    ("config", "check"): [
        case(named="path"),
        case("{missing}", named="{missing}"),
        case("{nonutf8}", named=("{nonutf8}", "UTF-8")),
        case("{dir}", named="{dir}"),
        case("{badyaml}", named=("{badyaml}", "YAML")),
        case("{unknownkey}", named="policy.nope"),
        case("{toplist}", named=("{toplist}", "mapping")),
        case("{empty}", named="DAPB_POLICY__B_MAX_BYTES__X", env=BAD_ENV),
    ],
}


def command_tree() -> set[tuple[str, ...]]:
    """Every command and command group of `dapb`, as the words that invoke it."""
    found: set[tuple[str, ...]] = set()

    def walk(command, path: tuple[str, ...]) -> None:
        found.add(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_every_command_and_group_has_bad_input_cases():
    tree = command_tree()
    groups = {path[:i] for path in tree for i in range(len(path))}
    assert tree - CASES.keys() == set(), "commands without bad-input cases: add them to CASES"
    assert CASES.keys() - tree == set(), "cases for commands that no longer exist"
    few = [" ".join(path) for path in tree - groups if len(CASES[path]) < 2]
    assert few == [], f"give these commands several bad inputs: {few}"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Bad files of every kind, and a directory on PYTHONPATH with the kernel guard."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "text.txt").write_text("hello\n")
    (tmp_path / "notdb.db").write_text("not a database\n")
    (tmp_path / "nonutf8.yaml").write_bytes(b"policy:\n  b_max_bytes: \xff\xfe\n")
    (tmp_path / "bad.yaml").write_text("policy: [1\n")
    (tmp_path / "unknown.yaml").write_text("policy:\n  nope: 1\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    (tmp_path / "nonresult.json").write_text('{"scenario": "stream-small"}')
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(KERNEL_GUARD)
    return {
        "missing": str(tmp_path / "missing.yaml"),
        "dir": str(tmp_path / "adir"),
        "text": str(tmp_path / "text.txt"),
        "notdir": str(tmp_path / "text.txt" / "below"),
        "notdb": str(tmp_path / "notdb.db"),
        "nonutf8": str(tmp_path / "nonutf8.yaml"),
        "badyaml": str(tmp_path / "bad.yaml"),
        "unknownkey": str(tmp_path / "unknown.yaml"),
        "toplist": str(tmp_path / "list.yaml"),
        "empty": str(tmp_path / "empty.yaml"),
        "badwasm": str(tmp_path / "bad.wasm"),
        "wasm": str(WASM),
        "result": str(ROOT / "tests" / "data" / "mixed.json"),
        "nonresult": str(tmp_path / "nonresult.json"),
        "guard": str(guard),
        "cwd": str(tmp_path),
    }


def run(args: list[str], env: dict[str, str], files: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m dapb_mesh.cli ARGS` in a scratch directory (nothing lands in the repository), with no DAPB_*
    variables but ``env``, wide output (no wrapped messages) and the kernel guard."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAPB_")}
    return subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        cwd=files["cwd"],
        env={**clean, **env, "COLUMNS": "400", "PYTHONPATH": files["guard"]},
    )


def flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    ("path", "bad"),
    [(path, bad) for path, cases in CASES.items() for bad in cases],
    ids=[
        f"{' '.join(path) or 'dapb'}:{' '.join(bad.args) or '-'}{'+env' if bad.env else ''}"
        for path, cases in CASES.items()
        for bad in cases
    ],
)
def test_bad_input_is_refused_by_name_without_a_traceback(path, bad, files):
    args = [*path, *(a.format(**files) for a in bad.args)]
    env = {k: v.format(**files) for k, v in bad.env.items()}
    out = run(args, env, files)
    said = flat(out.stdout + out.stderr)
    assert out.returncode != KERNEL_REACHED, f"reached for the kernel on bad input: {out.stderr[-2000:]}"
    assert out.returncode != 0, said
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert "DAPB_DEBUG" not in said, f"bad input fell through to the unexpected-error guard: {said}"
    for name in bad.named:
        assert flat(name.format(**files)) in said, f"{name!r} not named: {said}"


@pytest.mark.parametrize(
    "reach",
    [
        "import ctypes; ctypes.CDLL('libbpf.so.1')",
        "import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
        "import subprocess; subprocess.run(['true'])",
        "open('/sys/fs/bpf')",  # harmless if the guard failed: a directory
        "import os; os.mkdir('/sys/fs/cgroup')",  # harmless if the guard failed: it exists
    ],
)
def test_the_kernel_guard_stops_a_process_before_it_reaches_the_kernel(reach, files):
    """The safety net itself: each reach is stopped by the audit hook before it happens (and each is harmless
    should the hook fail)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DAPB_")}
    out = subprocess.run(
        [sys.executable, "-c", reach],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "PYTHONPATH": files["guard"]},
    )
    assert out.returncode == KERNEL_REACHED and "KERNEL-GUARD" in out.stderr, out.stderr[-2000:]
