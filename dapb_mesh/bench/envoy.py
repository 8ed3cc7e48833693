"""Benchmarks through real Envoy sidecars (`--arch inter-pod|intra-pod`): the product's main job.

The app streams small messages over HTTP/1.1 to its sidecar; sidecar to sidecar is one HTTP/2 stream over mutual
TLS (unless plaintext), as in Istio. The outbound cluster marks its sockets with the class's DSCP (as the
mesh integration's class clusters do); the kernel classifies the sender's socket by that DSCP and the receiving
sidecar's accepted socket by its inbound port (15006). Segments are counted by tc at the class's DSCP where they
leave the client pod, so app-to-sidecar loopback traffic is not mixed in.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dapb_mesh.agent import Agent
from dapb_mesh.bench.metrics import RawRun
from dapb_mesh.bench.modes import load_model, plan
from dapb_mesh.bench.runner import impair, run_modes
from dapb_mesh.classes import DSCP_AUTO, DSCP_THROUGHPUT, INBOUND_PORT, SIDECAR_UID, tos_socket_option
from dapb_mesh.config import ClassRule, Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel import libbpf
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.mesh.virtualservice import plugin_config, urgencies
from dapb_mesh.policy import Conditions, Sensitivity
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.impair import NO_IMPAIRMENT, Impairment
from dapb_mesh.testbed.mesh import UPSTREAM_IDLE_S, Mesh, parse_arch

ENVOY_SCENARIOS = {
    "stream-small": Sensitivity.THROUGHPUT,
    "req-resp": Sensitivity.AUTO,
    "mixed": Sensitivity.THROUGHPUT,
    "bulk": Sensitivity.THROUGHPUT,
    "grpc-stream": Sensitivity.THROUGHPUT,
    "grpc-unary": Sensitivity.AUTO,
}
"""stream-small: small messages on one HTTP/2 stream; req-resp: 1 KiB answers at a fixed rate over 2 connections
(Istio's own benchmark shape), in the auto class; mixed: both at once through the same sidecar (the stream in the
throughput class, the requests in auto: DAPB must coalesce the one without delaying the other); bulk: 16 KiB
messages as fast as the client can write them (DAPB must not cost throughput); grpc-stream: small messages on
one client-streaming gRPC call (HTTP/2 end to end); grpc-unary: unary gRPC calls for 1 KiB answers (auto class)."""
MIXED_RR_RATE = 500  # requests per second beside the stream in `mixed`
BULK_MSG_SIZE = 16384


WASM = Path(__file__).resolve().parents[2] / "wasm_filter" / "dapb_filter.wasm"
ENVOY_BUFFER_LIMIT_BYTES = 1 << 20  # Envoy's default per_connection_buffer_limit_bytes (the testbed keeps it)
AGENT_FILTER_CONFIG = "agent-filter-config.json"  # where the bench's agent publishes the filter configuration


def bench_virtual_service(sensitivity: Sensitivity, host: str = "svc-b") -> dict:
    """A service's routes for the bench: /stream in the scenario's class, everything else auto."""
    urgency = Sensitivity(sensitivity).value  # latency, throughput and auto are annotation values too
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": host,
            "namespace": "default",
            "annotations": {"dapb.io/route-urgency": f"stream: {urgency}\ngrpc-stream: {urgency}"},
        },
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "name": "stream",
                    "match": [{"uri": {"prefix": "/stream"}}],
                    "route": [{"destination": {"host": host}}],
                },
                {
                    "name": "grpc-stream",
                    "match": [{"uri": {"prefix": "/dapb.Bench/Stream"}}],
                    "route": [{"destination": {"host": host}}],
                },
                {"name": "api", "route": [{"destination": {"host": host}}]},
            ],
        },
    }


def bench_virtual_services(sensitivity: Sensitivity, arch: str) -> list[dict]:
    """One per service a stream reaches: svc-b for inter-pod, svc-b.. for chain and fan-out (svc-a for
    intra-pod, where client and server share the pod)."""
    kind, n = parse_arch(arch)
    hosts = ["svc-a"] if kind == "intra-pod" else [f"svc-{chr(ord('a') + i)}" for i in range(1, n)]
    return [bench_virtual_service(sensitivity, h) for h in hosts]


def filter_config(table, settings: Settings, hold: tuple[int, int], **extra) -> str:
    return plugin_config(table, settings.policy, hold=hold, buffer_limit_bytes=ENVOY_BUFFER_LIMIT_BYTES, **extra)


def _rr_run(r: dict) -> RawRun:
    return RawRun.from_delays(
        r["latency_ms"],
        messages=r["requests"],
        bytes_sent=r["expected_bytes"],
        bytes_received=r["bytes"],
        elapsed_s=r["elapsed_s"],
    )


def run_envoy(
    scenario: str,
    modes: list[str],
    settings: Settings,
    *,
    arch: str = "inter-pod",
    rate: float = 10_000,
    msg_size: int = 64,
    duration_s: float = 2.0,
    repeats: int = 1,
    plaintext: bool = False,
    connections: int = 2,
    impairment: Impairment = NO_IMPAIRMENT,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    sensitivity = ENVOY_SCENARIOS[scenario]
    if scenario == "bulk":
        msg_size = max(msg_size, BULK_MSG_SIZE)  # at the given rate, or as fast as the client can write
    cls = L.CLASS_OF[sensitivity]
    count = int(rate * duration_s)
    predictor = load_model(settings) if "dapb-ml" in modes else None
    progress(f"bringing up the {arch} mesh")
    # The mesh integration in full: the Wasm filter classes requests by route (stream: the scenario's class),
    # class routes lead to clusters whose sockets carry the class's DSCP. The default cluster is marked AF21 so
    # that tc can count auto-class traffic too. Sidecar-to-sidecar connections are kept alive within a run (as
    # Envoy keeps them: requests reuse them) and closed between runs, so each mode's sockets are classified at
    # establishment under that mode.
    services = bench_virtual_services(sensitivity, arch)
    table = [entry for vs in services for entry in urgencies(vs)[0]]
    mesh = Mesh(
        arch,
        plaintext=plaintext,
        kernel=settings.kernel,
        routes=ec.class_routes(services),
        upstream_socket_options={**ec.class_socket_options(), "": [tos_socket_option(DSCP_AUTO)]},
        upstream_idle_timeout_s=UPSTREAM_IDLE_S,
        pin_cpus=True,
        wasm_filter=WASM,
        wasm_config=filter_config(table, settings, (0, 0)),
    )
    dscp = DSCP_THROUGHPUT if sensitivity is Sensitivity.THROUGHPUT else DSCP_AUTO

    def before_run(p) -> None:
        """Give the filter the mode's hold (B, T) when its enforcer is the filter, none otherwise; in agent mode
        the agent's own publications reach the filter (Mesh.follow_filter_config). First the previous run's
        sidecar-to-sidecar connections close (idle timeout)."""
        time.sleep(UPSTREAM_IDLE_S + 0.5)
        if p.agent:
            mesh.follow_filter_config(mesh.workdir / AGENT_FILTER_CONFIG)
            return
        mesh.stop_following()
        config = filter_config(table, settings, p.filter_hold)
        if config != mesh.wasm_config:
            mesh.update_routes(mesh.routes, f"hold-{p.filter_hold[0]}-{p.filter_hold[1]}", config)
            mesh.wait_for_config(rf"hold_bytes\W+{p.filter_hold[0]}\b")

    with mesh, libbpf.run_time_stats():
        # the static modes decide from the hop as measured now (as the agent would), not from a nominal RTT
        rtt_ms, jitter_ms = mesh.hop_conditions()
        conditions = Conditions(rtt_ms=rtt_ms, loss=0.0, jitter_ms=jitter_ms)  # loss: the agent measures it
        progress(f"hop measured: RTT {rtt_ms:.3f} ms, jitter {jitter_ms:.3f} ms")
        plans = {
            m: plan(
                m,
                sensitivity,
                conditions,
                settings,
                classify_all=False,
                predictor=predictor,
                load_bytes_per_s=rate * msg_size,
            )
            for m in modes
        }
        dp = Datapath.load(f"bench-{uuid.uuid4().hex[:8]}", settings.kernel)
        try:
            dp.set_dscp_class(dscp, cls)
            dp.set_port_rules({INBOUND_PORT: L.CLASS_RECEIVER})
            dp.set_guard(SIDECAR_UID, mesh.pod_networks)  # every pod's sidecar bounds its delayed ACK
            for netns, ifname in mesh.sending_interfaces:  # every hop's segments, counted where they leave
                dp.attach_tc(ifname, netns=netns)
            netns, ifname = mesh.hop_interface
            impair(dp, impairment, (netns, ifname), (mesh.server_pod.netns, mesh.hop_interface[1]))

            def once() -> RawRun:
                if scenario == "req-resp":
                    return _rr_run(mesh.request_response(rate, count, max(msg_size, 1024), connections))
                if scenario == "grpc-unary":
                    return _rr_run(mesh.grpc_unary(rate, count, max(msg_size, 1024), connections))
                if scenario == "mixed":
                    both = mesh.mixed(rate, count, msg_size, MIXED_RR_RATE, int(MIXED_RR_RATE * duration_s))
                    r, rr = both["stream"], both["rr"]
                    run = RawRun.from_delays(
                        r["server"]["delay_ms"],
                        messages=r["messages_sent"],
                        bytes_sent=r["bytes_sent"],
                        bytes_received=r["server"]["bytes"],
                        elapsed_s=r["elapsed_s"],
                    )
                    run.extra = {
                        "rr_requests": rr["requests"],
                        "rr_lost_bytes": rr["expected_bytes"] - rr["bytes"],
                        "rr_latency_p50_ms": rr["latency_ms"]["p50"],
                        "rr_latency_p99_ms": rr["latency_ms"]["p99"],
                        "rr_latency_max_ms": rr["latency_ms"]["max"],
                    }
                    return run
                r = (mesh.grpc_stream if scenario == "grpc-stream" else mesh.stream)(rate, count, msg_size)
                return RawRun.from_delays(  # segments: counted by tc at the class's DSCP
                    r["server"]["delay_ms"],
                    messages=r["messages_sent"],
                    bytes_sent=r["bytes_sent"],
                    bytes_received=r["server"]["bytes"],
                    elapsed_s=r["elapsed_s"],
                )

            def make_agent() -> Agent:
                # The agent's companion reads the client sidecar's routes from the testbed control plane and the
                # bench's VirtualServices from a directory, as it would read istiod and the Kubernetes API.
                vs_dir = mesh.workdir / "virtual-services"
                vs_dir.mkdir(exist_ok=True)
                for vs in services:
                    (vs_dir / f"{vs['metadata']['name']}.yaml").write_text(json.dumps(vs))  # JSON is YAML
                a = settings.agent.model_copy(
                    update={
                        "companion_target": f"unix:{mesh.control_plane.socket_path}",
                        "companion_node_id": ec.node_id(mesh.sidecars[0].spec),
                        "virtual_services": str(vs_dir),
                        "filter_config_file": mesh.workdir / AGENT_FILTER_CONFIG,
                        "proxy_buffer_limit_bytes": ENVOY_BUFFER_LIMIT_BYTES,
                        "cgroups": [p.container("sidecar") for p in mesh.pods],
                        "instance": f"agent-bench-{mesh.run_id}",
                        "store": mesh.workdir / "history.db",
                        "default_sensitivity": "auto",
                        "min_write_interval_s": 0.0,
                        "throughput": ClassRule(dscp=[dscp]),
                        "receiver_ports": [INBOUND_PORT],
                        "hold_uid": SIDECAR_UID,
                        "bounded_peers": mesh.pod_networks,
                    }
                )
                return Agent(settings.model_copy(update={"agent": a}))

            result_modes = run_modes(
                dp,
                modes,
                repeats,
                plans,
                [p.cgroup for p in mesh.pods],
                once,
                progress,
                scenario,
                count_dscps=(dscp,),  # the scenario's class (in mixed: the stream; the requests are auto)
                attach_cgroups=[p.container("sidecar") for p in mesh.pods],
                agent_factory=make_agent,
                before_run=before_run,
                proxy_cgroups=[p.container("sidecar") for p in mesh.pods],
            )
        finally:
            dp.destroy()
    return {
        "scenario": scenario,
        "arch": arch,
        "workload": {
            "messages": count * len(mesh.targets),
            "msg_size": msg_size,
            "rate": rate,
            "streams": len(mesh.targets),
            "connections": connections if scenario in ("req-resp", "grpc-unary") else 1,
            "hops": mesh.hops,
            "mtls": not plaintext,
        },
        "hop": {"rtt_ms": rtt_ms, "jitter_ms": jitter_ms, "measured_by": "TCP handshakes, client to server pod"},
        "impairment": impairment.describe(),
        "sensitivity": sensitivity.value,
        "modes": result_modes,
    }
