"""The predictor's inputs and outputs: one definition for the collector, the trainer and the server."""

from __future__ import annotations

import math

import numpy as np

from dapb_mesh.policy import Conditions

FEATURES = ("rtt_ms", "loss", "jitter_ms", "log10_bytes_per_s")
"""C(t) and the recent offered load (H(t): bytes per second, invariant under coalescing, unlike segment rates)."""
OUTPUTS = ("hold", "timeout_ms")
"""hold: fraction of the ensemble voting to hold data (mean of 0/1 tree outputs); timeout_ms: T(t) to use."""
INPUT_NAME = "features"

# Candidate decisions the collector measures in every context: no hold, or hold with each bound request.
CANDIDATE_TIMEOUTS_MS = (5.0, 12.0, 16.0, 24.0)
LATENCY_BUDGET_MS = 10.0
"""Objective weight: 10 ms of added p99 delay costs as much as sending one segment per message ..."""
TAIL_BUDGET_MS = 100.0
"""... and so do 100 ms of added worst-case delay: a hold that saves little must not cost a 10 ms tail."""


def feature_row(cond: Conditions, bytes_per_s: float) -> list[float]:
    return [cond.rtt_ms, cond.loss, cond.jitter_ms, math.log10(max(0.0, bytes_per_s) + 1.0)]


def objective(segments_per_message: float, p99_ms: float, max_ms: float, baseline_p99_ms: float) -> float:
    """Section 5.7 in one number for mixed contexts: fewer segments (N_reduced, efficiency) against added delay
    (L_added at p99, and the worst case) at the budgets' exchange rates. Lower is better."""
    return (
        segments_per_message
        + max(0.0, p99_ms - baseline_p99_ms) / LATENCY_BUDGET_MS
        + max(0.0, max_ms - baseline_p99_ms) / TAIL_BUDGET_MS
    )


def as_matrix(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(FEATURES))
