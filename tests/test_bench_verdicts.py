"""The bench's judgements, pure: client specs, the real clients' output, the do-no-harm verdict, the report's
distortion flags. No kernel, no mesh."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapb_mesh.bench.clients import ClientLoad, parse_client, parse_h2load, parse_wrk, within
from dapb_mesh.bench.report import distortions

WRK = """Running 2s test @ http://10.1.1.2:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.32ms  620.00us  12.51ms   90.00%
    Req/Sec     3.01k   200.00     3.20k    70.00%
  Latency Distribution
     50%    1.20ms
     75%    1.50ms
     90%    1.90ms
     99%    3.40ms
  6020 requests in 2.00s, 7.00MB read
Requests/sec:   3009.50
Transfer/sec:      3.50MB
"""

H2LOAD = """finished in 2.00s, 992.00 req/s, 1.10MB/s
requests: 1984 total, 1984 started, 1984 done, 1980 succeeded, 4 failed, 0 errored, 0 timeout
"""


def test_client_specs_parse_and_bad_ones_name_the_bad_part():
    assert parse_client("wrk:c4") == ClientLoad("wrk", "1.1", 4)
    assert parse_client("h2load:h2:c16:r1000") == ClientLoad("h2load", "2", 16, 1000)
    for bad, part in (("curl:c1", "curl"), ("wrk:r100", "r100"), ("h2load:c99", "c99"), ("h2load:h3", "h3")):
        with pytest.raises(ValueError, match=part):
            parse_client(bad)


def test_wrk_and_h2load_output_is_read_in_milliseconds():
    w = parse_wrk(WRK)
    assert (w["p50_ms"], w["p90_ms"], w["p99_ms"], w["max_ms"]) == (1.2, 1.9, 3.4, 12.51)
    assert w["requests"] == 6020 and w["req_per_s"] == 3009.5 and w["errors"] == 0
    log = "".join(f"1700000000{i:06d}\t200\t{1000 + i}\n" for i in range(1000))
    h = parse_h2load(H2LOAD, log)
    assert h["p50_ms"] == pytest.approx(1.5, abs=0.01) and h["max_ms"] == pytest.approx(1.999)
    assert h["requests"] == 1980 and h["errors"] == 4 and h["req_per_s"] == 992.0
    with pytest.raises(RuntimeError, match="wrk"):
        parse_wrk("connection refused")


def run(p99, rps, steal=0.0, errors=0):
    return {"p90_ms": p99 / 2, "p99_ms": p99, "req_per_s": rps, "cpu_steal": steal, "errors": errors, "requests": 2000}


@given(st.lists(st.floats(1.0, 20.0), min_size=3, max_size=7), st.floats(500, 5000))
def test_a_mode_identical_to_baseline_is_no_harm_and_a_40ms_stall_is(p99s, rps):
    bases = [run(p, rps) for p in p99s]
    assert within([dict(b) for b in bases], bases)["ok"]
    stalled = [run(p + 40.0, rps * 0.3) for p in p99s]
    assert not within(stalled, bases)["ok"]


def test_on_a_calm_machine_the_verdict_is_the_target_and_steal_distorted_pairs_are_left_out():
    bases = [run(4.0, 3000) for _ in range(5)]
    assert within([run(5.4, 2900) for _ in range(5)], bases)["ok"]  # 4 x 1.1 + 1 = 5.4 ms, -3 %
    assert not within([run(5.6, 3000) for _ in range(5)], bases)["ok"]
    assert not within([run(4.0, 2800) for _ in range(5)], bases)["ok"]  # -6.7 % req/s
    noisy = [run(4.0, 3000, steal=0.2)] * 2 + [run(4.0, 3000)] * 3
    v = within([run(30.0, 3000, steal=0.2)] * 2 + [run(4.0, 3000)] * 3, noisy)
    assert v["ok"] and v["pairs_left_out"] == 2


def test_the_report_flags_a_baseline_that_coalesced_by_itself_and_cpu_steal():
    result = {
        "scenario": "stream-small",
        "workload": {"hops": 2},
        "modes": {"baseline": {"segments_per_message": 0.9, "cpu_steal": 0.12}, "dapb": {"cpu_steal": 0.0}},
    }
    flags = distortions(result)
    assert any("coalesced by itself" in f for f in flags) and any("stole 12%" in f for f in flags)
    result["modes"]["baseline"] |= {"segments_per_message": 1.9, "cpu_steal": 0.0}
    assert distortions(result) == []
