"""The DAPB algorithm as pure functions: what to decide, never how to enforce it (no I/O here)."""

from dapb_mesh.policy.buffering import (
    Sensitivity,
    buffer_size,
    clamp_buffer,
    condition_buffer,
    enforced_timeout,
    timeout,
)
from dapb_mesh.policy.conditions import ConditionEstimator, Conditions
from dapb_mesh.policy.decision import Decision, Knobs, Prediction, Source, decide, with_hysteresis
from dapb_mesh.policy.energy import energy_cost
from dapb_mesh.policy.urgency import dscp_urgency, mean_urgency, should_flush

__all__ = [
    "ConditionEstimator",
    "Conditions",
    "Decision",
    "Knobs",
    "Prediction",
    "Sensitivity",
    "Source",
    "buffer_size",
    "clamp_buffer",
    "condition_buffer",
    "decide",
    "dscp_urgency",
    "energy_cost",
    "enforced_timeout",
    "mean_urgency",
    "should_flush",
    "timeout",
    "with_hysteresis",
]
