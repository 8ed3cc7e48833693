"""Network namespaces and the cgroup v2 directories beside them: what the product needs to run a probe in a
throw-away pod of its own (`dapb doctor`), and what the testbed builds its pods from (testbed/netns.py).

Every name starts with PREFIX, so whatever a crashed run leaves behind is recognisable as DAPB's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dapb_mesh.config import KernelConfig

PREFIX = "dapb-"


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """argv run by a shell that first moves itself into ``cgroup``, then execs: no Python code runs between fork
    and exec (a preexec_fn in a process with grpc threads once left a half-started child)."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]


_CAP_SYS_ADMIN = 21


def may_create_netns() -> bool:
    """Whether this process may make a network namespace (CAP_SYS_ADMIN): the agent's container has only CAP_BPF,
    CAP_NET_ADMIN and CAP_PERFMON, and runs its probes in its own namespace instead."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def create_netns(name: str) -> None:
    """`ip netns add`: synchronous, and checked (pyroute2's forked creation once left no namespace behind)."""
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode or not Path(f"/run/netns/{name}").exists():
        raise RuntimeError(f"cannot create network namespace {name}: {done.stderr.strip()}")


def remove_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@dataclass
class Pod:
    """A network namespace and the cgroup its processes run in."""

    name: str
    netns: str
    """The named namespace (/run/netns/NAME); empty: the caller's own (a scratch pod made without CAP_SYS_ADMIN)."""
    cgroup: Path
    address: str
    ifname: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def container(self, name: str) -> Path:
        """A child cgroup of the pod (a container: "app", "sidecar"), created on first use."""
        path = self.cgroup / name
        path.mkdir(exist_ok=True)
        return path

    def popen(self, argv: list[str], *, container: str | None = None, uid: int | None = None, **kwargs):
        """Start argv inside this pod's netns, in the pod's cgroup or one of its containers, optionally as uid."""
        cgroup = self.container(container) if container else self.cgroup
        if self.netns:
            user = [f"--setuid={uid}", f"--setgid={uid}"] if uid is not None else []  # after setns, as root
            enter = ["nsenter", f"--net=/run/netns/{self.netns}", *user]
        else:
            enter = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
        proc = subprocess.Popen(
            in_cgroup(cgroup, [*enter, *argv]),
            process_group=0,  # its own process group, so a kill reaches the whole pod process
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    def python(self, module: str, *args: str, **kwargs) -> subprocess.Popen:
        return self.popen([sys.executable, "-m", module, *args], **kwargs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.procs.clear()


@contextmanager
def scratch_pod(kernel: KernelConfig | None = None, label: str = "scratch"):
    """One throw-away pod (netns with lo up + cgroup), removed on exit. Without CAP_SYS_ADMIN (the agent's
    container) no namespace can be made: the pod is then a cgroup in this process's own network namespace, which
    is enough for probes that attach to the cgroup (only the pod's processes are affected) and talk over lo."""
    from pyroute2 import IPRoute, NetNS

    kernel = kernel or KernelConfig()
    name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    pod = Pod(name, name, kernel.cgroup2_root / name, "127.0.0.1", "lo")
    pod.cgroup.mkdir()
    try:
        if may_create_netns():
            create_netns(name)
            with NetNS(name) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        else:
            pod.netns = ""
            with IPRoute() as ip:
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        yield pod
    finally:
        pod.stop()
        if pod.netns:
            with suppress(Exception):
                remove_netns(name)
        remove_cgroup(pod.cgroup)


def remove_cgroup(cgroup: Path, wait_s: float = 5.0) -> None:
    """rmdir a cgroup (children first) once its processes are gone (killing stragglers), bounded in time."""
    if cgroup.is_dir():
        for child in cgroup.iterdir():
            if child.is_dir():
                remove_cgroup(child, wait_s)
    deadline = time.monotonic() + wait_s
    while cgroup.exists() and time.monotonic() < deadline:
        with suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
