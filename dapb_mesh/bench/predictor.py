"""Inference cost of the shipped predictor: one batch of N feature rows (one per socket or class), timed."""

from __future__ import annotations

import statistics
import time

import numpy as np

from dapb_mesh.config import Settings
from dapb_mesh.predictor import OnnxPredictor
from dapb_mesh.predictor.features import FEATURES


def run_predictor_bench(settings: Settings, rows: int = 10_000, repeats: int = 30) -> dict:
    predictor = OnnxPredictor(settings.agent.model)
    rng = np.random.default_rng(0)
    X = rng.uniform([0, 0, 0, 2], [20, 0.05, 5, 7], size=(rows, len(FEATURES))).astype(np.float32)
    predictor.predict(X, settings.policy)  # warm up
    raw_ms, full_ms = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.raw(X)
        raw_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        predictor.predict(X, settings.policy)
        full_ms.append((time.perf_counter() - t) * 1000)
    return {
        "scenario": "predictor",
        "model": str(settings.agent.model),
        "rows": rows,
        "onnx_batch_ms": {"p50": statistics.median(raw_ms), "max": max(raw_ms)},
        "with_predictions_ms": {"p50": statistics.median(full_ms), "max": max(full_ms)},
    }
