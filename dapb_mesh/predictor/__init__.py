"""P(t) = M(C(t), H(t)): collect measured outcomes, learn the best decision per context, serve it from ONNX."""

from dapb_mesh.predictor.serving import ModelError, OnnxPredictor, load_predictor

__all__ = ["ModelError", "OnnxPredictor", "load_predictor"]
