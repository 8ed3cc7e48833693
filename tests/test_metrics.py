"""The six metrics (eq. 8-13), with the paper's worked examples and hand-computed traces."""

import math

import pytest

from dapb_mesh.metrics import (
    Hop,
    Transmission,
    Trigger,
    added_delay,
    buffer_efficiency,
    ebpf_cpu_seconds_per_second,
    ebpf_overhead,
    n_reduced,
    path_latency,
    percentile,
    throughput_gain,
)


def test_paper_example_1000_packets_sent_as_200():
    assert n_reduced([1000], [200]) == 800


def test_n_reduced_sums_intervals_and_checks_lengths():
    assert n_reduced([100, 50, 10], [10, 50, 12]) == 88
    with pytest.raises(ValueError, match="differ in length"):
        n_reduced([1, 2], [1])


def test_paper_example_added_delay():
    assert added_delay([150], tau_ms=200) == 150
    assert added_delay([250], tau_ms=200) == 200
    assert added_delay([150, 250], tau_ms=200) == 175
    assert added_delay([], tau_ms=200) == 0


def test_paper_example_ebpf_overhead_5us_at_1000pps():
    cost = ebpf_overhead(x_ebpf=12.0, x_native=7.0)
    assert cost == 5.0
    # The paper says "about 5 seconds of CPU time per second"; 5 us x 1000/s is 5 ms per second.
    assert ebpf_cpu_seconds_per_second(cost, 1000) == pytest.approx(0.005)


def test_buffer_efficiency_counts_only_full_and_timeout_sends():
    trace = [
        Transmission(1000, Trigger.FULL, 1000),
        Transmission(500, Trigger.TIMEOUT, 1000),
        Transmission(100, Trigger.URGENT, 1000),
        Transmission(0, Trigger.CLOSE, 1000),
    ]
    assert buffer_efficiency(trace) == pytest.approx(1500 / 4000)
    assert buffer_efficiency([]) == 0.0


def test_path_latency_adds_tau_where_the_queue_was_not_full():
    hops = [Hop(1.0, queue_full=True), Hop(2.0, queue_full=False), Hop(0.5, queue_full=False)]
    assert path_latency(hops, tau_ms=10) == pytest.approx(1 + 2 + 10 + 0.5 + 10)
    assert path_latency([], tau_ms=10) == 0


def test_throughput_gain_relative():
    assert throughput_gain(100.0, 125.0) == pytest.approx(0.25)
    assert math.isnan(throughput_gain(0.0, 1.0))


def test_percentile_nearest_rank():
    data = list(range(1, 101))
    assert percentile(data, 50) == 50
    assert percentile(data, 99) == 99
    assert percentile(data, 100) == 100
    assert math.isnan(percentile([], 50))


def test_repeated_runs_keep_every_value_beside_the_median():
    """Medians of repeats, with each repeat's numbers kept (per_run) so that reports and compare show the spread;
    lost bytes add up; a single run carries no per_run."""
    from dapb_mesh.bench.metrics import median_of

    runs = [{"latency_max_ms": v, "lost_bytes": lost, "hist": [1, 2]} for v, lost in ((3.0, 0), (9.0, 5), (4.0, 0))]
    out = median_of(runs)
    assert out["latency_max_ms"] == 4.0 and out["lost_bytes"] == 5 and out["hist"] == [3, 6] and out["repeats"] == 3
    assert out["per_run"] == {"latency_max_ms": [3.0, 9.0, 4.0], "lost_bytes": [0, 5, 0]}
    assert "per_run" not in median_of(runs[:1])
