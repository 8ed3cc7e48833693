"""C(t): network conditions and the estimators that produce them from raw samples (pure, no I/O).

Each estimator is an immutable value: ``update`` returns a new estimator, so the agent, the bench and the trainer
can keep, copy and replay them. Samples that are not finite, negative or absurd are ignored and counted in
``rejected``; they never reach C(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dapb_mesh.config import EstimatorConfig


@dataclass(frozen=True)
class Conditions:
    """C(t): smoothed RTT and jitter in ms, loss as a fraction of segments in [0, 1]."""

    rtt_ms: float
    loss: float
    jitter_ms: float

    def __post_init__(self) -> None:
        for name in ("rtt_ms", "jitter_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.loss) or not 0 <= self.loss <= 1:
            raise ValueError(f"loss must be a fraction in [0, 1], got {self.loss!r}")


def _usable(sample: float, ceiling: float) -> bool:
    return math.isfinite(sample) and 0 <= sample <= ceiling


@dataclass(frozen=True)
class RttEstimator:
    """Smoothed RTT and mean deviation in the manner of RFC 6298 (srtt, rttvar)."""

    srtt_ms: float | None = None
    rttvar_ms: float = 0.0
    rejected: int = 0

    def update(self, sample_ms: float, cfg: EstimatorConfig) -> RttEstimator:
        if not _usable(sample_ms, cfg.max_rtt_ms):
            return replace(self, rejected=self.rejected + 1)
        if self.srtt_ms is None:
            return replace(self, srtt_ms=sample_ms, rttvar_ms=sample_ms / 2)
        gain = cfg.rtt_gain
        var_gain = min(1.0, 2 * gain)  # RFC 6298: beta = 1/4 when alpha = 1/8
        rttvar = (1 - var_gain) * self.rttvar_ms + var_gain * abs(self.srtt_ms - sample_ms)
        srtt = (1 - gain) * self.srtt_ms + gain * sample_ms
        return replace(self, srtt_ms=srtt, rttvar_ms=rttvar)


@dataclass(frozen=True)
class JitterEstimator:
    """Interarrival jitter of RFC 3550 (section 6.4.1): J += (|D| - J) * gain, D the change in transit time."""

    jitter_ms: float = 0.0
    last_transit_ms: float | None = None
    rejected: int = 0

    def update(self, transit_ms: float, cfg: EstimatorConfig) -> JitterEstimator:
        if not _usable(transit_ms, cfg.max_rtt_ms):
            return replace(self, rejected=self.rejected + 1)
        if self.last_transit_ms is None:
            return replace(self, last_transit_ms=transit_ms)
        d = abs(transit_ms - self.last_transit_ms)
        jitter = self.jitter_ms + (d - self.jitter_ms) * cfg.jitter_gain
        return replace(self, jitter_ms=jitter, last_transit_ms=transit_ms)


@dataclass(frozen=True)
class LossEstimator:
    """Loss rate = retransmitted / sent segments over a sliding window of recent segments.

    Fed with cumulative counters (as TCP_INFO and the kernel's telemetry map give them); the window decays the
    older counts proportionally once it is full, so old losses fade instead of dropping off a cliff.
    """

    sent: float = 0.0
    retransmitted: float = 0.0
    last_sent_total: int | None = None
    last_retrans_total: int | None = None
    rejected: int = 0

    def update(self, sent_total: int, retrans_total: int, cfg: EstimatorConfig) -> LossEstimator:
        if sent_total < 0 or retrans_total < 0:
            return replace(self, rejected=self.rejected + 1)
        if self.last_sent_total is None or self.last_retrans_total is None:
            return replace(self, last_sent_total=sent_total, last_retrans_total=retrans_total)
        d_sent = sent_total - self.last_sent_total
        d_retrans = retrans_total - self.last_retrans_total
        if d_sent < 0 or d_retrans < 0 or d_retrans > max(d_sent, 0):
            # A counter went backwards (socket reuse) or more retransmits than segments: start over.
            return LossEstimator(
                last_sent_total=sent_total, last_retrans_total=retrans_total, rejected=self.rejected + 1
            )
        sent = self.sent + d_sent
        retrans = self.retransmitted + d_retrans
        window = cfg.loss_window_segments
        if sent > window:
            scale = window / sent
            sent, retrans = sent * scale, retrans * scale
        return replace(
            self, sent=sent, retransmitted=retrans, last_sent_total=sent_total, last_retrans_total=retrans_total
        )

    @property
    def loss(self) -> float:
        return 0.0 if self.sent <= 0 else min(1.0, self.retransmitted / self.sent)


@dataclass(frozen=True)
class ConditionEstimator:
    """The three estimators together; ``conditions`` is C(t), or None before any RTT sample."""

    rtt: RttEstimator = RttEstimator()
    jitter: JitterEstimator = JitterEstimator()
    loss: LossEstimator = LossEstimator()

    def observe(
        self,
        cfg: EstimatorConfig,
        *,
        rtt_ms: float | None = None,
        transit_ms: float | None = None,
        sent_total: int | None = None,
        retrans_total: int | None = None,
    ) -> ConditionEstimator:
        rtt, jitter, loss = self.rtt, self.jitter, self.loss
        if rtt_ms is not None:
            rtt = rtt.update(rtt_ms, cfg)
            # Without one-way transit times, successive RTT samples give the jitter (their change).
            if transit_ms is None:
                jitter = jitter.update(rtt_ms, cfg)
        if transit_ms is not None:
            jitter = jitter.update(transit_ms, cfg)
        if sent_total is not None and retrans_total is not None:
            loss = loss.update(sent_total, retrans_total, cfg)
        return ConditionEstimator(rtt=rtt, jitter=jitter, loss=loss)

    @property
    def rejected(self) -> int:
        return self.rtt.rejected + self.jitter.rejected + self.loss.rejected

    def conditions(self) -> Conditions | None:
        if self.rtt.srtt_ms is None:
            return None
        return Conditions(rtt_ms=self.rtt.srtt_ms, loss=self.loss.loss, jitter_ms=self.jitter.jitter_ms)
