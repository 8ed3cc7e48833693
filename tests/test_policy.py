"""The policy engine (eq. 1-7) and its invariants, proven with hypothesis over the whole input space."""

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dapb_mesh.config import KernelConfig, PolicyConfig, Settings
from dapb_mesh.policy import (
    ConditionEstimator,
    Conditions,
    Prediction,
    Sensitivity,
    Source,
    buffer_size,
    clamp_buffer,
    decide,
    dscp_urgency,
    energy_cost,
    enforced_timeout,
    mean_urgency,
    should_flush,
    timeout,
    with_hysteresis,
)

CFG = Settings()
P, K = CFG.policy, CFG.kernel

rtts = st.floats(min_value=0, max_value=10_000, allow_nan=False)
losses = st.floats(min_value=0, max_value=1, allow_nan=False)
jitters = st.floats(min_value=0, max_value=10_000, allow_nan=False)
weights = st.floats(min_value=0, max_value=1e6, allow_nan=False)
conditions = st.builds(Conditions, rtt_ms=rtts, loss=losses, jitter_ms=jitters)
anything = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def policies(draw):
    b_min = draw(st.integers(0, 4096))
    b_max = draw(st.integers(b_min, 1 << 20))
    t_base = draw(st.floats(0, 50, allow_nan=False))
    t_max = draw(st.floats(t_base, 1000, allow_nan=False))
    return PolicyConfig(
        b_min_bytes=b_min,
        b_max_bytes=b_max,
        alpha_bytes_per_ms=draw(weights),
        beta_bytes_per_loss=draw(weights),
        gamma_bytes_per_ms=draw(weights),
        t_base_ms=t_base,
        t_max_ms=t_max,
        delta=draw(weights),
        epsilon_ms_per_loss=draw(weights),
        xi=draw(weights),
        static_buffer_bytes=b_min,
        static_timeout_ms=t_base,
    )


def test_worked_example_matches_hand_computation():
    cond = Conditions(rtt_ms=20, loss=0.01, jitter_ms=3)
    # eq. 2: 0 + 64*20 + 20000*0.01 + 32*3 = 1576 B; eq. 3: 2 + 0.5*20 + 200*0.01 + 1*3 = 17 ms
    assert buffer_size(cond, Sensitivity.AUTO, P) == 1576
    assert timeout(cond, P) == pytest.approx(17.0)
    d = decide(cond, Sensitivity.AUTO, P, K)
    assert d.source is Source.FORMULA
    assert d.enforced_timeout_ms == 24.0  # 17 ms rounds up to 5 ticks of 4 ms, plus DELACK_MAX's extra tick
    assert d.energy == pytest.approx(0.001 * 1576 + 0.1 * 17.0)


@given(conditions, policies(), st.sampled_from(list(Sensitivity)))
def test_buffer_within_bounds_and_timeout_within_bounds(cond, cfg, sens):
    b = buffer_size(cond, sens, cfg)
    assert cfg.b_min_bytes <= b <= cfg.b_max_bytes
    t = timeout(cond, cfg)
    assert cfg.t_base_ms <= t <= cfg.t_max_ms


@given(conditions, policies())
def test_latency_sensitive_always_gets_b_min(cond, cfg):
    assert buffer_size(cond, Sensitivity.LATENCY, cfg) == cfg.b_min_bytes
    d = decide(cond, Sensitivity.LATENCY, cfg, K, urgency=0.0)
    assert d.buffer_bytes == cfg.b_min_bytes and d.knobs.nodelay and d.enforced_timeout_ms is None


@given(conditions, conditions, policies())
def test_monotone_in_rtt_loss_and_jitter(a, b, cfg):
    lo = Conditions(min(a.rtt_ms, b.rtt_ms), min(a.loss, b.loss), min(a.jitter_ms, b.jitter_ms))
    hi = Conditions(max(a.rtt_ms, b.rtt_ms), max(a.loss, b.loss), max(a.jitter_ms, b.jitter_ms))
    assert buffer_size(lo, Sensitivity.AUTO, cfg) <= buffer_size(hi, Sensitivity.AUTO, cfg)
    assert timeout(lo, cfg) <= timeout(hi, cfg)


@given(anything, policies())
def test_clamp_never_lets_nan_or_inf_escape(p, cfg):
    b = clamp_buffer(p, cfg)
    assert isinstance(b, int) and cfg.b_min_bytes <= b <= cfg.b_max_bytes


@given(conditions, anything, anything, anything, st.sampled_from(list(Sensitivity)))
def test_decision_is_always_finite_and_bounded(cond, predicted, confidence, urgency, sens):
    d = decide(
        cond,
        sens,
        P,
        K,
        urgency=urgency,
        use_predictor=True,
        prediction=Prediction(buffer_bytes=predicted, confidence=confidence, timeout_ms=predicted),
    )
    assert P.b_min_bytes <= d.buffer_bytes <= P.b_max_bytes
    assert P.t_base_ms <= d.timeout_ms <= P.t_max_ms
    assert math.isfinite(d.energy) and 0 <= d.urgency <= 1
    if d.enforced_timeout_ms is not None:
        assert d.enforced_timeout_ms >= d.timeout_ms and d.enforced_timeout_ms >= K.delack_floor_ms


@pytest.mark.parametrize(
    ("prediction", "why"),
    [
        (None, "no prediction"),
        (Prediction(buffer_bytes=float("nan"), confidence=0.9), "not finite"),
        (Prediction(buffer_bytes=float("inf"), confidence=0.9), "not finite"),
        (Prediction(buffer_bytes=4000, confidence=0.2), "below the floor"),
    ],
)
def test_unusable_prediction_falls_back_to_static_thresholds(prediction, why):
    d = decide(Conditions(5, 0, 1), Sensitivity.AUTO, P, K, use_predictor=True, prediction=prediction)
    assert d.fallback and d.source is Source.FALLBACK
    assert (d.buffer_bytes, d.timeout_ms) == (P.static_buffer_bytes, P.static_timeout_ms)
    assert why in d.reason


def test_confident_prediction_is_clamped_by_eq5():
    cond = Conditions(5, 0, 1)
    big = decide(cond, Sensitivity.AUTO, P, K, use_predictor=True, prediction=Prediction(1e9, 0.99))
    mid = decide(cond, Sensitivity.AUTO, P, K, use_predictor=True, prediction=Prediction(3000.7, 0.99))
    assert big.buffer_bytes == P.b_max_bytes and big.source is Source.PREDICTION
    assert mid.buffer_bytes == 3000 and not mid.fallback


def test_urgent_traffic_is_sent_at_once_even_in_throughput_class():
    d = decide(Conditions(20, 0, 1), Sensitivity.THROUGHPUT, P, K, urgency=0.9)
    assert d.source is Source.URGENT and d.knobs.nodelay and d.buffer_bytes == P.b_min_bytes


def test_tiny_buffer_is_not_worth_holding():
    d = decide(Conditions(0.05, 0, 0.01), Sensitivity.AUTO, P, K)
    assert d.buffer_bytes < P.min_hold_bytes and d.knobs.nodelay


@pytest.mark.parametrize(("requested", "enforced"), [(0.5, 8), (8, 8), (8.1, 12), (17, 20), (20, 20), (49, 52)])
def test_enforced_timeout_is_whole_ticks_above_the_floor(requested, enforced):
    assert enforced_timeout(requested, KernelConfig(ack_bound="rto_min")) == enforced
    # TCP_BPF_DELACK_MAX was measured one tick looser for the same request
    assert enforced_timeout(requested, KernelConfig(ack_bound="delack_max")) == enforced + 4


def test_eq6_mean_urgency_and_flush_rule():
    assert mean_urgency([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert mean_urgency([]) == 0.0
    assert mean_urgency([float("nan"), 2.0]) == pytest.approx(0.5)  # NaN -> 0, 2 -> 1
    assert should_flush([0.9, 0.8], buffered_bytes=10, buffer_bytes=1000, u_threshold=0.5)
    assert not should_flush([0.1, 0.2], buffered_bytes=10, buffer_bytes=1000, u_threshold=0.5)
    assert should_flush([0.1], buffered_bytes=1000, buffer_bytes=1000, u_threshold=0.5)
    assert dscp_urgency(46) == 1.0 and dscp_urgency(10) < 0.5
    with pytest.raises(ValueError, match=r"0\.\.63"):
        dscp_urgency(64)


def test_eq7_energy():
    assert energy_cost(1000, 10, P) == pytest.approx(P.eta_per_byte * 1000 + P.theta_per_ms * 10)


def test_hysteresis_keeps_decision_for_small_moves_and_changes_for_large():
    first = decide(Conditions(10, 0.0, 1.0), Sensitivity.AUTO, P, K)
    wobble = decide(Conditions(11, 0.001, 1.5), Sensitivity.AUTO, P, K)
    kept, changed = with_hysteresis(first, wobble, P)
    assert kept is first and not changed
    jump = decide(Conditions(30, 0.0, 1.0), Sensitivity.AUTO, P, K)
    now, changed = with_hysteresis(first, jump, P)
    assert now is jump and changed
    other_class = decide(Conditions(10, 0.0, 1.0), Sensitivity.LATENCY, P, K)
    assert with_hysteresis(first, other_class, P) == (other_class, True)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_estimators_reject_non_finite_samples(samples):
    est = ConditionEstimator()
    cfg = Settings().estimator
    for s in samples:
        est = est.observe(cfg, rtt_ms=s)
    bad = sum(1 for s in samples if not (math.isfinite(s) and 0 <= s <= cfg.max_rtt_ms))
    assert est.rtt.rejected == bad
    cond = est.conditions()
    assume(cond is not None)
    assert math.isfinite(cond.rtt_ms) and math.isfinite(cond.jitter_ms)


def test_rtt_estimator_follows_rfc6298():
    cfg = Settings().estimator
    est = ConditionEstimator().observe(cfg, rtt_ms=10).observe(cfg, rtt_ms=18)
    assert est.rtt.srtt_ms == pytest.approx(0.875 * 10 + 0.125 * 18)
    assert est.rtt.rttvar_ms == pytest.approx(0.75 * 5 + 0.25 * 8)
    assert est.jitter.jitter_ms == pytest.approx(8 / 16)


def test_loss_estimator_uses_counter_deltas_and_resets_on_wrap():
    cfg = Settings().estimator
    est = ConditionEstimator()
    est = est.observe(cfg, rtt_ms=1, sent_total=100, retrans_total=0)
    est = est.observe(cfg, rtt_ms=1, sent_total=300, retrans_total=10)
    assert est.conditions().loss == pytest.approx(10 / 200)
    est = est.observe(cfg, rtt_ms=1, sent_total=5, retrans_total=0)  # socket reused: counters went back
    assert est.conditions().loss == 0 and est.loss.rejected == 1


def test_loss_window_forgets_old_losses():
    cfg = Settings().estimator
    est = ConditionEstimator().observe(cfg, rtt_ms=1, sent_total=0, retrans_total=0)
    est = est.observe(cfg, rtt_ms=1, sent_total=1000, retrans_total=100)
    for i in range(2, 12):
        est = est.observe(cfg, rtt_ms=1, sent_total=1000 * i, retrans_total=100)
    assert est.conditions().loss < 0.04


def test_enforcer_is_the_filter_when_the_kernel_cannot_fill_segments_within_its_bound():
    cond = Conditions(0.1, 0.0, 0.0)
    low = decide(cond, Sensitivity.THROUGHPUT, P, K, offered_bytes_per_s=1000 * 64)
    high = decide(cond, Sensitivity.THROUGHPUT, P, K, offered_bytes_per_s=10_000 * 64)
    unknown = decide(cond, Sensitivity.THROUGHPUT, P, K)
    assert low.knobs.enforcer == "filter" and low.knobs.nodelay
    # T(t) is about 2 ms on this hop; the filter's timer cannot keep less than filter_min_hold_ms
    assert low.enforced_timeout_ms == max(low.timeout_ms, P.filter_min_hold_ms) == 8.0
    assert "the filter holds" in low.reason
    assert high.knobs.enforcer == "kernel" and not high.knobs.nodelay
    assert unknown.knobs.enforcer == "kernel"
    latency = decide(cond, Sensitivity.LATENCY, P, K, offered_bytes_per_s=64)
    assert latency.knobs.enforcer == "none"


def test_the_enforcer_does_not_flap_around_the_crossover():
    """The kernel fills 1.4 MSS within T_eff = 12 ms from about 169 kB/s per stream: near that load the enforcer
    in force stays until the load moved by more than hysteresis_rate_fraction."""
    cond = Conditions(0.1, 0.0, 0.0)

    def at(rate: float):
        return decide(cond, Sensitivity.THROUGHPUT, P, K, offered_bytes_per_s=rate)

    held = at(150_000)
    assert held.knobs.enforcer == "filter"
    assert held.filter_hold == (held.buffer_bytes, math.floor(held.enforced_timeout_ms))
    kept, changed = with_hysteresis(held, at(175_000), P)  # past the crossover, but only 17% more load
    assert kept is held and not changed
    switched, changed = with_hysteresis(held, at(200_000), P)
    assert changed and switched.knobs.enforcer == "kernel" and switched.filter_hold == (0, 0)
    back, changed = with_hysteresis(switched, at(165_000), P)  # below the crossover, 17.5% less: stays kernel
    assert back is switched and not changed


@given(st.lists(st.floats(50_000, 400_000), min_size=2, max_size=40))
def test_enforcer_switches_only_on_a_load_change_beyond_the_fraction(rates):
    cond = Conditions(0.1, 0.0, 0.0)
    in_force = decide(cond, Sensitivity.THROUGHPUT, P, K, offered_bytes_per_s=rates[0])
    for rate in rates[1:]:
        candidate = decide(cond, Sensitivity.THROUGHPUT, P, K, offered_bytes_per_s=rate)
        kept, _ = with_hysteresis(in_force, candidate, P)
        if kept.knobs.enforcer != in_force.knobs.enforcer:
            assert abs(rate - in_force.offered_bytes_per_s) > P.hysteresis_rate_fraction * in_force.offered_bytes_per_s
        in_force = kept
