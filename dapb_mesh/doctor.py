"""`dapb doctor`: every kernel and host feature the agent needs, each probed for real, with ok and a detail."""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dapb_mesh.config import KernelConfig
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.libbpf import FuncId, MapType, ProgType

MIN_KERNEL = (5, 10)  # TCP_BPF_DELACK_MAX / TCP_BPF_RTO_MIN in bpf_setsockopt, ringbuf, sk_storage
BPF_FS_MAGIC = "bpf"
_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mounts."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((fields[1], fields[2]))
    return out


def kernel_version(release: str | None = None) -> tuple[int, int]:
    release = release or platform.release()
    parts = release.split("-")[0].split(".")
    return int(parts[0]), int(parts[1])


def check_kernel() -> Check:
    version = kernel_version()
    ok = version >= MIN_KERNEL
    need = ".".join(map(str, MIN_KERNEL))
    return Check("kernel", ok, f"{platform.release()} ({'>=' if ok else '<'} {need} needed)")


def check_privileges() -> Check:
    cap_eff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            cap_eff = int(line.split()[1], 16)
    have = [name for name, bit in _CAPS.items() if cap_eff >> bit & 1]
    bpf_ok = "CAP_SYS_ADMIN" in have or {"CAP_BPF", "CAP_PERFMON"} <= set(have)
    ok = bpf_ok and "CAP_NET_ADMIN" in have
    return Check("privileges", ok, f"euid {os.geteuid()}, capabilities: {', '.join(have) or 'none'}")


def check_libbpf() -> Check:
    return Check("libbpf", True, f"libbpf.so {libbpf.version()}")


def check_bpf_syscall() -> Check:
    ok = libbpf.probe_map_type(MapType.ARRAY)
    return Check("bpf_syscall", ok, "created an ARRAY map" if ok else "bpf(BPF_MAP_CREATE) refused")


def check_bpffs(kernel: KernelConfig) -> Check:
    mounted = (str(kernel.bpffs), BPF_FS_MAGIC) in _mounts()
    detail = (
        f"{kernel.bpffs} is a bpf filesystem"
        if mounted
        else (f"{kernel.bpffs} is not a bpf filesystem; mount it: mount -t bpf bpf {kernel.bpffs}")
    )
    return Check("bpffs", mounted, detail)


def check_btf() -> Check:
    path = Path("/sys/kernel/btf/vmlinux")
    ok = path.exists()
    return Check("btf", ok, f"{path} ({path.stat().st_size} bytes)" if ok else f"{path} missing: no CO-RE")


def check_cgroup2(kernel: KernelConfig) -> Check:
    cgroup2 = [point for point, fs in _mounts() if fs == "cgroup2"]
    ok = str(kernel.cgroup2_root) in cgroup2
    if ok:
        detail = f"cgroup v2 at {kernel.cgroup2_root}"
    elif cgroup2:
        detail = f"cgroup v2 is at {', '.join(cgroup2)}, not at {kernel.cgroup2_root}: set kernel.cgroup2_root"
    else:
        detail = "no cgroup v2 mount: mount -t cgroup2 none /sys/fs/cgroup/unified"
    return Check("cgroup2", ok, detail)


def _prog_check(name: str, prog: ProgType) -> Callable[[], Check]:
    def run() -> Check:
        ok = libbpf.probe_prog_type(prog)
        return Check(name, ok, f"BPF_PROG_TYPE_{prog.name} {'loads' if ok else 'refused'}")

    return run


def _map_check(name: str, kind: MapType) -> Callable[[], Check]:
    def run() -> Check:
        ok = libbpf.probe_map_type(kind)
        return Check(name, ok, f"BPF_MAP_TYPE_{kind.name} {'created' if ok else 'refused'}")

    return run


def _helper_check(name: str, prog: ProgType, helper: FuncId) -> Callable[[], Check]:
    def run() -> Check:
        ok = libbpf.probe_helper(prog, helper)
        return Check(name, ok, f"bpf_{helper.name.lower()} {'callable' if ok else 'not callable'} from {prog.name}")

    return run


def check_clsact() -> Check:
    """Create a clsact qdisc in a throw-away network namespace (nothing on the host is touched); without
    CAP_SYS_ADMIN (the agent's container), on a throw-away veth pair in this process's own namespace."""
    from pyroute2 import NetNS

    from dapb_mesh.kernel.netns import create_netns, may_create_netns, remove_netns

    if not may_create_netns():
        return _clsact_on_scratch_veth()
    name = f"dapb-doctor-{uuid.uuid4().hex[:8]}"
    create_netns(name)
    try:
        with NetNS(name) as ns:
            index = ns.link_lookup(ifname="lo")[0]
            ns.tc("add", "clsact", index)
            kinds = [q.get_attr("TCA_KIND") for q in ns.get_qdiscs(index=index)]
    finally:
        remove_netns(name)
    ok = "clsact" in kinds
    return Check("clsact", ok, "clsact qdisc created in a scratch netns" if ok else f"qdiscs: {kinds}")


def _clsact_on_scratch_veth() -> Check:
    from pyroute2 import IPRoute

    tag = uuid.uuid4().hex[:8]
    name = f"dapb-dr{tag}"  # at most 15 bytes, as every interface name
    with IPRoute() as ip:
        ip.link("add", ifname=name, kind="veth", peer=f"dapb-dp{tag}")
        try:
            index = ip.link_lookup(ifname=name)[0]
            ip.tc("add", "clsact", index)
            kinds = [q.get_attr("TCA_KIND") for q in ip.get_qdiscs(index=index)]
        finally:
            ip.link("del", ifname=name)  # takes its peer with it
    ok = "clsact" in kinds
    return Check(
        "clsact", ok, "clsact qdisc created on a scratch veth in this network namespace" if ok else f"qdiscs: {kinds}"
    )


def check_dapb_object() -> Check:
    from dapb_mesh.kernel.datapath import DEFAULT_OBJECT, probe_object

    probe_object()
    return Check("dapb_programs", True, f"the verifier accepts every program of {DEFAULT_OBJECT.name}")


def check_knobs(kernel: KernelConfig) -> Check:
    from dapb_mesh.kernel.datapath import probe_knobs

    return Check("socket_knobs", True, probe_knobs(kernel))


def run_checks(kernel: KernelConfig | None = None) -> list[Check]:
    kernel = kernel or KernelConfig()
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("kernel", check_kernel),
        ("privileges", check_privileges),
        ("libbpf", check_libbpf),
        ("bpf_syscall", check_bpf_syscall),
        ("bpffs", lambda: check_bpffs(kernel)),
        ("btf", check_btf),
        ("cgroup2", lambda: check_cgroup2(kernel)),
        ("sock_ops", _prog_check("sock_ops", ProgType.SOCK_OPS)),
        ("sk_msg", _prog_check("sk_msg", ProgType.SK_MSG)),
        ("cgroup_sockopt", _prog_check("cgroup_sockopt", ProgType.CGROUP_SOCKOPT)),
        ("tc_bpf", _prog_check("tc_bpf", ProgType.SCHED_CLS)),
        ("sockhash", _map_check("sockhash", MapType.SOCKHASH)),
        ("lru_hash", _map_check("lru_hash", MapType.LRU_HASH)),
        ("sk_storage", _map_check("sk_storage", MapType.SK_STORAGE)),
        ("ringbuf", _map_check("ringbuf", MapType.RINGBUF)),
        ("bpf_setsockopt", _helper_check("bpf_setsockopt", ProgType.SOCK_OPS, FuncId.SETSOCKOPT)),
        ("sock_hash_update", _helper_check("sock_hash_update", ProgType.SOCK_OPS, FuncId.SOCK_HASH_UPDATE)),
        ("msg_cork_bytes", _helper_check("msg_cork_bytes", ProgType.SK_MSG, FuncId.MSG_CORK_BYTES)),
        ("clsact", check_clsact),
        ("dapb_programs", check_dapb_object),
        ("socket_knobs", lambda: check_knobs(kernel)),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(check())
        except Exception as error:  # a probe that cannot run is a failed check, not a crash
            results.append(Check(name, False, f"{type(error).__name__}: {error}"))
    return results


def report(checks: list[Check]) -> dict:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
