"""Network namespaces joined by veth, each with its own cgroup v2 directory: the pods of the testbed.

Names carry a per-run prefix so parallel runs never collide; ``cleanup_stale`` removes what a crashed run left.
A pod itself (namespace + cgroup, processes started inside) is the kernel package's (dapb_mesh/kernel/netns.py).
"""

from __future__ import annotations

import random
import time
import uuid
from contextlib import suppress

from dapb_mesh import owners
from dapb_mesh.config import KernelConfig
from dapb_mesh.kernel.netns import PREFIX, Pod, create_netns, remove_cgroup, remove_netns


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
            remove_cgroup(pod.cgroup)
        self.pods.clear()
        owners.release(f"pods-{self.run_id}")


def remove_run(run_id: str, kernel: KernelConfig | None = None) -> list[str]:
    """Remove every namespace and cgroup of one run (names dapb-<run_id>-*)."""
    from pyroute2 import netns

    kernel = kernel or KernelConfig()
    removed = []
    stem = f"{PREFIX}{run_id}-"
    for pod_cgroup in kernel.cgroup2_root.glob(f"{stem}*"):
        remove_cgroup(pod_cgroup)
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
