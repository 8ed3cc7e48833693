"""`dapb train fit`: per-context targets from measured outcomes, a random-forest ensemble, ONNX export.

Targets: in every context, the candidate decision (no hold, or hold with bound T) with the lowest objective
(features.objective: segments per message against added p99 delay, section 5.7). The grid is discrete and every
point is measured, so the search is exhaustive rather than the paper's differential evolution.
Deterministic: fixed seeds, sorted inputs, single-threaded fitting.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dapb_mesh.predictor.features import FEATURES, INPUT_NAME, LATENCY_BUDGET_MS, OUTPUTS, TAIL_BUDGET_MS, objective

SEED = 20261126
N_TREES = 64
MAX_DEPTH = 6


@dataclass
class TrainingSet:
    contexts: list[str]
    X: np.ndarray  # [n, len(FEATURES)]
    y: np.ndarray  # [n, 2]: hold (0/1), timeout_ms
    regret_table: dict[str, dict[tuple[int, float], float]]  # context -> candidate -> objective


def build_targets(samples: list[dict]) -> TrainingSet:
    by_context: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_context[s["context"]].append(s)
    contexts, X, y, table = [], [], [], {}
    for ctx in sorted(by_context):
        rows = by_context[ctx]
        scores = {
            (r["hold"], r["timeout_ms"]): objective(
                r["segments_per_message"], r["p99_ms"], r["max_ms"], r["baseline_p99_ms"]
            )
            for r in rows
        }
        (hold, timeout), _ = min(scores.items(), key=lambda kv: (kv[1], kv[0]))
        first = rows[0]
        contexts.append(ctx)
        X.append([first["rtt_ms"], first["loss"], first["jitter_ms"], np.log10(first["bytes_per_s"] + 1.0)])
        held_timeouts = sorted(t for h, t in scores if h)
        y.append([float(hold), timeout if hold else (held_timeouts[0] if held_timeouts else 0.0)])
        table[ctx] = scores
    return TrainingSet(contexts, np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float64), table)


def fit(ts: TrainingSet):
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(n_estimators=N_TREES, max_depth=MAX_DEPTH, random_state=SEED, n_jobs=1)
    model.fit(ts.X, ts.y)
    return model


def to_onnx(model) -> bytes:
    """The fitted ensemble as ONNX, with a fixed graph name and the true output shape [N, 2] declared (skl2onnx
    names graphs with a random id and declares [N, 1] for multi-output forests)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURES)]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.graph.name = "dapb_predictor"
    onx.graph.output[0].type.tensor_type.shape.dim[1].dim_value = len(OUTPUTS)
    return onx.SerializeToString()


def validate(ts: TrainingSet) -> dict:
    """Leave one offered rate out: train on the others, score the held-out contexts' decisions."""
    rates = [json.loads(c)["rate"] for c in ts.contexts]
    right = total = 0
    regret = []
    for rate in sorted(set(rates)):
        test = [i for i, r in enumerate(rates) if r == rate]
        train = [i for i, r in enumerate(rates) if r != rate]
        sub = TrainingSet([ts.contexts[i] for i in train], ts.X[train], ts.y[train], ts.regret_table)
        model = fit(sub)
        pred = model.predict(ts.X[test])
        for i, (vote, timeout) in zip(test, pred, strict=True):
            hold = int(vote >= 0.5)
            right += hold == int(ts.y[i][0])
            total += 1
            scores = ts.regret_table[ts.contexts[i]]
            options = [k for k in scores if k[0] == hold] or list(scores)
            chosen = min(options, key=lambda k: abs(k[1] - timeout) if hold else 0)
            regret.append(scores[chosen] - min(scores.values()))
    return {
        "hold_accuracy": right / total if total else float("nan"),
        "mean_regret": float(np.mean(regret)),
        "max_regret": float(np.max(regret)),
        "contexts": total,
    }


def train(samples: list[dict], model_path: Path, card_path: Path, data_note: str) -> dict:
    ts = build_targets(samples)
    if len(ts.contexts) < 4:
        raise ValueError(f"only {len(ts.contexts)} contexts in the training data; collect more (dapb train collect)")
    model = fit(ts)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(to_onnx(model))
    scores = validate(ts)
    card_path.write_text(model_card(ts, scores, data_note))
    return scores


def model_card(ts: TrainingSet, scores: dict, data_note: str) -> str:
    holds = int(ts.y[:, 0].sum())
    return f"""# Model card: dapb_predictor.onnx

**What it predicts.** P(t) of the paper's eq. 4 for the kernel enforcer: whether to hold data (Nagle on the
sender, bounded delayed ACK on the receiver) and the bound T to request. Outputs `{OUTPUTS[0]}` (the fraction of
the {N_TREES} trees that vote to hold; the agent holds at >= 0.5 with B = B_max and uses |2 x vote - 1| as the
confidence, so a split ensemble falls back to the static thresholds) and `{OUTPUTS[1]}` (T in ms, clamped by the
policy to [T_base, T_max]).

**Inputs** (`{INPUT_NAME}`, float32 [N, {len(FEATURES)}]): {", ".join(f"`{f}`" for f in FEATURES)}. RTT and
jitter in ms, loss as a fraction of segments, offered load as log10(bytes per second + 1).

**Model.** scikit-learn RandomForestRegressor, {N_TREES} trees, max depth {MAX_DEPTH}, seed {SEED}, exported with
skl2onnx (opset 17, ai.onnx.ml 3). `dapb train fit` rebuilds it bit for bit from the stored samples.

**Training data.** {data_note} {len(ts.contexts)} contexts, {holds} of them best served by holding. Each context
was measured on the raw-TCP hop model (two namespaces, veth, a preface exchange, TCP_NODELAY set as Envoy does)
once without DAPB and once per candidate decision (no hold; hold with T requested at 5, 12, 16, 24 ms).

**Targets.** Per context, the candidate with the lowest objective: segments per message + added p99 delay /
{LATENCY_BUDGET_MS:g} ms + added worst-case delay / {TAIL_BUDGET_MS:g} ms (the throughput and latency terms of the
paper's section 5.7 at fixed exchange rates).

**Validation** (leave one offered rate out, {scores["contexts"]} contexts): hold decision accuracy
{scores["hold_accuracy"]:.3f}; objective regret against the best measured candidate: mean {scores["mean_regret"]:.3f},
max {scores["max_regret"]:.3f}.

**Limits.** Trained on one machine's veth hop; message size is not an input (the agent sees bytes, not writes),
so 64 B and 256 B contexts of equal byte rate look alike. Retrain from the agent's own history on real nodes.
"""
