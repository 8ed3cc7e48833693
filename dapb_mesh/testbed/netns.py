"""Network namespaces joined by veth, each with its own cgroup v2 directory: the pods of the testbed.

Names carry a per-run prefix so parallel runs never collide; ``cleanup_stale`` removes what a crashed run left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dapb_mesh import owners
from dapb_mesh.config import KernelConfig

PREFIX = "dapb-"


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """argv run by a shell that first moves itself into ``cgroup``, then execs: no Python code runs between fork
    and exec (a preexec_fn in a process with grpc threads once left a half-started child)."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]


def create_netns(name: str) -> None:
    """`ip netns add`: synchronous, and checked (pyroute2's forked creation once left no namespace behind)."""
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode or not Path(f"/run/netns/{name}").exists():
        raise RuntimeError(f"cannot create network namespace {name}: {done.stderr.strip()}")


def remove_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def move_link(ifname: str, netns_name: str, attempts: int = 3) -> int:
    """Move an interface from this namespace into ``netns_name`` and return its index there.

    Verified, and retried: once in CI a move did not take effect (the interface stayed behind)."""
    from pyroute2 import IPRoute, NetNS

    for _ in range(attempts):
        with IPRoute() as ipr:
            here = ipr.link_lookup(ifname=ifname)
            if here:
                ipr.link("set", index=here[0], net_ns_fd=netns_name)
        with NetNS(netns_name) as ns:
            try:
                return link_index(ns, ifname, timeout_s=1.0)
            except RuntimeError:
                continue
    raise RuntimeError(f"could not move interface {ifname} into netns {netns_name}")


def link_index(ns, ifname: str, timeout_s: float = 5.0) -> int:
    """The index of an interface just moved into a namespace: the move can take a moment to show (seen in CI)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = ns.link_lookup(ifname=ifname)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"interface {ifname} did not appear in its namespace within {timeout_s}s")
        time.sleep(0.01)


@dataclass
class Pod:
    """A network namespace and the cgroup its processes run in."""

    name: str
    netns: str
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
        user = [f"--setuid={uid}", f"--setgid={uid}"] if uid is not None else []  # after setns, as root
        proc = subprocess.Popen(
            in_cgroup(cgroup, ["nsenter", f"--net=/run/netns/{self.netns}", *user, *argv]),
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


class PodPair:
    """Two pods joined point-to-point by a veth pair: the inter-pod hop of the paper's section 7."""

    def __init__(self, kernel: KernelConfig | None = None, mtu: int = 1500):
        self.kernel = kernel or KernelConfig()
        self.run_id = uuid.uuid4().hex[:8]
        self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.mtu = mtu
        self.pods: list[Pod] = []

    def __enter__(self) -> PodPair:
        owners.register(f"pods-{self.run_id}")
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def client(self) -> Pod:
        return self.pods[0]

    @property
    def server(self) -> Pod:
        return self.pods[1]

    def _create(self) -> None:
        from pyroute2 import IPRoute, NetNS

        names = [f"{PREFIX}{self.run_id}-a", f"{PREFIX}{self.run_id}-b"]
        ifnames = [f"da{self.run_id}", f"db{self.run_id}"]
        for i, name in enumerate(names):
            cgroup = self.kernel.cgroup2_root / name
            cgroup.mkdir()
            create_netns(name)
            self.pods.append(Pod(name, name, cgroup, f"{self.subnet}.{i + 1}", ifnames[i]))
        with IPRoute() as ipr:
            ipr.link("add", ifname=ifnames[0], kind="veth", peer=ifnames[1])
        for i, name in enumerate(names):
            move_link(ifnames[i], name)
        for pod in self.pods:
            with NetNS(pod.netns) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
                index = link_index(ns, pod.ifname)
                ns.link("set", index=index, mtu=self.mtu)
                ns.addr("add", index=index, address=pod.address, prefixlen=24)
                ns.link("set", index=index, state="up")

    def close(self) -> None:

        for pod in self.pods:
            pod.stop()
        for pod in self.pods:
            with suppress(Exception):
                remove_netns(pod.netns)
            _remove_cgroup(pod.cgroup)
        self.pods.clear()
        owners.release(f"pods-{self.run_id}")


@contextmanager
def scratch_pod(kernel: KernelConfig | None = None, label: str = "scratch"):
    """One throw-away pod (netns with lo up + cgroup), removed on exit."""
    from pyroute2 import NetNS

    kernel = kernel or KernelConfig()
    name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    pod = Pod(name, name, kernel.cgroup2_root / name, "127.0.0.1", "lo")
    pod.cgroup.mkdir()
    try:
        create_netns(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield pod
    finally:
        pod.stop()
        with suppress(Exception):
            remove_netns(name)
        _remove_cgroup(pod.cgroup)


def _remove_cgroup(cgroup: Path, wait_s: float = 5.0) -> None:
    """rmdir a cgroup (children first) once its processes are gone (killing stragglers), bounded in time."""
    if cgroup.is_dir():
        for child in cgroup.iterdir():
            if child.is_dir():
                _remove_cgroup(child, wait_s)
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


def remove_run(run_id: str, kernel: KernelConfig | None = None) -> list[str]:
    """Remove every namespace and cgroup of one run (names dapb-<run_id>-*)."""
    from pyroute2 import netns

    kernel = kernel or KernelConfig()
    removed = []
    stem = f"{PREFIX}{run_id}-"
    for pod_cgroup in kernel.cgroup2_root.glob(f"{stem}*"):
        _remove_cgroup(pod_cgroup)
        removed.append(f"cgroup {pod_cgroup.name}")
    for name in netns.listnetns():
        if name.startswith(stem):
            with suppress(Exception):
                remove_netns(name)
                removed.append(f"netns {name}")
    return removed


def cleanup_stale(kernel: KernelConfig | None = None) -> list[str]:
    """Remove the pods of runs whose owner process died (a crashed or killed runner)."""
    removed = []
    for name in owners.stale("pods"):
        removed += remove_run(name.removeprefix("pods-"), kernel)
        owners.release(name)
    return removed
