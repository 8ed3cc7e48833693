"""The decision: B(t), T(t), U(t), E(t) for one class or connection, with the paper's two mitigations.

- confidence fallback: in predictor mode, a prediction that is absent, not finite or below the confidence floor
  is replaced by the static Nagle-like thresholds (section 6, risk 1);
- hysteresis: a new decision replaces the previous one only when conditions move beyond a threshold, or the class
  or urgency changes (section 6, risk 4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum

from dapb_mesh.config import KernelConfig, PolicyConfig
from dapb_mesh.policy.buffering import (
    Sensitivity,
    buffer_size,
    clamp_buffer,
    clamp_timeout,
    enforced_timeout,
    kept_timeout,
    timeout,
)
from dapb_mesh.policy.conditions import Conditions
from dapb_mesh.policy.energy import energy_cost
from dapb_mesh.policy.urgency import DSCP_DEFAULT, DSCP_LATENCY, DSCP_THROUGHPUT, clamp_urgency


class Source(StrEnum):
    """Which rule produced B(t)."""

    LATENCY_CLASS = "latency-class"  # eq. 1, L(t) = 1
    THROUGHPUT_CLASS = "throughput-class"  # eq. 1, L(t) = 0
    URGENT = "urgent"  # eq. 6: U(t) > U_th, send at once
    FORMULA = "formula"  # eq. 2
    PREDICTION = "prediction"  # eq. 4-5
    FALLBACK = "fallback"  # static Nagle-like thresholds


@dataclass(frozen=True)
class Prediction:
    """P(t) from the predictor (eq. 4): a buffer size in bytes, an optional timeout, and a confidence in [0, 1]."""

    buffer_bytes: float
    confidence: float
    timeout_ms: float | None = None


@dataclass(frozen=True)
class Knobs:
    """How a decision is enforced on a socket: the sender's Nagle switch, the receiver's ACK bound, the DSCP."""

    nodelay: bool
    ack_bound_ms: float | None
    dscp: int
    enforcer: str  # "none" (send at once) or "kernel" (Nagle + bounded delayed ACK)


@dataclass(frozen=True)
class Decision:
    sensitivity: Sensitivity
    source: Source
    buffer_bytes: int
    timeout_ms: float
    enforced_timeout_ms: float | None
    urgency: float
    energy: float
    fallback: bool
    reason: str
    conditions: Conditions
    knobs: Knobs
    offered_bytes_per_s: float | None = None  # the load per stream the enforcer was chosen for (None: unknown)

    @property
    def filter_hold(self) -> tuple[int, int]:
        """(hold_bytes, hold_ms) for the sidecar filter: (0, 0) unless the filter enforces this decision. The
        filter's clock counts whole milliseconds: never hold past the enforced bound."""
        if self.knobs.enforcer != "filter" or self.enforced_timeout_ms is None:
            return (0, 0)
        return (self.buffer_bytes, max(1, math.floor(self.enforced_timeout_ms)))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["sensitivity"] = self.sensitivity.value
        out["source"] = self.source.value
        return out


def _usable(prediction: Prediction | None, cfg: PolicyConfig) -> str | None:
    """None if the prediction may be used, else why not."""
    if prediction is None:
        return "no prediction available"
    if not math.isfinite(prediction.buffer_bytes):
        return f"prediction is not finite ({prediction.buffer_bytes!r})"
    if prediction.timeout_ms is not None and not math.isfinite(prediction.timeout_ms):
        return f"predicted timeout is not finite ({prediction.timeout_ms!r})"
    if not math.isfinite(prediction.confidence) or prediction.confidence < cfg.confidence_floor:
        return f"confidence {prediction.confidence:.3g} is below the floor {cfg.confidence_floor:.3g}"
    return None


def decide(
    cond: Conditions,
    sensitivity: Sensitivity,
    policy: PolicyConfig,
    kernel: KernelConfig,
    *,
    urgency: float = 0.0,
    use_predictor: bool = False,
    prediction: Prediction | None = None,
    offered_bytes_per_s: float | None = None,
) -> Decision:
    """Decide B(t), T(t) and how to enforce them for traffic of ``sensitivity`` under conditions ``cond``.

    ``urgency`` is U(t) of the traffic (declared by the application, the route, or measured); above U_th it is
    sent at once. With ``use_predictor`` the buffer comes from ``prediction`` (eq. 4-5) or, when that is not
    usable, from the static thresholds; otherwise from the formula (eq. 1-2).
    """
    u = clamp_urgency(urgency)
    fallback = False
    if sensitivity is Sensitivity.LATENCY:
        source, reason = Source.LATENCY_CLASS, "latency-sensitive traffic gets B_min (eq. 1)"
        b, t = policy.b_min_bytes, policy.t_base_ms
    elif u > policy.u_threshold:
        source, reason = Source.URGENT, f"urgency {u:.2f} > U_th {policy.u_threshold:.2f}: send at once (eq. 6)"
        b, t = policy.b_min_bytes, policy.t_base_ms
    elif sensitivity is Sensitivity.THROUGHPUT:
        source, reason = Source.THROUGHPUT_CLASS, "throughput-sensitive traffic gets B_max (eq. 1)"
        b, t = buffer_size(cond, sensitivity, policy), timeout(cond, policy)
    elif use_predictor:
        why_not = _usable(prediction, policy)
        if why_not is None:
            assert prediction is not None
            source = Source.PREDICTION
            reason = f"predicted {prediction.buffer_bytes:.0f} B at confidence {prediction.confidence:.2f} (eq. 4-5)"
            b = clamp_buffer(prediction.buffer_bytes, policy)
            t = timeout(cond, policy) if prediction.timeout_ms is None else clamp_timeout(prediction.timeout_ms, policy)
        else:
            source, fallback = Source.FALLBACK, True
            reason = f"{why_not}: static Nagle-like thresholds"
            b, t = policy.static_buffer_bytes, policy.static_timeout_ms
    else:
        source, reason = Source.FORMULA, "B from network conditions (eq. 2), clamped (eq. 5)"
        b, t = buffer_size(cond, sensitivity, policy), timeout(cond, policy)

    holds = b > policy.b_min_bytes and b >= max(policy.min_hold_bytes, 1)
    # T_max caps the bound the kernel enforces, not only T: it rounds T up to T_eff, so T goes down to fit.
    t_kernel = kept_timeout(t, policy.t_max_ms, kernel)
    t_eff_kernel = enforced_timeout(t_kernel, kernel)
    if holds and kernel_cannot_fill(offered_bytes_per_s, t_eff_kernel, kernel):
        # Too little traffic to fill segments within the kernel's bound: the sidecar's filter holds instead, for
        # T(t) or the shortest hold its timer can keep (never past T_max); the sockets keep NODELAY.
        enforced = min(max(t, policy.filter_min_hold_ms), policy.t_max_ms)
        knobs = Knobs(nodelay=True, ack_bound_ms=None, dscp=_dscp(sensitivity), enforcer="filter")
        reason += f"; {offered_bytes_per_s:.0f} B/s cannot fill segments within the kernel's bound: the filter holds"
    elif holds and t_eff_kernel <= policy.t_max_ms:
        if t_kernel < t:
            reason += f"; T {t:.3g} ms rounded down to {t_kernel:g} ms: the kernel's bound for it stays within T_max"
        t, enforced = t_kernel, t_eff_kernel
        knobs = Knobs(nodelay=False, ack_bound_ms=enforced, dscp=_dscp(sensitivity), enforcer="kernel")
    else:
        if holds:  # only with a policy and kernel that configuration validation would not have paired
            reason += f"; the kernel's shortest bound ({kernel.shortest_bound_ms:g} ms) exceeds T_max: sent at once"
        enforced = None
        knobs = Knobs(nodelay=True, ack_bound_ms=None, dscp=_dscp(sensitivity, urgent=True), enforcer="none")
    return Decision(
        sensitivity=sensitivity,
        source=source,
        buffer_bytes=b,
        timeout_ms=t,
        enforced_timeout_ms=enforced,
        urgency=u,
        energy=energy_cost(b, t, policy),
        fallback=fallback,
        reason=reason,
        conditions=cond,
        knobs=knobs,
        offered_bytes_per_s=offered_bytes_per_s,
    )


KERNEL_FILL_SEGMENTS = 1.4
"""Measured (docs/kernel.md, models/training.db): the kernel coalesces when about 1.4 MSS arrive within T_eff
(3,000 x 64 B within 12 ms did, 1,000 x 64 B within 12 ms did not)."""


def kernel_cannot_fill(offered_bytes_per_s: float | None, t_eff_ms: float, kernel: KernelConfig) -> bool:
    """True when the offered load is known and too low for Nagle + a bounded delayed ACK to coalesce."""
    if offered_bytes_per_s is None or not math.isfinite(offered_bytes_per_s):
        return False
    return offered_bytes_per_s * t_eff_ms / 1000 < KERNEL_FILL_SEGMENTS * kernel.mss_bytes


def _dscp(sensitivity: Sensitivity, urgent: bool = False) -> int:
    if urgent or sensitivity is Sensitivity.LATENCY:
        return DSCP_LATENCY
    return DSCP_THROUGHPUT if sensitivity is Sensitivity.THROUGHPUT else DSCP_DEFAULT


def conditions_moved(old: Conditions, new: Conditions, cfg: PolicyConfig) -> bool:
    """True when C(t) moved beyond the hysteresis thresholds since the decision in force was made."""
    rtt_limit = cfg.hysteresis_rtt_fraction * max(old.rtt_ms, 1e-3)
    return (
        abs(new.rtt_ms - old.rtt_ms) > rtt_limit
        or abs(new.loss - old.loss) > cfg.hysteresis_loss
        or abs(new.jitter_ms - old.jitter_ms) > cfg.hysteresis_jitter_ms
    )


def with_hysteresis(previous: Decision | None, candidate: Decision, cfg: PolicyConfig) -> tuple[Decision, bool]:
    """Return the decision to keep in force and whether it changed.

    The candidate replaces the previous decision when there is none, when the class, rule or fallback state
    differs, or when conditions moved beyond the thresholds; otherwise the previous one stays, so that small
    wobbles of C(t) cause no churn of kernel maps.
    """
    if previous is None:
        return candidate, True
    same_rule = (
        previous.sensitivity is candidate.sensitivity
        and previous.source is candidate.source
        and previous.fallback == candidate.fallback
    )
    if same_rule:
        if previous.knobs.enforcer != candidate.knobs.enforcer:
            # the load may just wobble around the kernel/filter crossover: keep the enforcer until it moved
            moved = rate_moved(previous, candidate, cfg)
        else:
            moved = conditions_moved(previous.conditions, candidate.conditions, cfg)
        if not moved:
            return previous, False
    return candidate, candidate != previous


def rate_moved(old: Decision, new: Decision, cfg: PolicyConfig) -> bool:
    """True when the offered load per stream moved beyond the hysteresis fraction (or became known/unknown)."""
    a, b = old.offered_bytes_per_s, new.offered_bytes_per_s
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(b - a) > cfg.hysteresis_rate_fraction * max(a, 1.0)
