"""Prometheus /metrics, /healthz and /readyz for the agent; metrics are read from the agent at scrape time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dapb_mesh.agent import CLASS_NAMES, Agent
from dapb_mesh.config import split_listen
from dapb_mesh.kernel import layout as L
from dapb_mesh.metrics import added_delay

HEADER_BYTES = 52  # IPv4 + TCP with timestamps: what each extra segment costs on the wire


class AgentCollector:
    """The paper's six metrics per class, decisions, fallbacks, map occupancy and the agent's own health."""

    def __init__(self, agent: Agent):
        self.agent = agent

    def collect(self):
        a = self.agent
        classes = a.aggregator.classes
        policy = {
            "buffer_bytes": GaugeMetricFamily("dapb_buffer_bytes", "B(t): buffer decided per class", labels=["class"]),
            "timeout": GaugeMetricFamily("dapb_timeout_seconds", "T(t): timeout decided per class", labels=["class"]),
            "enforced": GaugeMetricFamily(
                "dapb_enforced_timeout_seconds", "T_eff: bound the kernel enforces", labels=["class"]
            ),
            "energy": GaugeMetricFamily("dapb_energy_cost", "E(t) = eta*B + theta*T (eq. 7)", labels=["class"]),
            "rtt": GaugeMetricFamily("dapb_rtt_seconds", "smoothed RTT of the class's sockets", labels=["class"]),
            "loss": GaugeMetricFamily("dapb_loss_ratio", "retransmitted / sent segments, windowed", labels=["class"]),
            "jitter": GaugeMetricFamily("dapb_jitter_seconds", "RTT jitter (RFC 3550 style)", labels=["class"]),
        }
        six = {
            "eff": GaugeMetricFamily(
                "dapb_buffer_efficiency_ratio", "eq. 9: payload / (segments x MSS)", labels=["class"]
            ),
            "lat": GaugeMetricFamily(
                "dapb_path_latency_seconds", "eq. 10 for one hop: RTT/2 + expected hold", labels=["class"]
            ),
            "added": GaugeMetricFamily("dapb_added_delay_seconds", "eq. 11: E[min(T, t_fill)]", labels=["class"]),
            "gain": GaugeMetricFamily(
                "dapb_throughput_gain_ratio",
                "eq. 12 (header model): wire bytes one segment per write / wire bytes sent - 1",
                labels=["class"],
            ),
        }
        segments = CounterMetricFamily("dapb_segments", "data segments sent by the class's sockets", labels=["class"])
        sent = CounterMetricFamily("dapb_payload_bytes", "payload bytes acknowledged", labels=["class"])
        sockets = GaugeMetricFamily("dapb_sockets", "sockets seen in the last tick", labels=["class"])
        guard = GaugeMetricFamily(
            "dapb_guard_sockets",
            "sockets by what the hold guard allows: held (holding now), interactive (may hold, but replies come: "
            "sending at once), unbounded (never held: the peer's ACK delay is not DAPB's to bound)",
            labels=["class", "state"],
        )
        releases = CounterMetricFamily(
            "dapb_guard_releases",
            "holds the kernel released because request/response traffic appeared",
            labels=["class"],
        )
        interval = 1.0 / a.settings.agent.tick_hz
        for cls, st in classes.items():
            name = CLASS_NAMES[cls]
            d = st.decision
            if d is not None:
                policy["buffer_bytes"].add_metric([name], d.buffer_bytes)
                policy["timeout"].add_metric([name], d.timeout_ms / 1000)
                policy["enforced"].add_metric([name], (d.enforced_timeout_ms or 0) / 1000)
                policy["energy"].add_metric([name], d.energy)
            cond = a.aggregator.conditions(cls)
            policy["rtt"].add_metric([name], cond.rtt_ms / 1000)
            policy["loss"].add_metric([name], cond.loss)
            policy["jitter"].add_metric([name], cond.jitter_ms / 1000)
            segments.add_metric([name], st.sent_total)
            sent.add_metric([name], st.bytes)
            sockets.add_metric([name], st.sockets)
            for state, n in (("held", st.held), ("interactive", st.interactive), ("unbounded", st.unbounded)):
                guard.add_metric([name, state], n)
            releases.add_metric([name], st.guard_releases_total)
            if st.segments:
                six["eff"].add_metric([name], st.bytes / (st.segments * 1448))
            byte_rate = st.bytes / interval if interval > 0 else 0
            hold_ms = 0.0
            if d is not None and d.enforced_timeout_ms:
                t_fill = d.buffer_bytes / byte_rate * 1000 if byte_rate > 0 else float("inf")
                hold_ms = added_delay([min(t_fill, 1e9)], d.enforced_timeout_ms)
            six["added"].add_metric([name], hold_ms / 1000)
            six["lat"].add_metric([name], cond.rtt_ms / 2000 + hold_ms / 1000)
            if st.segments and d is not None and d.buffer_bytes:
                writes = max(st.segments, st.bytes / max(1, min(d.buffer_bytes, 1448)))
                six["gain"].add_metric(
                    [name], (st.bytes + writes * HEADER_BYTES) / (st.bytes + st.segments * HEADER_BYTES) - 1
                )
        yield from policy.values()
        yield from six.values()
        yield segments
        yield sent
        yield sockets
        yield guard
        yield releases
        decisions = CounterMetricFamily(
            "dapb_decisions", "decisions made, by class and rule", labels=["class", "source"]
        )
        for (cls, source), n in a.decision_counts.items():
            decisions.add_metric([cls, source], n)
        yield decisions
        fallbacks = CounterMetricFamily(
            "dapb_fallbacks", "decisions that fell back to static thresholds", labels=["class"]
        )
        for cls, n in a.fallback_counts.items():
            fallbacks.add_metric([cls], n)
        yield fallbacks
        rejected = CounterMetricFamily("dapb_telemetry_rejected", "telemetry samples ignored", labels=["reason"])
        for reason, n in a.aggregator.rejected.items():
            rejected.add_metric([reason], n)
        yield rejected
        inputs = CounterMetricFamily(
            "dapb_rejected_inputs",
            "inputs skipped with a named reason, the rest kept: VirtualServices, annotations and files (the "
            "companion), filter configuration entries the filter could not take (the agent)",
            labels=["source", "reason"],
        )
        counts = Counter(a.rejected_inputs)
        if a.companion is not None:
            counts.update(dict(a.companion.rejected_inputs))
        for (source, reason), n in counts.items():
            inputs.add_metric([source, reason], n)
        yield inputs
        yield CounterMetricFamily("dapb_policy_writes", "policy snapshots written", value=a.writes)
        yield CounterMetricFamily(
            "dapb_policy_writes_suppressed", "writes deferred by the rate limit", value=a.suppressed_writes
        )
        yield GaugeMetricFamily("dapb_policy_version", "version of the snapshot in force", value=a.version or 0)
        occupancy = GaugeMetricFamily("dapb_map_entries", "entries in the per-socket telemetry map", labels=["map"])
        occupancy.add_metric(["dapb_sock_stats"], a.aggregator.tracked)
        yield occupancy
        yield GaugeMetricFamily("dapb_map_capacity", "capacity of the per-socket telemetry map", value=L.MAX_SOCKETS)
        overhead = GaugeMetricFamily(
            "dapb_ebpf_overhead_seconds", "eq. 13: mean run time per program invocation", labels=["program"]
        )
        if a.datapath is not None:
            for prog, (ns, runs) in a.datapath.program_run_time().items():
                if runs:
                    overhead.add_metric([prog], ns / runs / 1e9)
        yield overhead
        if a.companion is not None:
            state = a.companion.state
            routes = GaugeMetricFamily(
                "dapb_route_urgency", "urgency per route (annotations joined with xDS)", labels=["route"]
            )
            for route, u in sorted(state.table.items()):
                routes.add_metric([route], u)
            yield routes
            yield GaugeMetricFamily(
                "dapb_companion_connected", "1 while the xDS stream is up", value=int(state.connected)
            )
            yield CounterMetricFamily("dapb_companion_nacks", "xDS responses rejected", value=len(state.nacks))
            yield GaugeMetricFamily(
                "dapb_companion_annotation_problems", "invalid urgency annotations", value=len(state.problems)
            )


class _Handler(BaseHTTPRequestHandler):
    agent: Agent
    registry: CollectorRegistry

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        a = self.agent
        tick_age = time.monotonic() - a.last_tick if a.last_tick else float("inf")
        if self.path == "/metrics":
            body, status, ctype = generate_latest(self.registry), 200, "text/plain; version=0.0.4"
        elif self.path == "/healthz":
            ok = tick_age < 10 * max(1.0, 1.0 / a.settings.agent.tick_hz) or not a.ready.is_set()
            body, status, ctype = (b"ok\n" if ok else b"loop stalled\n"), 200 if ok else 503, "text/plain"
        elif self.path == "/readyz":
            ok = a.ready.is_set()
            body, status, ctype = (b"ready\n" if ok else b"starting\n"), 200 if ok else 503, "text/plain"
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(agent: Agent, listen: str) -> ThreadingHTTPServer:
    """Start the exporter in a daemon thread; returns the server (``server_address`` has the real port)."""
    host, port = split_listen(listen)
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    handler = type("Handler", (_Handler,), {"agent": agent, "registry": registry})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
