"""`dapb bench` stopped mid-run by SIGTERM or Ctrl-C (SIGINT) removes everything it made within 5 s: network
namespaces, cgroups, BPF pins, Envoys and apps. What it made is read from its owner files (/run/dapb/owners)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dapb_mesh import owners
from dapb_mesh.config import KernelConfig


def owned_by(pid: int) -> list[str]:
    if not owners.OWNERS.is_dir():
        return []
    return [e.name for e in owners.OWNERS.iterdir() if e.read_text().strip() == str(pid)]


def leftovers(names: list[str]) -> list[str]:
    """What of a run's resources still exists: its netns, cgroups, BPF pins and processes."""
    kernel = KernelConfig()
    found = []
    for name in names:
        kind, _, ident = name.partition("-")
        if kind == "pods":
            found += (
                [f"netns {n}" for n in os.listdir("/run/netns") if ident in n] if Path("/run/netns").is_dir() else []
            )
            found += [f"cgroup {c}" for c in kernel.cgroup2_root.glob(f"*{ident}*")]
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if f"testbed-{ident}" in cmdline:
                    found.append(f"process {proc.name}: {cmdline[:80]}")
        elif kind == "bpf":
            pins = kernel.bpffs / "dapb" / ident
            if pins.exists():
                found.append(f"pins {pins}")
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_bench_stopped_mid_run_leaves_nothing_behind(signum):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dapb_mesh.cli", "bench", "--scenario", "stream-small", "--modes", "baseline,dapb",
         "--rate", "2000", "--repeat", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        names: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(n.startswith("bpf-") for n in names):
            assert proc.poll() is None, "the bench ended before it could be stopped"
            names = owned_by(proc.pid)
            time.sleep(0.2)
        assert any(n.startswith("pods-") for n in names) and any(n.startswith("bpf-") for n in names), names
        time.sleep(2)  # mid-run: the mesh is up and a mode is streaming
        assert leftovers(names), "nothing to clean up: the check would prove nothing"
        stopped = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took <= 5.0, f"cleanup took {took:.1f} s"
    assert not leftovers(names)
    assert not owned_by(proc.pid)
