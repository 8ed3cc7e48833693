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
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape)[-1] != len(FEATURES):
            got = [(i.name, i.shape) for i in inputs]
            raise ModelError(f"{path}: expects input {INPUT_NAME!r} of shape [N, {len(FEATURES)}], model has {got}")
        outputs = self.session.get_outputs()
        if len(outputs) != 1 or list(outputs[0].shape)[-1] != len(OUTPUTS):
            got = [(o.name, o.shape) for o in outputs]
            raise ModelError(f"{path}: expects one output of shape [N, {len(OUTPUTS)}], model has {got}")
        self.path = path

    def raw(self, features: np.ndarray) -> np.ndarray:
        """Model outputs [N, 2] (hold vote, timeout ms) for features [N, 4]."""
        return self.session.run(None, {INPUT_NAME: features.astype(np.float32)})[0]

    def predict(self, features: np.ndarray, policy: PolicyConfig) -> list[Prediction]:
        """One Prediction per row: hold -> B_max, else B_min; confidence = how unanimous the ensemble was."""
        out = self.raw(features)
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
