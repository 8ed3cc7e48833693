"""The paper's six metrics (section 5, eq. 8-13) computed from event traces. Pure functions, no I/O.

The paper numbers eq. 12 (throughput gain) without printing it; we use the relative change of measured
throughput, which is what its text describes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Trigger(StrEnum):
    """Why a buffer was sent."""

    FULL = "full"  # B(t) reached
    TIMEOUT = "timeout"  # T(t) expired
    URGENT = "urgent"  # U(t) > U_th
    CLOSE = "close"  # end of stream or connection


@dataclass(frozen=True)
class Transmission:
    """One send of a buffer: the bytes it carried, why it left, and the capacity B_max(t) in force."""

    used_bytes: int
    trigger: Trigger
    capacity_bytes: int


@dataclass(frozen=True)
class Hop:
    """An edge v_i -> v_{i+1} of a mesh path: its network delay and whether v_i's queue was full (no hold)."""

    delay_ms: float
    queue_full: bool


def n_reduced(arrivals: Sequence[float], transmitted: Sequence[float]) -> float:
    """N_reduced = sum over intervals of (lambda(t) - N_DAPB(t)) (eq. 8): small packets that were not sent."""
    if len(arrivals) != len(transmitted):
        raise ValueError(f"arrivals ({len(arrivals)}) and transmitted ({len(transmitted)}) differ in length")
    return sum(a - n for a, n in zip(arrivals, transmitted, strict=True))


def buffer_efficiency(transmissions: Sequence[Transmission]) -> float:
    """eta = sum(B_used * Tr_DAPB) / sum(B_max) (eq. 9), Tr_DAPB = 1 for buffer-full or timeout sends.

    In [0, 1] when no send exceeds its capacity; 0 for an empty trace.
    """
    capacity = sum(t.capacity_bytes for t in transmissions)
    if capacity <= 0:
        return 0.0
    used = sum(t.used_bytes for t in transmissions if t.trigger in (Trigger.FULL, Trigger.TIMEOUT))
    return used / capacity


def path_latency(hops: Sequence[Hop], tau_ms: float) -> float:
    """L_P = sum over edges of (d + 1[queue not full] * tau) (eq. 10), in ms."""
    return sum(h.delay_ms + (0.0 if h.queue_full else tau_ms) for h in hops)


def added_delay(t_fill_ms: Sequence[float], tau_ms: float) -> float:
    """L_added = E[min(tau, t_fill)] (eq. 11), in ms; an empty sample adds nothing."""
    if not t_fill_ms:
        return 0.0
    return sum(min(tau_ms, t) for t in t_fill_ms) / len(t_fill_ms)


def throughput_gain(baseline_bps: float, dapb_bps: float) -> float:
    """T_gain = (throughput with DAPB - baseline) / baseline (eq. 12 as described); 0.1 means 10% more."""
    if baseline_bps <= 0:
        return math.nan
    return (dapb_bps - baseline_bps) / baseline_bps


def ebpf_overhead(x_ebpf: float, x_native: float) -> float:
    """C_eBPF = X_eBPF - X_native (eq. 13): the extra time (or memory, energy) per packet that eBPF adds."""
    return x_ebpf - x_native


def ebpf_cpu_seconds_per_second(cost_us_per_packet: float, packets_per_second: float) -> float:
    """CPU seconds spent per second of traffic for a per-packet cost.

    The paper's example (5 us/packet at 1000 packets/s) says "about 5 seconds"; the arithmetic gives 0.005 s,
    i.e. 0.5% of one core.
    """
    return cost_us_per_packet * 1e-6 * packets_per_second


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for an empty sample."""
    if not samples:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
