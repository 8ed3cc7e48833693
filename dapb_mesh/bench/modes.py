"""The modes a benchmark compares, as kernel class policies: what each mode writes into the maps."""

from __future__ import annotations

from dataclasses import dataclass

from dapb_mesh.config import Settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.policy import Conditions, Decision, Sensitivity, decide
from dapb_mesh.predictor.features import as_matrix, feature_row

MODES = ("baseline", "passthrough", "nagle", "dapb", "dapb-ml", "agent")
MODE_HELP = {
    "baseline": "no DAPB: programs detached, sockets as the application set them (Envoy: TCP_NODELAY)",
    "passthrough": "programs attached, no knobs: isolates the cost of the eBPF programs (C_eBPF)",
    "nagle": "Nagle forced on every connection, no bound on the wait",
    "dapb": "the formula policy (eq. 1-3, 5) for the scenario's class, bounded by the receiver's delayed ACK",
    "dapb-ml": "the predictor's decision (eq. 4-5) from C(t) and the offered load, with its confidence fallback",
    "agent": "the node agent running live: telemetry, C(t), decisions and snapshots as in production",
}


@dataclass(frozen=True)
class ModePlan:
    """What to do to the kernel for one mode: attach or not, and the snapshot to write."""

    attach: bool
    policies: dict[int, L.ClassPolicy]
    default_class: int
    decision: Decision | None = None
    agent: bool = False  # the node agent attaches and decides; the bench's own instance stays detached
    unguarded: bool = False  # hold every socket of the class, bound or not (forced Nagle: the harm, for comparison)

    @property
    def filter_hold(self) -> tuple[int, int]:
        """(hold_bytes, hold_ms) for the sidecar filter: (0, 0) unless the decision's enforcer is the filter."""
        return (0, 0) if self.decision is None else self.decision.filter_hold

    @property
    def bound_ms(self) -> float | None:
        """The bound on any added wait this mode enforces: 0 when it holds nothing, None when unbounded."""
        if self.decision is not None:
            return self.decision.enforced_timeout_ms or 0.0  # the filter's T, or the kernel's T_eff
        return None if any(p.flags & L.F_NAGLE for p in self.policies.values()) else 0.0


def validate_modes(modes: list[str]) -> list[str]:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if not modes:
        raise ValueError("no modes given")
    return modes


def plan(
    mode: str,
    sensitivity: Sensitivity,
    conditions: Conditions,
    settings: Settings,
    *,
    classify_all: bool = True,
    predictor=None,
    load_bytes_per_s: float = 0.0,
) -> ModePlan:
    """``classify_all``: every socket of the attached cgroups is the scenario's class (raw hop); otherwise only
    sockets a DSCP or port rule names are, and the rest keep the default class with no knobs (sidecars)."""
    cls = L.CLASS_OF[sensitivity]
    default = cls if classify_all else L.CLASS_DEFAULT
    if mode == "baseline":
        return ModePlan(attach=False, policies={}, default_class=L.CLASS_DEFAULT)
    if mode == "passthrough":
        return ModePlan(attach=True, policies={}, default_class=default)
    if mode == "nagle":
        return ModePlan(
            attach=True, policies={cls: L.ClassPolicy(flags=L.F_NAGLE)}, default_class=default, unguarded=True
        )
    if mode in ("dapb", "dapb-ml"):
        prediction = None
        if mode == "dapb-ml" and predictor is not None:
            features = as_matrix([feature_row(conditions, load_bytes_per_s)])
            prediction = predictor.predict(features, settings.policy)[0]
        decision = decide(
            conditions,
            sensitivity,
            settings.policy,
            settings.kernel,
            use_predictor=prediction is not None,
            prediction=prediction,
            offered_bytes_per_s=load_bytes_per_s or None,
        )
        policy = L.class_policy(decision, settings.kernel)
        policies = {cls: policy, L.CLASS_RECEIVER: L.receiver_policy([policy])}
        return ModePlan(attach=True, policies=policies, default_class=default, decision=decision)
    if mode == "agent":
        decision = decide(conditions, sensitivity, settings.policy, settings.kernel)
        return ModePlan(attach=False, policies={}, default_class=L.CLASS_DEFAULT, decision=decision, agent=True)
    raise ValueError(f"unknown mode {mode!r}")


def load_model(settings: Settings):
    """The predictor for mode dapb-ml, or None (logged) when the model cannot serve: the formula decides."""
    from dapb_mesh.predictor import load_predictor

    return load_predictor(settings.agent.model)
