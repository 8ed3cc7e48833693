"""Energy cost of a decision (eq. 7)."""

from dapb_mesh.config import PolicyConfig


def energy_cost(buffer_bytes: float, timeout_ms: float, cfg: PolicyConfig) -> float:
    """E(t) = eta*B(t) + theta*T(t), in the configured energy units."""
    return cfg.eta_per_byte * buffer_bytes + cfg.theta_per_ms * timeout_ms
