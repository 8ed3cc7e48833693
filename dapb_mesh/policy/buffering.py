"""B(t) and T(t): context-sensitive buffer size (eq. 1-2), prediction clamping (eq. 5), adaptive timeout (eq. 3)."""

from __future__ import annotations

import math
from enum import StrEnum

from dapb_mesh.config import KernelConfig, PolicyConfig
from dapb_mesh.policy.conditions import Conditions


class Sensitivity(StrEnum):
    """L(t) of eq. 1: latency (L=1), throughput (L=0), or auto (decided from conditions)."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"
    AUTO = "auto"


def condition_buffer(cond: Conditions, cfg: PolicyConfig) -> float:
    """f(C(t)) = B_min + alpha*RTT + beta*loss + gamma*jitter (eq. 2), before clamping."""
    return (
        cfg.b_min_bytes
        + cfg.alpha_bytes_per_ms * cond.rtt_ms
        + cfg.beta_bytes_per_loss * cond.loss
        + cfg.gamma_bytes_per_ms * cond.jitter_ms
    )


def clamp_buffer(candidate: float, cfg: PolicyConfig) -> int:
    """B = min(B_max, max(B_min, P)) (eq. 5); a NaN candidate is not a size, so it gets B_min (never buffers more)."""
    if math.isnan(candidate) or candidate <= cfg.b_min_bytes:
        return cfg.b_min_bytes
    if candidate >= cfg.b_max_bytes:
        return cfg.b_max_bytes
    return max(cfg.b_min_bytes, math.floor(candidate))


def buffer_size(cond: Conditions, sensitivity: Sensitivity, cfg: PolicyConfig) -> int:
    """B(t) by eq. 1: B_min for latency traffic, B_max for throughput traffic, else clamp(f(C(t)))."""
    if sensitivity is Sensitivity.LATENCY:
        return cfg.b_min_bytes
    if sensitivity is Sensitivity.THROUGHPUT:
        return cfg.b_max_bytes
    return clamp_buffer(condition_buffer(cond, cfg), cfg)


def clamp_timeout(candidate: float, cfg: PolicyConfig) -> float:
    """Keep a timeout in [T_base, T_max]; NaN becomes T_base (the shortest hold)."""
    if math.isnan(candidate):
        return cfg.t_base_ms
    return min(cfg.t_max_ms, max(cfg.t_base_ms, candidate))


def timeout(cond: Conditions, cfg: PolicyConfig) -> float:
    """T(t) = T_base + delta*RTT + epsilon*loss + xi*jitter (eq. 3), capped by the hard ceiling T_max."""
    raw = cfg.t_base_ms + cfg.delta * cond.rtt_ms + cfg.epsilon_ms_per_loss * cond.loss + cfg.xi * cond.jitter_ms
    return clamp_timeout(raw, cfg)


def enforced_timeout(timeout_ms: float, kernel: KernelConfig) -> float:
    """The bound the kernel really enforces for a requested T: whole ticks, never under the delayed-ACK floor."""
    ticks = math.ceil(timeout_ms / kernel.tick_ms - 1e-9)
    bound = max(kernel.delack_floor_ms, ticks * kernel.tick_ms)
    return bound + (kernel.delack_max_extra_ms if kernel.ack_bound == "delack_max" else 0.0)


def kept_timeout(timeout_ms: float, t_max_ms: float, kernel: KernelConfig) -> float:
    """T rounded down to what the kernel can keep within T_max: the longest T' <= T whose T_eff <= T_max.

    The kernel rounds a request up to whole ticks (and adds DELACK_MAX's extra tick), so a T near T_max would be
    enforced past it. When even the shortest bound exceeds T_max (configuration validation refuses that) there is
    no such T' and the result is 0, whose T_eff is that shortest bound: callers check.
    """
    if enforced_timeout(timeout_ms, kernel) <= t_max_ms:
        return timeout_ms
    extra = kernel.delack_max_extra_ms if kernel.ack_bound == "delack_max" else 0.0
    ticks = max(0, math.floor((t_max_ms - extra) / kernel.tick_ms + 1e-9))
    while ticks > 0 and enforced_timeout(ticks * kernel.tick_ms, kernel) > t_max_ms:  # float rounding
        ticks -= 1
    return min(timeout_ms, ticks * kernel.tick_ms)
