"""Load, attach, adopt and detach the DAPB kernel programs; read and write their maps.

An instance lives under <bpffs>/dapb/<instance>/: maps/<name> and links/<cgroup-id>-<program>. Links and maps are
pinned, so the attachment outlives the process that made it: an agent restart opens the pins again
(``Datapath.open``) and traffic never sees a gap. Nothing in the programs holds data, so a detach or a crash
never strands a byte (see docs/kernel.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path

from dapb_mesh import artifacts, owners
from dapb_mesh.config import KernelConfig
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.layout import (
    CFG_MSG_ACCOUNTING,
    CFG_UNGUARDED,
    LAYOUT_VERSION,
    MAX_CLASSES,
    MAX_PEER_PREFIXES,
    MAX_PORT_RULES,
    ClassPolicy,
    Config,
    MsgStats,
    PeerKey,
    SockStats,
    TcStats,
)
from dapb_mesh.kernel.libbpf import AttachType, LibbpfError

DEFAULT_OBJECT = artifacts.path(artifacts.BPF_OBJECT)
"""The BPF object: the checkout's build output, or the copy an installed wheel carries (dapb_mesh/artifacts.py)."""
MAPS = (
    "dapb_config",
    "dapb_policy",
    "dapb_dscp_class",
    "dapb_port_class",
    "dapb_bounded_peers",
    "dapb_sock_stats",
    "dapb_sk_state",
    "dapb_sockhash",
    "dapb_msg_stats",
    "dapb_tc_stats",
)
CGROUP_PROGRAMS = {"dapb_sockops": "sockops", "dapb_setsockopt": "setsockopt"}
TC_PROGRAMS = {"egress": "dapb_tc_egress", "ingress": "dapb_tc_ingress"}
_TC_PARENT = {"egress": "ffff:fff3", "ingress": "ffff:fff2"}


PeerNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_V4_MAPPED = 96  # IPv4 prefixes live in the trie as ::ffff:a.b.c.d/(96 + len)


def peer_key(net: PeerNetwork | str) -> PeerKey:
    """The LPM trie key of a prefix (bpf/dapb.h struct dapb_peer_key): IPv4 mapped into IPv6."""
    net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
    if net.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
        return PeerKey(prefixlen=_V4_MAPPED + net.prefixlen, addr=(ctypes.c_uint8 * 16)(*mapped.packed))
    return PeerKey(prefixlen=net.prefixlen, addr=(ctypes.c_uint8 * 16)(*net.network_address.packed))


class DatapathError(RuntimeError):
    """The kernel part cannot be loaded, attached or found; the message says what to do."""


MAPS_DIR = "maps"  # <instance>/maps-<layout tag>/<map name>


def _object_shapes(so, obj: int) -> dict[str, tuple[int, ...]]:
    """Each map's (type, key size, value size, max entries, flags) as the object defines it."""
    shapes = {}
    for name in MAPS:
        m = libbpf.check_ptr(so.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
        shapes[name] = (
            so.bpf_map__type(m),
            so.bpf_map__key_size(m),
            so.bpf_map__value_size(m),
            so.bpf_map__max_entries(m),
            so.bpf_map__map_flags(m),
        )
    return shapes


def layout_tag(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The pins' layout: dapb.h's layout version and every map's shape, so that a struct that grows, a map that
    is resized or renamed, or a bumped version gives a new tag (and fresh maps) without anyone remembering to."""
    digest = hashlib.sha1(repr((LAYOUT_VERSION, sorted(shapes.items()))).encode()).hexdigest()[:8]
    return f"v{LAYOUT_VERSION}-{digest}"


def _maps_dirs(root: Path) -> list[Path]:
    """Every pinned map set of an instance (``maps``: before layouts were tagged)."""
    if not root.is_dir():
        return []
    return [d for d in root.iterdir() if d.is_dir() and (d.name == MAPS_DIR or d.name.startswith(f"{MAPS_DIR}-"))]


def _pins_match(maps_dir: Path, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    for name, shape in shapes.items():
        pin = maps_dir / name
        if not pin.exists():
            continue
        fd = libbpf.obj_get(str(pin))
        try:
            if libbpf.map_shape(fd) != shape:
                return False
        finally:
            os.close(fd)
    return True


def _cgroup_id(cgroup: Path) -> str:
    return hashlib.sha1(str(cgroup.resolve()).encode()).hexdigest()[:12]


class Datapath:
    """One DAPB kernel instance. Create with ``load`` (fresh or reusing pins) or ``open`` (adopt pins only)."""

    def __init__(self, instance: str, root: Path, map_fds: dict[str, int], prog_fds: dict[str, int], obj: int | None):
        self.instance = instance
        self.root = root
        self._maps = map_fds
        self._progs = prog_fds
        self._obj = obj
        self.adopted = obj is None  # every map was already pinned in this layout (the policy in them stays)
        self.older_layouts: list[Path] = []  # map pins of another layout, still used by attached programs

    # -- life cycle ---------------------------------------------------------------------------------------
    @staticmethod
    def pin_root(instance: str, kernel: KernelConfig | None = None) -> Path:
        if not instance or "/" in instance or instance.startswith("."):
            raise DatapathError(f"instance name {instance!r} must be a plain, non-empty file name")
        return (kernel or KernelConfig()).bpffs / "dapb" / instance

    @classmethod
    def load(cls, instance: str, kernel: KernelConfig | None = None, obj_path: Path = DEFAULT_OBJECT) -> Datapath:
        """Load the programs; maps pinned for this instance in this object's layout are reused, the others are
        made and pinned. Pins of another layout (an older agent's) are left in place for the programs still
        attached to them, listed in ``older_layouts``: ``retire_older_layouts`` removes them once this object's
        programs are swapped in."""
        kernel = kernel or KernelConfig()
        root = cls.pin_root(instance, kernel)
        if not obj_path.exists():
            raise DatapathError(f"BPF object {obj_path} not found: build it with `make -C bpf`")
        if not (kernel.bpffs / "dapb").parent.is_dir():
            raise DatapathError(f"{kernel.bpffs} missing: mount -t bpf bpf {kernel.bpffs}")
        so = libbpf.lib()
        obj = libbpf.check_ptr(so.bpf_object__open_file(str(obj_path).encode(), None), f"opening {obj_path}")
        try:
            shapes = _object_shapes(so, obj)
            maps_dir = root / f"{MAPS_DIR}-{layout_tag(shapes)}"
            if maps_dir.is_dir() and not _pins_match(maps_dir, shapes):
                # same name, another shape: pins made by hand or by a build that forgot to bump the version
                stale = root / f"{MAPS_DIR}-stale-{time.time_ns()}"  # unique: an agent is often pid 1
                maps_dir.rename(stale)
            older = sorted(d for d in _maps_dirs(root) if d != maps_dir)
            maps_dir.mkdir(parents=True, exist_ok=True)
            (root / "links").mkdir(parents=True, exist_ok=True)
            reused = []
            for name in MAPS:
                m = libbpf.check_ptr(so.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
                pin = maps_dir / name
                if pin.exists():
                    fd = libbpf.obj_get(str(pin))
                    libbpf.check(so.bpf_map__reuse_fd(m, fd), f"reusing pinned map {pin}")
                    os.close(fd)
                    reused.append(name)
            libbpf.check(so.bpf_object__load(obj), f"loading {obj_path} (see the verifier log above)")
            maps = {}
            for name in MAPS:
                fd = so.bpf_map__fd(so.bpf_object__find_map_by_name(obj, name.encode()))
                maps[name] = fd
                if name not in reused:
                    libbpf.obj_pin(fd, str(maps_dir / name))
            progs = {}
            for name in (*CGROUP_PROGRAMS, *TC_PROGRAMS.values(), "dapb_msg"):
                prog = libbpf.check_ptr(so.bpf_object__find_program_by_name(obj, name.encode()), f"program {name}")
                progs[name] = so.bpf_program__fd(prog)
        except Exception:
            so.bpf_object__close(obj)
            raise
        owners.register(f"bpf-{instance}")
        dp = cls(instance, root, maps, progs, obj)
        # adopted: every map was pinned and a policy written (a loader that died between the two left none)
        dp.adopted = len(reused) == len(MAPS) and dp.read_config().version > 0
        dp.older_layouts = older
        return dp

    @classmethod
    def open(cls, instance: str, kernel: KernelConfig | None = None) -> Datapath:
        """Adopt an instance another process loaded (an agent restart): its pinned maps, links left as they are.
        Mid-upgrade (two layouts pinned) the newest is the one in force."""
        root = cls.pin_root(instance, kernel)
        dirs = _maps_dirs(root)
        if not dirs:
            raise DatapathError(f"no DAPB instance {instance!r} pinned at {root}")
        newest = max(dirs, key=lambda d: d.stat().st_mtime_ns)
        maps = {name: libbpf.obj_get(str(newest / name)) for name in MAPS}
        return cls(instance, root, maps, {}, None)

    def retire_older_layouts(self) -> list[Path]:
        """After an upgrade: swap this object's programs into every pinned link (atomically: traffic sees no gap),
        then remove the older layouts' map pins (their maps die with the last program using them)."""
        if not self.older_layouts:
            return []
        for pin in self.links():
            short = pin.name.rsplit("-", 1)[-1]
            prog = next((p for p, sh in CGROUP_PROGRAMS.items() if sh == short), None)
            if prog is None:
                continue
            link_fd = libbpf.obj_get(str(pin))
            try:
                libbpf.check(libbpf.lib().bpf_link_update(link_fd, self._need_prog(prog), None), f"updating {pin}")
            finally:
                os.close(link_fd)
        retired, self.older_layouts = self.older_layouts, []
        for old in retired:
            shutil.rmtree(old, ignore_errors=True)
        return retired

    @classmethod
    def purge(cls, instance: str, kernel: KernelConfig | None = None) -> None:
        """Remove an instance's pins even when it is half made (a loader killed while pinning)."""
        cls._purge_root(cls.pin_root(instance, kernel), instance)

    @classmethod
    def _purge_root(cls, root: Path, instance: str) -> None:
        links = root / "links"
        if links.is_dir():
            for pin in links.iterdir():
                cls._detach_pin(pin)
        shutil.rmtree(root, ignore_errors=True)
        owners.release(f"bpf-{instance}")

    @classmethod
    def exists(cls, instance: str, kernel: KernelConfig | None = None) -> bool:
        return bool(_maps_dirs(cls.pin_root(instance, kernel)))

    def close(self) -> None:
        """Release this process's handles; pinned maps and links stay in the kernel."""
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)  # closes the object's map and program fds
            self._obj = None
        else:
            for fd in self._maps.values():
                with suppress(OSError):
                    os.close(fd)
        self._maps, self._progs = {}, {}

    def destroy(self) -> None:
        """Detach every pinned link of this instance and remove its pins (maps die with their last user)."""
        self.close()
        self._purge_root(self.root, self.instance)

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- attachment ---------------------------------------------------------------------------------------
    def _need_prog(self, name: str) -> int:
        if name not in self._progs:
            raise DatapathError("this handle adopted pins only; load the object (Datapath.load) to attach programs")
        return self._progs[name]

    def attach_cgroup(self, cgroup: Path) -> list[Path]:
        """Attach sock_ops and cgroup/setsockopt to a cgroup v2 directory, as pinned links. Idempotent."""
        if not (cgroup / "cgroup.procs").exists():
            raise DatapathError(f"{cgroup} is not a cgroup v2 directory")
        so = libbpf.lib()
        pins = []
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for prog_name, short in CGROUP_PROGRAMS.items():
                pin = self.root / "links" / f"{_cgroup_id(cgroup)}-{short}"
                pins.append(pin)
                prog = so.bpf_object__find_program_by_name(self._obj, prog_name.encode()) if self._obj else None
                if not prog:
                    raise DatapathError("attaching needs a loaded object (Datapath.load)")
                if pin.exists():
                    # Adopted after a restart: swap in this process's programs atomically, no gap.
                    link_fd = libbpf.obj_get(str(pin))
                    try:
                        libbpf.check(
                            so.bpf_link_update(link_fd, so.bpf_program__fd(prog), None), f"updating link {pin}"
                        )
                    finally:
                        os.close(link_fd)
                    continue
                link = libbpf.check_ptr(so.bpf_program__attach_cgroup(prog, fd), f"attaching {prog_name} to {cgroup}")
                try:
                    libbpf.check(so.bpf_link__pin(link, str(pin).encode()), f"pinning link {pin}")
                finally:
                    so.bpf_link__destroy(link)  # the pin keeps the link alive
        finally:
            os.close(fd)
        return pins

    @staticmethod
    def _detach_pin(pin: Path) -> None:
        if not pin.exists():  # detaching twice is fine
            return
        with suppress(FileNotFoundError):
            fd = libbpf.obj_get(str(pin))
            try:
                libbpf.check(libbpf.lib().bpf_link_detach(fd), f"detaching {pin}")
            finally:
                os.close(fd)
        pin.unlink(missing_ok=True)

    def detach_cgroup(self, cgroup: Path) -> None:
        for short in CGROUP_PROGRAMS.values():
            self._detach_pin(self.root / "links" / f"{_cgroup_id(cgroup)}-{short}")

    def links(self) -> list[Path]:
        """The pinned links of this instance (one per program and cgroup)."""
        links = self.root / "links"
        return sorted(links.iterdir()) if links.is_dir() else []

    def enable_msg_accounting(self) -> None:
        """Attach sk_msg to the sockhash; sockets established from now on are added to it and accounted."""
        prog = self._need_prog("dapb_msg")
        libbpf.check(
            libbpf.lib().bpf_prog_attach(prog, self._maps["dapb_sockhash"], AttachType.SK_MSG_VERDICT, 0),
            "attaching sk_msg to the sockhash",
        )
        cfg = self.read_config()
        cfg.flags |= CFG_MSG_ACCOUNTING
        self._write_config(cfg)

    def attach_tc(self, ifname: str, netns: str | None = None) -> None:
        """Count packets per DSCP on an interface (egress and ingress), in a named netns or the current one."""
        from pyroute2 import IPRoute, NetNS

        fds = {d: self._need_prog(p) for d, p in TC_PROGRAMS.items()}
        with NetNS(netns) if netns else IPRoute() as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                raise DatapathError(f"no interface {ifname!r} in {'netns ' + netns if netns else 'this netns'}")
            index = links[0]
            with suppress(Exception):
                ipr.tc("add", "clsact", index)
            for direction, fd in fds.items():
                ipr.tc(
                    "add-filter",
                    "bpf",
                    index,
                    ":1",
                    fd=fd,
                    name=TC_PROGRAMS[direction],
                    parent=_TC_PARENT[direction],
                    classid=1,
                    direct_action=True,
                )

    @staticmethod
    def detach_tc(ifname: str, netns: str | None = None) -> None:
        from pyroute2 import IPRoute, NetNS

        with NetNS(netns) if netns else IPRoute() as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if links:
                with suppress(Exception):
                    ipr.tc("del", "clsact", links[0])

    def program_run_time(self) -> dict[str, tuple[int, int]]:
        """(run_time_ns, run_cnt) per program of this process's loaded object (see libbpf.run_time_stats)."""
        return {name: libbpf.prog_run_time(fd) for name, fd in self._progs.items()}

    # -- maps ---------------------------------------------------------------------------------------------
    def read_config(self) -> Config:
        cfg = Config()
        libbpf.map_lookup(self._maps["dapb_config"], ctypes.c_uint32(0), cfg)
        return cfg

    def _write_config(self, cfg: Config) -> None:
        libbpf.map_update(self._maps["dapb_config"], ctypes.c_uint32(0), cfg)

    def write_policy(
        self,
        policies: Mapping[int, ClassPolicy],
        *,
        default_class: int | None = None,
        small_bytes: int | None = None,
        drop_per_million: int | None = None,
        unguarded: bool | None = None,
    ) -> int:
        """Write a new versioned snapshot: every class slot (missing classes get no knobs), then the version.

        Sockets pick the new version up on their next RTT callback. Returns the new version.
        """
        for cls in policies:
            if not 0 <= cls < MAX_CLASSES:
                raise DatapathError(f"class {cls} out of range 0..{MAX_CLASSES - 1}")
        for cls in range(MAX_CLASSES):
            libbpf.map_update(self._maps["dapb_policy"], ctypes.c_uint32(cls), policies.get(cls, ClassPolicy()))
        cfg = self.read_config()
        if default_class is not None:
            cfg.default_class = default_class
        if small_bytes is not None:
            cfg.small_bytes = small_bytes
        if drop_per_million is not None:
            if not 0 <= drop_per_million <= 1_000_000:
                raise DatapathError(f"drop_per_million {drop_per_million} out of range 0..1000000")
            cfg.drop_per_million = drop_per_million
        if unguarded is not None:  # lab only: the bench's forced-Nagle mode shows the harm the guard prevents
            cfg.flags = (cfg.flags | CFG_UNGUARDED) if unguarded else (cfg.flags & ~CFG_UNGUARDED)
        cfg.version = cfg.version % 0xFFFFFFFF + 1  # never 0: 0 means "no policy, touch nothing"
        self._write_config(cfg)
        return cfg.version

    def set_guard(self, hold_uid: int, bounded_peers: Iterable[PeerNetwork]) -> None:
        """Where a socket may hold: only sockets owned by ``hold_uid`` (the sidecar's; ANY_UID: any owner), opened
        by them, to a peer in ``bounded_peers`` (prefixes of pods whose delayed ACK DAPB bounds) outside their own
        pod. Applies to sockets established from now on; the set is replaced as a whole."""
        if not 0 <= hold_uid <= 0xFFFFFFFF:
            raise DatapathError(f"hold_uid {hold_uid} out of range 0..{0xFFFFFFFF}")
        keys = [peer_key(net) for net in bounded_peers]
        if len(keys) > MAX_PEER_PREFIXES:
            raise DatapathError(f"{len(keys)} bounded-peer prefixes; the kernel map holds {MAX_PEER_PREFIXES}")
        fd = self._maps["dapb_bounded_peers"]
        wanted = {(k.prefixlen, bytes(k.addr)) for k in keys}
        for old in libbpf.map_keys(fd, PeerKey, limit=MAX_PEER_PREFIXES * 2):
            if (old.prefixlen, bytes(old.addr)) not in wanted:
                libbpf.map_delete(fd, old)
        for key in keys:
            libbpf.map_update(fd, key, ctypes.c_uint32(1))
        cfg = self.read_config()
        cfg.hold_uid = hold_uid
        self._write_config(cfg)

    def read_policy(self) -> dict[int, ClassPolicy]:
        out = {}
        for cls in range(MAX_CLASSES):
            p = ClassPolicy()
            libbpf.map_lookup(self._maps["dapb_policy"], ctypes.c_uint32(cls), p)
            out[cls] = p
        return out

    def set_port_rules(self, rules: Mapping[int, int]) -> None:
        """Make ``rules`` (port -> class) the whole set of port rules: more than the map holds is refused before
        anything changes, ports no longer named are removed (an adopted instance keeps no stale rule)."""
        if len(rules) > MAX_PORT_RULES:
            raise DatapathError(f"{len(rules)} port rules; the kernel's port map holds {MAX_PORT_RULES}")
        for port, cls in rules.items():
            if not 0 < port < 65536:
                raise DatapathError(f"port {port} out of range 1..65535")
            if not 0 <= cls < MAX_CLASSES:
                raise DatapathError(f"port {port}: class {cls} out of range 0..{MAX_CLASSES - 1}")
        fd = self._maps["dapb_port_class"]
        for old in libbpf.map_keys(fd, ctypes.c_uint32, limit=MAX_PORT_RULES * 2):
            if old not in rules:
                libbpf.map_delete(fd, ctypes.c_uint32(old))
        for port, cls in rules.items():
            libbpf.map_update(fd, ctypes.c_uint32(port), ctypes.c_uint32(cls))

    def set_dscp_class(self, dscp: int, cls: int) -> None:
        if not 0 <= dscp < 64:
            raise DatapathError(f"DSCP {dscp} out of range 0..63")
        libbpf.map_update(self._maps["dapb_dscp_class"], ctypes.c_uint32(dscp), ctypes.c_uint32(cls))

    def sock_stats(self):
        """Every socket's telemetry, in batches (a few syscalls for thousands of sockets)."""
        from dapb_mesh.kernel.layout import MAX_SOCKETS

        return libbpf.map_read_all(self._maps["dapb_sock_stats"], ctypes.c_uint64, SockStats, MAX_SOCKETS)

    def forget_sockets(self, cookies: Iterable[int]) -> None:
        for cookie in cookies:
            libbpf.map_delete(self._maps["dapb_sock_stats"], ctypes.c_uint64(cookie))

    def _percpu(self, name: str, index: int, struct: type[ctypes.Structure]) -> ctypes.Structure:
        ncpu = libbpf.num_cpus()
        values = (struct * ncpu)()
        libbpf.map_lookup(self._maps[name], ctypes.c_uint32(index), values)
        total = struct()
        for field, ftype in struct._fields_:
            if hasattr(ftype, "_length_"):
                arr = getattr(total, field)
                for i in range(ftype._length_):
                    arr[i] = sum(getattr(v, field)[i] for v in values)
            else:
                setattr(total, field, sum(getattr(v, field) for v in values))
        return total

    def msg_stats(self, cls: int) -> MsgStats:
        return self._percpu("dapb_msg_stats", cls, MsgStats)

    def tc_stats(self, direction: str, dscp: int) -> TcStats:
        """Counters of one DSCP on the interfaces this instance's tc programs watch, summed over CPUs."""
        base = {"egress": 0, "ingress": 64}[direction]
        return self._percpu("dapb_tc_stats", base + dscp, TcStats)


def cleanup_stale(kernel: KernelConfig | None = None) -> list[str]:
    """Destroy instances whose loading process died without an agent adopting them (not the agent's own: an
    agent keeps its instance on purpose, and its restart adopts it)."""
    removed = []
    for name in owners.stale("bpf"):
        instance = name.removeprefix("bpf-")
        if not instance.startswith("agent") and Datapath.exists(instance, kernel):
            Datapath.purge(instance, kernel)
            removed.append(f"bpf instance {instance}")
        owners.release(name)
    return removed


def probe_object(obj_path: Path = DEFAULT_OBJECT) -> None:
    """Load the object once without pinning or attaching: proves the verifier accepts every program here."""
    so = libbpf.lib()
    if not obj_path.exists():
        raise DatapathError(f"BPF object {obj_path} not found: build it with `make -C bpf`")
    obj = libbpf.check_ptr(so.bpf_object__open_file(str(obj_path).encode(), None), f"opening {obj_path}")
    try:
        libbpf.check(so.bpf_object__load(obj), f"loading {obj_path}")
    finally:
        so.bpf_object__close(obj)


__all__ = ["Datapath", "DatapathError", "LibbpfError", "probe_object"]


_KNOB_PROBE = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.socket(); cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
cli.connect(srv.getsockname()); conn, _ = srv.accept()
cli.sendall(b"x" * 64); conn.recv(64); conn.sendall(b"y"); cli.recv(1)
for s in (cli, conn, srv): s.close()
"""


def probe_knobs(kernel: KernelConfig | None = None) -> str:
    """Apply a throughput policy to a real loopback connection in a scratch pod: Nagle forced on and the
    delayed-ACK bound set by bpf_setsockopt from sock_ops. Returns a detail; raises DatapathError on failure."""
    import subprocess
    import sys
    import uuid

    from dapb_mesh.kernel.layout import CLASS_THROUGHPUT, F_ACK_BOUND, F_ACK_RTO_MIN, F_NAGLE, MIN_ACK_BOUND_US
    from dapb_mesh.kernel.netns import scratch_pod

    kernel = kernel or KernelConfig()
    flags = F_NAGLE | F_ACK_BOUND | (F_ACK_RTO_MIN if kernel.ack_bound == "rto_min" else 0)
    dp = Datapath.load(f"doctor-{uuid.uuid4().hex[:8]}", kernel)
    try:
        with scratch_pod(kernel, "doctor") as pod:
            dp.attach_cgroup(pod.cgroup)
            policy = ClassPolicy(flags=flags, ack_bound_us=MIN_ACK_BOUND_US)
            # unguarded: this proves the knobs themselves on a loopback connection, which the guard never holds
            dp.write_policy({CLASS_THROUGHPUT: policy}, default_class=CLASS_THROUGHPUT, unguarded=True)
            pod.popen([sys.executable, "-c", _KNOB_PROBE]).wait(timeout=30)
            stats = dp.sock_stats()
    except subprocess.TimeoutExpired:
        raise DatapathError("the probe connection did not finish in 30 s") from None
    finally:
        dp.destroy()
    if len(stats) < 2:
        raise DatapathError(f"sock_ops saw {len(stats)} of 2 sockets: is the cgroup v2 path right?")
    errors = sum(s.apply_errors for s in stats)
    applied = all(s.applied_flags & flags == flags for s in stats)
    if errors or not applied:
        raise DatapathError(f"bpf_setsockopt failed {errors} time(s); knobs applied: {applied}")
    return f"TCP_NODELAY off and {kernel.ack_bound} {MIN_ACK_BOUND_US} us applied to {len(stats)} real sockets"
