"""Do no harm, as users see it: real load clients (wrk, h2load) through two Envoy sidecars with mTLS, the node
agent attached to whole pods as the DaemonSet attaches, default class auto and throughput, on a quiet node and
with one core kept busy. Judged within one run against its own baseline (interleaved repeats, medians): p90 and
p99 within 10 % + 1 ms, req/s within 5 %, errors no more than baseline's + 0.5 %. Forced Nagle without the
guard must fail the same verdict, so the criterion can fail."""

import json
import subprocess
import sys

import pytest

LOADS = "wrk:c4,h2load:h1:c2:r1000,h2load:h2:c16:r1000"


def bench_clients(tmp_path, modes: str, load_cores: int, repeat: int) -> dict:
    out = tmp_path / "clients.json"
    subprocess.run(
        [sys.executable, "-m", "dapb_mesh.cli", "bench", "--client", LOADS, "--modes", modes, "--quick",
         "--repeat", str(repeat), "--load-cores", str(load_cores), "--json", str(out)],
        check=True,
        timeout=900,
    )  # fmt: skip
    return json.loads(out.read_text())


@pytest.mark.parametrize("load_cores", [0, 1], ids=["quiet", "one-core-busy"])
def test_request_response_through_the_agent_is_never_slower(tmp_path, load_cores):
    modes = "baseline,agent-auto,agent-throughput" + (",nagle" if load_cores == 0 else "")
    result = bench_clients(tmp_path, modes, load_cores, repeat=5)
    assert set(result["clients"]) == set(LOADS.split(","))
    for label, per_mode in result["clients"].items():
        base = per_mode["baseline"]
        assert base["requests"] > 0
        for mode in ("agent-auto", "agent-throughput"):
            m = per_mode[mode]
            assert m["verdict"]["ok"], (label, mode, m["verdict"], m["per_run"], base["per_run"])
        if "nagle" in per_mode:  # the harm the guard prevents: forced Nagle on every socket of the pods
            assert not per_mode["nagle"]["verdict"]["ok"], (label, per_mode["nagle"])
