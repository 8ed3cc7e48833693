"""The node agent: aggregation and decisions (pure), then the real loop on real pods and sockets."""

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np

from dapb_mesh.agent import Agent, Aggregator, SocketSample, columns_from_samples, snapshot
from dapb_mesh.config import Settings, parse_settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.kernel.datapath import Datapath
from dapb_mesh.policy import Conditions, Sensitivity, decide
from dapb_mesh.store import HistoryStore
from dapb_mesh.testbed.hop import run_hop


def sample(cookie, cls=L.CLASS_THROUGHPUT, srtt=1.0, segs=0, retrans=0, acked=0, state=1, upd=1):
    return SocketSample(cookie, cls, srtt, segs, retrans, acked, state, upd)


def test_aggregator_sums_deltas_per_class_and_forgets_closed_sockets():
    agg = Aggregator(Settings())
    agg.ingest(columns_from_samples([sample(1, segs=10, acked=640), sample(2, cls=L.CLASS_LATENCY, segs=5)]))
    closed = agg.ingest(
        columns_from_samples(
            [sample(1, segs=25, acked=1640, upd=2), sample(2, cls=L.CLASS_LATENCY, segs=9, state=7, upd=2)]
        )
    )
    assert agg.classes[L.CLASS_THROUGHPUT].segments == 15 and agg.classes[L.CLASS_THROUGHPUT].bytes == 1000
    assert agg.classes[L.CLASS_LATENCY].segments == 4
    assert closed == [2] and agg.tracked == 1


def test_aggregator_counts_what_the_hold_guard_allows_and_its_releases():
    agg = Aggregator(Settings())
    tp = L.CLASS_THROUGHPUT
    agg.ingest(
        columns_from_samples(
            [
                SocketSample(1, tp, 1.0, 0, 0, 0, 1, 1, applied_flags=L.F_NAGLE),
                SocketSample(2, tp, 1.0, 0, 0, 0, 1, 1, applied_flags=L.S_UNBOUNDED_PEER),
                SocketSample(3, tp, 1.0, 0, 0, 0, 1, 1, applied_flags=L.S_INTERACTIVE, guard_releases=1),
            ]
        )
    )
    st = agg.classes[tp]
    assert (st.held, st.unbounded, st.interactive, st.guard_releases) == (1, 1, 1, 1)
    agg.ingest(columns_from_samples([SocketSample(3, tp, 1.0, 0, 0, 0, 1, 2, L.S_INTERACTIVE, guard_releases=3)]))
    assert (st.held, st.interactive, st.guard_releases, st.guard_releases_total) == (0, 1, 2, 3)


def test_absurd_and_non_finite_telemetry_is_ignored_and_counted():
    agg = Aggregator(Settings())
    agg.ingest(columns_from_samples([sample(1, srtt=2.0, segs=10)]))
    agg.ingest(
        columns_from_samples(
            [
                sample(1, srtt=4e6, segs=20, upd=2),  # an RTT of 67 minutes
                sample(3, srtt=float("nan")),
                sample(4, segs=float("inf")),
                sample(5, cls=9),
            ]
        )
    )
    agg.ingest(columns_from_samples([sample(1, srtt=2.0, segs=5, upd=3)]))  # counter went backwards
    assert agg.rejected == {"absurd_rtt": 1, "counter_backwards": 1, "not_finite": 2, "bad_class": 1}
    cond = agg.conditions(L.CLASS_THROUGHPUT)
    assert np.isfinite([cond.rtt_ms, cond.loss, cond.jitter_ms]).all() and cond.rtt_ms < 10


def test_snapshot_bounds_the_receiver_by_the_tightest_holding_class():
    s = Settings()
    cond = Conditions(1.0, 0.0, 0.1)
    decisions = {
        c: decide(cond, sens, s.policy, s.kernel)
        for c, sens in ((L.CLASS_THROUGHPUT, Sensitivity.THROUGHPUT), (L.CLASS_LATENCY, Sensitivity.LATENCY))
    }
    slots = snapshot(decisions, s)
    assert slots[L.CLASS_THROUGHPUT].flags & L.F_NAGLE and not slots[L.CLASS_LATENCY].flags
    assert slots[L.CLASS_RECEIVER].flags & L.F_ACK_BOUND and not slots[L.CLASS_RECEIVER].flags & L.F_NAGLE
    assert slots[L.CLASS_RECEIVER].ack_bound_us == slots[L.CLASS_THROUGHPUT].ack_bound_us


def agent_settings(tmp_path, pair, **agent) -> Settings:
    return parse_settings(
        {
            "agent": {
                "cgroups": [str(p.cgroup) for p in pair.pods],
                "instance": f"agent-test-{uuid.uuid4().hex[:6]}",
                "store": str(tmp_path / "history.db"),
                "default_sensitivity": "throughput",
                "tick_hz": 20,
                "min_write_interval_s": 0.2,
                "hold_uid": L.ANY_UID,  # the pods' processes stand in for sidecars
                "bounded_peers": [f"{pair.server.address}/32"],
                **agent,
            }
        }
    )


def test_agent_loop_coalesces_records_history_and_serves_metrics(pair, tmp_path):
    from dapb_mesh.exporter import serve

    settings = agent_settings(tmp_path, pair, listen="127.0.0.1:0")
    agent = Agent(settings)
    server = serve(agent, settings.agent.listen)
    port = server.server_address[1]
    try:
        agent.start()
        import threading

        loop = threading.Thread(target=agent.run, kwargs={"max_ticks": 200})
        loop.start()
        r = run_hop(pair, "stream", rate=10_000, count=10_000, size=64)
        assert r.server["bytes"] == 640_000 and r.server["in_order"]
        assert r.client["data_segs_out"] <= 1_500
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for family in (
            "dapb_buffer_bytes",
            "dapb_decisions_total",
            "dapb_buffer_efficiency_ratio",
            "dapb_added_delay_seconds",
            "dapb_path_latency_seconds",
            "dapb_map_entries",
            "dapb_ebpf_overhead_seconds",
            "dapb_telemetry_rejected_total",
            "dapb_fallbacks_total",
        ):
            assert family in body, family
        assert 'dapb_buffer_bytes{class="throughput"} 16384.0' in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        agent._stop.set()
        loop.join(10)
        store = HistoryStore(settings.agent.store)
        assert store.count("decisions") >= 3 and store.count("outcomes") >= 1
        assert any(row["class"] == "default" and row["segments"] > 0 for row in store.recent("outcomes", 500))
    finally:
        agent.stop()
        server.shutdown()
    assert not Datapath.exists(settings.agent.instance)  # graceful stop removed everything


def run_agent_process(settings_path, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "dapb_mesh.cli", "agent", "--config", str(settings_path), *args],
        stderr=subprocess.PIPE,
        text=True,
    )


def write_config(tmp_path, settings: Settings):
    path = tmp_path / "dapb.yaml"
    path.write_text(json.dumps(json.loads(settings.model_dump_json())))  # JSON is YAML
    return path


def wait_for(predicate, timeout_s=15.0):
    """Poll until predicate() is true; an exception (pins half made) counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_agent_sigkill_mid_stream_loses_nothing_and_a_restart_adopts_the_pins(pair, tmp_path):
    settings = agent_settings(tmp_path, pair, listen="127.0.0.1:0")
    path = write_config(tmp_path, settings)
    instance = settings.agent.instance
    agent = run_agent_process(path)
    try:
        assert wait_for(lambda: Datapath.exists(instance) and len(Datapath.open(instance).links()) == 4)
        assert wait_for(lambda: Datapath.open(instance).read_config().version >= 1)

        def kill(_client):
            time.sleep(0.5)
            agent.send_signal(signal.SIGKILL)

        r = run_hop(pair, "stream", rate=10_000, count=15_000, size=64, during=kill)
        assert r.server["bytes"] == 15_000 * 64 and r.server["in_order"]
        version = Datapath.open(instance).read_config().version  # the last one the dead agent wrote
        # The last policy stayed in force after the kill: the client's socket kept Nagle under that version (read
        # from the kernel, not from the segment count, which a CPU-starved receiver can spoil: docs/kernel.md).
        senders = [s for s in Datapath.open(instance).sock_stats() if not s.applied_flags & L.S_UNBOUNDED_PEER]
        assert senders, "the client's socket is not in the telemetry"
        client = max(senders, key=lambda s: s.last_update_ns)  # the stream's socket: the only one that may hold
        assert client.applied_flags & L.F_NAGLE and client.policy_version == version
        assert r.client["data_segs_out"] < 15_000  # and it coalesced
        again = run_agent_process(path)
        try:
            assert wait_for(lambda: Datapath.open(instance).read_config().version > version, 20)
            assert len(Datapath.open(instance).links()) == 4  # adopted: the same links, new programs
            again.send_signal(signal.SIGTERM)
            again.wait(20)
        finally:
            again.kill()
        assert not Datapath.exists(instance)
    finally:
        agent.kill()
        agent.wait()
        Datapath.purge(instance)


def test_sighup_with_a_malformed_configuration_keeps_the_running_one(pair, tmp_path):
    settings = agent_settings(tmp_path, pair, listen="127.0.0.1:0")
    path = write_config(tmp_path, settings)
    agent = Agent(settings, config_path=path, dry_run=True)
    agent.start()
    try:
        path.write_text("policy:\n  b_min_bytes: 99999\n  b_max_bytes: 10\n")
        assert agent.reload() is False and agent.reloads["rejected"] == 1
        assert agent.settings is settings
        path.write_text("agent:\n  default_sensitivity: latency\n  store: " + str(tmp_path / "h2.db") + "\n")
        assert agent.reload() is True and agent.settings.agent.default_sensitivity == "latency"
    finally:
        agent.stop()


def test_dry_run_decides_and_records_without_touching_the_kernel(pair, tmp_path):
    settings = agent_settings(tmp_path, pair)
    agent = Agent(settings, dry_run=True)
    agent.start()
    try:
        agent.run(max_ticks=3)
        assert agent.datapath is None and not Datapath.exists(settings.agent.instance)
        assert HistoryStore(settings.agent.store).count("decisions") >= 3
    finally:
        agent.stop()


def test_many_short_connections_keep_the_maps_bounded(pair, tmp_path):
    """10,000 connections open and close; the agent forgets closed sockets, so the map does not fill up, and no
    tick's CPU grows without bound (a sanity bound; `dapb bench --scenario agent-tick` measures the cost)."""
    settings = agent_settings(tmp_path, pair, listen="127.0.0.1:0")
    agent = Agent(settings)
    agent.start()
    try:
        churn = pair.client.popen(
            [
                sys.executable,
                "-c",
                (
                    "import socket\n"
                    "for i in range(10000):\n"
                    "    s = socket.socket(); s.settimeout(5)\n"
                    f"    try: s.connect(('{pair.server.address}', 9))\n"
                    "    except OSError: pass\n"
                    "    s.close()\n"
                ),
            ]
        )
        server = pair.server.popen(
            [
                sys.executable,
                "-c",
                (
                    "import socket\nl = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    "l.bind(('0.0.0.0', 9)); l.listen(512); l.settimeout(20)\n"
                    "for i in range(10000):\n    c, _ = l.accept(); c.close()\n"
                ),
            ]
        )
        deadline = time.monotonic() + 60
        worst_tick_s = 0.0
        while churn.poll() is None and time.monotonic() < deadline:
            worst_tick_s = max(worst_tick_s, agent.tick().cpu_s)
            time.sleep(0.05)
        assert churn.returncode == 0
        server.wait(30)
        for _ in range(10):
            agent.tick()
            time.sleep(0.05)
        left = len(agent.datapath.sock_stats())
        assert left < 100, left
        assert agent.aggregator.tracked < 100
        assert worst_tick_s < 0.5
    finally:
        agent.stop()


def test_grafana_dashboard_uses_only_metrics_the_agent_exports(pair, tmp_path):
    import re
    from pathlib import Path

    from dapb_mesh.exporter import serve

    settings = agent_settings(tmp_path, pair, listen="127.0.0.1:0")
    agent = Agent(settings, dry_run=True)
    server = serve(agent, settings.agent.listen)
    try:
        agent.start()
        agent.tick()
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5).read().decode()
    finally:
        agent.stop()
        server.shutdown()
    dashboard = (Path(__file__).parents[1] / "istio" / "grafana-dapb-dashboard.json").read_text()
    used = set(
        re.findall(r"dapb_[a-z_]+", " ".join(t["expr"] for p in json.loads(dashboard)["panels"] for t in p["targets"]))
    )
    exported = set(re.findall(r"^# TYPE (dapb_[a-z_]+)", body, re.MULTILINE))
    exported |= {f"{name}_total" for name in exported}
    assert used and used <= exported, used - exported


def test_agent_with_companion_exports_route_urgency_and_keeps_it_when_the_control_plane_goes(tmp_path):
    """The testbed control plane stands in for istiod."""
    from test_companion import NODE, snapshot, vs_doc, wait_until

    from dapb_mesh.exporter import serve
    from dapb_mesh.testbed.control_plane import ControlPlane

    vs_dir = tmp_path / "vs"
    vs_dir.mkdir()
    (vs_dir / "svc-b.yaml").write_text(json.dumps(vs_doc("telemetry: throughput")))
    plane = ControlPlane(tmp_path / "xds.sock").start()
    plane.set_snapshot(NODE, snapshot("1", vs_doc("")))
    s = parse_settings(
        {
            "agent": {
                "companion_target": f"unix:{plane.socket_path}",
                "companion_node_id": NODE,
                "virtual_services": str(vs_dir),
                "store": str(tmp_path / "h.db"),
                "listen": "127.0.0.1:0",
            }
        }
    )
    agent = Agent(s, dry_run=True)
    server = serve(agent, s.agent.listen)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        agent.start()
        assert wait_until(
            lambda: (
                'dapb_route_urgency{route="telemetry"} 0.0' in urllib.request.urlopen(url, timeout=5).read().decode()
            )
        )
        plane.stop()
        assert wait_until(
            lambda: "dapb_companion_connected 0.0" in urllib.request.urlopen(url, timeout=5).read().decode()
        )
        assert 'dapb_route_urgency{route="telemetry"} 0.0' in urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        agent.stop()
        server.shutdown()
        plane.stop()


def test_agent_hands_a_low_rate_throughput_class_to_the_filter_and_publishes_its_hold(tmp_path):
    """Dry run (decisions without the kernel) with telemetry given as the kernel would report it; the filter's
    configuration goes to a file. 64 kB/s per socket cannot fill segments within the kernel's 12 ms bound: the
    filter holds (B, T); at 640 kB/s the kernel coalesces and the hold is withdrawn."""
    out = tmp_path / "filter.json"
    s = parse_settings(
        {
            "agent": {
                "store": str(tmp_path / "h.db"),
                "filter_config_file": str(out),
                "min_write_interval_s": 0,
                "urgent_prefix": "!",
            }
        }
    )
    agent = Agent(s, dry_run=True)
    agent.start()
    acked, ticks = 0.0, 0

    def run(bytes_per_s: float, n: int) -> dict:
        nonlocal acked, ticks
        for _ in range(n):
            ticks += 1
            acked += bytes_per_s / s.agent.tick_hz
            agent.tick(columns_from_samples([sample(1, srtt=0.1, segs=ticks, acked=acked, upd=ticks)]))
        return json.loads(out.read_text())

    try:
        idle = json.loads(out.read_text())
        assert idle["hold_bytes"] == 0 and idle["urgent_prefix"] == "!" and idle["buffer_limit_bytes"] == 1 << 20
        low = run(64_000, 5)
        decision = agent.aggregator.classes[L.CLASS_THROUGHPUT].decision
        assert decision.knobs.enforcer == "filter"
        assert (low["hold_bytes"], low["hold_ms"]) == decision.filter_hold and low["hold_ms"] >= 1
        assert snapshot({L.CLASS_THROUGHPUT: decision}, s)[L.CLASS_THROUGHPUT].flags & L.F_NAGLE == 0
        high = run(640_000, 5)
        assert agent.aggregator.classes[L.CLASS_THROUGHPUT].decision.knobs.enforcer == "kernel"
        assert high["hold_bytes"] == 0 and agent.publisher.published == 3
    finally:
        agent.stop()
