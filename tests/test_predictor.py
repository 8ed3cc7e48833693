"""The predictor: targets from measured outcomes, ONNX fidelity, determinism, and every way a model can fail."""

import json

import numpy as np
import pytest

from dapb_mesh.config import Settings
from dapb_mesh.policy import Conditions, Sensitivity, Source, decide
from dapb_mesh.predictor import ModelError, OnnxPredictor, load_predictor
from dapb_mesh.predictor.features import FEATURES, as_matrix, feature_row
from dapb_mesh.predictor.train import build_targets, fit, to_onnx

P = Settings().policy


def synthetic_samples(n_contexts=24, seed=1):
    """Outcomes shaped like the measured ones: holding pays from about 5,000 msg/s of 64 B on."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_contexts):
        rate = float(rng.choice([500, 1000, 2000, 5000, 8000, 12000, 20000]))
        loss = float(rng.choice([0.0, 0.01]))
        ctx = json.dumps({"rate": rate, "size": 64, "loss": loss, "i": i})
        for hold, t in [(0, 0.0), (1, 5.0), (1, 12.0)]:
            coalesces = hold and (rate >= 5000 or (rate >= 3000 and t >= 12))
            rows.append(
                {
                    "context": ctx,
                    "rtt_ms": 0.05,
                    "loss": loss,
                    "jitter_ms": 0.0,
                    "bytes_per_s": rate * 64,
                    "hold": hold,
                    "timeout_ms": t,
                    "segments_per_message": 0.09 if coalesces else 1.0,
                    "p50_ms": 1.0 if hold else 0.03,
                    "p99_ms": (2.0 if coalesces else 0.1 + t / 10) if hold else 0.1,
                    "max_ms": 8.0,
                    "lost_bytes": 0,
                    "baseline_p99_ms": 0.1,
                }
            )
    return rows


def test_targets_pick_the_measured_best_candidate_per_context():
    ts = build_targets(synthetic_samples())
    for ctx, (hold, _timeout) in zip(ts.contexts, ts.y, strict=True):
        rate = json.loads(ctx)["rate"]
        assert hold == (1.0 if rate >= 5000 else 0.0), ctx


def test_onnx_and_scikit_learn_agree_and_fitting_is_deterministic(tmp_path):
    ts = build_targets(synthetic_samples())
    model = fit(ts)
    blob = to_onnx(model)
    assert blob == to_onnx(fit(ts))  # same data, same bytes
    path = tmp_path / "m.onnx"
    path.write_bytes(blob)
    X = np.random.default_rng(7).uniform([0, 0, 0, 3], [5, 0.05, 2, 7], size=(500, len(FEATURES))).astype(np.float32)
    np.testing.assert_allclose(OnnxPredictor(path).raw(X), model.predict(X), atol=1e-5, rtol=1e-5)


def test_prediction_holds_at_high_load_and_not_at_low_load(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(fit(build_targets(synthetic_samples()))))
    cond = Conditions(0.05, 0.0, 0.0)
    high, low = OnnxPredictor(path).predict(as_matrix([feature_row(cond, 20000 * 64), feature_row(cond, 500 * 64)]), P)
    assert high.buffer_bytes == P.b_max_bytes and high.confidence > 0.6
    assert low.buffer_bytes == P.b_min_bytes


def test_missing_corrupt_and_mismatched_models_are_refused_clearly(tmp_path, caplog):
    with pytest.raises(ModelError, match="no such model file"):
        OnnxPredictor(tmp_path / "absent.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxPredictor(bad)
    assert load_predictor(bad) is None and "predictor disabled" in caplog.text
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor

    wrong = RandomForestRegressor(n_estimators=3, random_state=0).fit(np.zeros((4, 3)), np.zeros((4, 2)))
    onx = convert_sklearn(wrong, initial_types=[("features", FloatTensorType([None, 3]))])
    mismatched = tmp_path / "three.onnx"
    mismatched.write_bytes(onx.SerializeToString())
    with pytest.raises(ModelError, match=r"shape \[N, 4\]"):
        OnnxPredictor(mismatched)


def test_a_split_ensemble_falls_back_to_static_thresholds(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(fit(build_targets(synthetic_samples()))))
    predictor = OnnxPredictor(path)
    # Find the load where the ensemble's vote crosses 0.5: there its confidence is lowest.
    loads = np.logspace(4, 6.5, 400)
    preds = predictor.predict(as_matrix([feature_row(Conditions(0.05, 0, 0), b) for b in loads]), P)
    unsure = min(preds, key=lambda p: p.confidence)
    assert unsure.confidence < P.confidence_floor
    d = decide(Conditions(0.05, 0, 0), Sensitivity.AUTO, P, Settings().kernel, use_predictor=True, prediction=unsure)
    assert d.source is Source.FALLBACK and d.buffer_bytes == P.static_buffer_bytes


def test_agent_with_a_corrupt_model_decides_by_formula(tmp_path):
    from dapb_mesh.agent import Agent
    from dapb_mesh.config import parse_settings

    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"garbage")
    s = parse_settings({"agent": {"use_predictor": True, "model": str(bad), "store": str(tmp_path / "h.db")}})
    agent = Agent(s, dry_run=True)
    agent.start()
    try:
        assert agent.predictor is None
        agent.tick()
        sources = {src for (_, src) in agent.decision_counts}
        assert "formula" in sources and "prediction" not in sources and "fallback" not in sources
    finally:
        agent.stop()


def test_quick_collection_on_the_real_hop_learns_to_hold_at_10k(tmp_path):
    from dapb_mesh.bench.collect import QUICK_GRID, collect
    from dapb_mesh.store import HistoryStore

    store = HistoryStore(tmp_path / "t.db")
    rows = collect(QUICK_GRID, store, Settings(), duration_s=0.5, timeouts_ms=(12.0,))
    assert rows == 4 and store.count("samples") == 4
    ts = build_targets(store.samples())
    by_rate = {json.loads(c)["rate"]: y for c, y in zip(ts.contexts, ts.y, strict=True)}
    assert by_rate[10000][0] == 1.0  # measured: holding at 10,000 msg/s cuts segments tenfold
    assert all(s["lost_bytes"] == 0 for s in store.samples())
