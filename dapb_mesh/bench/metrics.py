"""Turn one mode's raw measurements into the contract metrics (the paper's six, measured, not estimated)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from dapb_mesh.metrics import buffer_efficiency, ebpf_overhead, n_reduced, throughput_gain

CONTRACT_FIELDS = (
    "data_segments",
    "small_segments",
    "payload_bytes",
    "lost_bytes",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "throughput_mbps",
    "cpu_seconds",
    "n_reduced",
    "buffer_efficiency",
    "added_latency_ms",
    "ebpf_overhead_us",
)
STEAL_DISTORTS = 0.05
"""A run in which the hypervisor stole more of the node's CPU than this measured the host, not DAPB."""


@dataclass
class RawRun:
    """What one run of one mode measured, from the kernel (segments) and the receiver (bytes, delays)."""

    messages: int
    bytes_sent: int
    bytes_received: int
    data_segments: int
    small_segments: int
    delay_p50_ms: float
    delay_p99_ms: float
    delay_max_ms: float
    delay_mean_ms: float
    elapsed_s: float
    cpu_seconds: float
    mss: int
    ebpf_ns: int = 0  # run time of the DAPB programs during the run, measured by the kernel
    proxy_cpu_seconds: float | None = None  # CPU of the sidecar containers alone (None: no proxies)
    segment_size_hist: list[int] | None = None  # tc's data segments per payload-size bin (layout.size_bin_edges)
    extra: dict[str, float] | None = None  # scenario-specific measurements, reported as they are
    delay_hist_us: list[int] | None = None  # log2 bins of tcpwork.HIST_EDGES_US

    @classmethod
    def from_delays(
        cls,
        delay: dict,
        *,
        messages: int,
        bytes_sent: int,
        bytes_received: int,
        elapsed_s: float,
        data_segments: int = -1,
        mss: int = 1448,
    ) -> RawRun:
        """A run from a workload's delay summary (tcpwork._percentiles). data_segments -1: the runner counts
        them with tc; small segments, CPU and program time are filled by the runner too."""
        return cls(
            messages=messages,
            bytes_sent=bytes_sent,
            bytes_received=bytes_received,
            data_segments=data_segments,
            small_segments=0,
            delay_p50_ms=delay["p50"],
            delay_p99_ms=delay["p99"],
            delay_max_ms=delay["max"],
            delay_mean_ms=delay["mean"],
            delay_hist_us=delay["hist_us"],
            elapsed_s=elapsed_s,
            cpu_seconds=0.0,
            mss=mss,
        )


def summarize(run: RawRun) -> dict[str, float]:
    """Metrics that need only this run; the ones relative to baseline are filled by ``relate``."""
    from dapb_mesh.metrics import Transmission, Trigger

    # Every kernel segment is one transmission whose capacity is the MSS (eq. 9 with B_max(t) = MSS).
    per_segment = run.bytes_received / run.data_segments if run.data_segments else 0
    trace = [Transmission(round(per_segment), Trigger.FULL, run.mss)] if run.data_segments else []
    return {
        "messages": run.messages,
        "data_segments": run.data_segments,
        "small_segments": run.small_segments,
        "payload_bytes": run.bytes_received,
        "lost_bytes": run.bytes_sent - run.bytes_received,
        "latency_p50_ms": run.delay_p50_ms,
        "latency_p99_ms": run.delay_p99_ms,
        "latency_max_ms": run.delay_max_ms,
        "latency_mean_ms": run.delay_mean_ms,
        "segments_per_message": run.data_segments / run.messages if run.messages else 0.0,
        "throughput_mbps": run.bytes_received * 8 / run.elapsed_s / 1e6 if run.elapsed_s > 0 else 0.0,
        "cpu_seconds": run.cpu_seconds,
        "proxy_cpu_seconds": run.proxy_cpu_seconds,
        # C_eBPF (eq. 13): X_eBPF - X_native is the time the programs themselves add, per message
        "ebpf_overhead_us": ebpf_overhead(run.ebpf_ns, 0) / run.messages / 1e3 if run.messages else 0.0,
        "n_reduced": n_reduced([run.messages], [run.data_segments]),
        "buffer_efficiency": buffer_efficiency(trace),
        "ideal_segments": -(-run.bytes_received // run.mss) if run.mss else 0,
        "delay_hist_us": list(run.delay_hist_us or []),
        "segment_size_hist": list(run.segment_size_hist or []),
        **(run.extra or {}),
    }


def relate(modes: dict[str, dict[str, float]], baseline: str = "baseline") -> None:
    """Fill the metrics defined against the baseline mode: added latency, CPU per message, throughput gain."""
    base = modes.get(baseline)
    for metrics in modes.values():
        per_proxy = [
            m["proxy_cpu_seconds"] / m["messages"] * 1e6
            if m.get("proxy_cpu_seconds") is not None and m["messages"]
            else None
            for m in (metrics, base or {})
        ]
        metrics["proxy_cpu_us_per_message"] = per_proxy[0]
        if base is None:
            metrics |= {"added_latency_ms": None, "cpu_overhead_us": None, "throughput_gain": None}
            metrics["proxy_cpu_overhead_us"] = None
            continue
        # The sidecars' CPU per message against baseline: what the filter's hold costs (or saves: fewer writes)
        metrics["proxy_cpu_overhead_us"] = None if None in per_proxy else per_proxy[0] - per_proxy[1]
        metrics["added_latency_ms"] = max(0.0, metrics["latency_mean_ms"] - base["latency_mean_ms"])
        per_msg = [m["cpu_seconds"] / m["messages"] * 1e6 if m["messages"] else 0.0 for m in (metrics, base)]
        metrics["cpu_overhead_us"] = per_msg[0] - per_msg[1]  # whole-pod CPU per message against baseline
        metrics["throughput_gain"] = throughput_gain(base["throughput_mbps"], metrics["throughput_mbps"])


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per metric, the median over repeated runs (counts and bytes lost are summed instead: nothing hides)."""
    out: dict = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if isinstance(values[0], list):  # histograms add up
            out[key] = [sum(bins) for bins in zip(*values, strict=True)]
        elif None in values:  # not measured in some run (e.g. no proxies)
            out[key] = None
        else:
            out[key] = sum(values) if key == "lost_bytes" else statistics.median(values)
    out["repeats"] = len(runs)
    if len(runs) > 1:  # every repeat of every number, so that reports and `dapb bench compare` show the spread
        out["per_run"] = {
            key: [r[key] for r in runs]
            for key in runs[0]
            if all(isinstance(r[key], int | float) and not isinstance(r[key], bool) for r in runs)
        }
    return out
