"""ONNX inference for P(t) (eq. 4): batched per agent tick, clamped by the policy (eq. 5), with confidence.

A model that is missing, unreadable, or has the wrong inputs or outputs is refused with a message that says
which; the caller then uses the formula. A prediction whose ensemble vote is split has a low confidence, and the
policy then uses the static thresholds (decision.decide).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dapb_mesh.config import PolicyConfig
from dapb_mesh.policy import Prediction
from dapb_mesh.predictor.features import FEATURES, INPUT_NAME, OUTPUTS

log = logging.getLogger("dapb.predictor")


class ModelError(RuntimeError):
    """The model file cannot serve: missing, corrupt, or not the shape DAPB expects."""


_PROBE_ROW = (1.0, 0.0, 0.1, 4.0)
"""A plausible feature row (1 ms RTT, no loss, 10 kB/s): what the probe feeds the model at load."""


def _shape_problem(shape: list | None, width: int) -> str | None:
    """What is wrong with a declared [N, width] shape (N free), or None. An unknown shape is left to the probe."""
    if not shape:
        return None
    if len(shape) != 2:
        return f"its shape {shape} has {len(shape)} dimensions, not 2"
    batch, cols = shape
    if isinstance(batch, int):
        return f"its shape {shape} fixes the batch size at {batch}; it must be free (one row per class)"
    if isinstance(cols, int) and cols != width:
        return f"its shape {shape} has {cols} columns, not {width}"
    return None


class OnnxPredictor:
    def __init__(self, path: Path):
        import onnxruntime as ort

        if not path.exists():
            raise ModelError(f"{path}: no such model file")
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises several types for a bad file
            raise ModelError(f"{path}: not a loadable ONNX model ({type(error).__name__}: {error})") from None
        self.path = path
        self._check_signature()
        self._check_probe()

    def _check_signature(self) -> None:
        """One float input [N, features] and one tensor output [N, outputs], N free: the agent sends one row per
        class and reads one (hold vote, timeout) row back for each."""
        path, width = self.path, len(FEATURES)
        inputs = self.session.get_inputs()
        got = [(i.name, i.shape, i.type) for i in inputs]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelError(f"{path}: expects one input {INPUT_NAME!r} of shape [N, {width}], model has {got}")
        problem = _shape_problem(inputs[0].shape, width)
        if problem or inputs[0].type != "tensor(float)":
            why = problem or f"its type is {inputs[0].type}, not tensor(float)"
            raise ModelError(f"{path}: expects input {INPUT_NAME!r} of shape [N, {width}] (float): {why}")
        outputs = self.session.get_outputs()
        got = [(o.name, o.shape, o.type) for o in outputs]
        if len(outputs) != 1 or not outputs[0].type.startswith("tensor("):
            raise ModelError(f"{path}: expects one tensor output of shape [N, {len(OUTPUTS)}], model has {got}")
        problem = _shape_problem(outputs[0].shape, len(OUTPUTS))
        if problem:
            raise ModelError(f"{path}: expects one output of shape [N, {len(OUTPUTS)}] {OUTPUTS}: {problem}")

    def _check_probe(self) -> None:
        """Run the model once on probe batches: a shape the declared one hides (a fixed batch inside the graph,
        an input it cannot take) is found here, at load, rather than on the agent's every tick."""
        for n in (1, 3):
            probe = np.tile(np.asarray(_PROBE_ROW, dtype=np.float32), (n, 1))
            try:
                out = self.raw(probe)
            except Exception as error:  # onnxruntime raises several types for an input the graph cannot take
                raise ModelError(
                    f"{self.path}: fails on a probe batch of {n} rows ({type(error).__name__}: {error})"
                ) from None
            shape = getattr(out, "shape", None)
            if shape != (n, len(OUTPUTS)) or not np.issubdtype(out.dtype, np.number):
                raise ModelError(
                    f"{self.path}: for a probe batch of {n} rows it returned {shape or type(out).__name__}"
                    f"{'' if shape is None else f' of {out.dtype}'}; expects one numeric row {OUTPUTS} per input row"
                )

    def raw(self, features: np.ndarray) -> np.ndarray:
        """Model outputs [N, 2] (hold vote, timeout ms) for features [N, 4]."""
        return self.session.run(None, {INPUT_NAME: features.astype(np.float32)})[0]

    def predict(self, features: np.ndarray, policy: PolicyConfig) -> list[Prediction]:
        """One Prediction per row: hold -> B_max, else B_min; confidence = how unanimous the ensemble was."""
        out = self.raw(features)
        if getattr(out, "shape", None) != (len(features), len(OUTPUTS)):
            raise ModelError(f"{self.path}: returned {getattr(out, 'shape', None)} for {len(features)} rows")
        predictions = []
        for vote, timeout in out:
            vote = float(vote)
            hold = vote >= 0.5
            predictions.append(
                Prediction(
                    buffer_bytes=float(policy.b_max_bytes if hold else policy.b_min_bytes)
                    if np.isfinite(vote)
                    else np.nan,
                    confidence=abs(2 * vote - 1) if np.isfinite(vote) else 0.0,
                    timeout_ms=float(timeout),
                )
            )
        return predictions


def load_predictor(path: Path) -> OnnxPredictor | None:
    """The predictor, or None (logged with the reason) when the model cannot serve: the formula takes over."""
    try:
        return OnnxPredictor(path)
    except ModelError as error:
        log.error("predictor disabled, using the formula: %s", error)
        return None
