"""The traffic-class contract: every fact about a class that crosses a boundary, written down once.

A class has an id (its slot in the kernel's maps), a name (in metrics, history and the x-dapb-class header), the
sensitivity the policy decides it with, and the DSCP that carries it from the sidecar to the kernel. Python, the
Istio manifests and the testbed take these facts from here. The C side has its own copies: the ids and DSCPs are
defined for the kernel in bpf/dapb.h (mirrored here), the header and its values are compiled into the Wasm filter
(wasm_filter/dapb_filter.c); tests/test_class_contract.py proves all three agree. The Istio sidecar's ports and
uid, on which the classification rests, are here too. No imports from the rest of dapb_mesh: the ground floor.
"""

from __future__ import annotations

from typing import Final

# Class ids: DAPB_CLASS_* in bpf/dapb.h, the slots of the kernel's policy array.
CLASS_DEFAULT: Final = 0  # sockets no rule names: auto, the formula or the predictor decides
CLASS_LATENCY: Final = 1  # B_min: send at once
CLASS_THROUGHPUT: Final = 2  # B_max: coalesce
CLASS_RECEIVER: Final = 3  # accepted sidecar-to-sidecar sockets: they bound their delayed ACK for the sender
MAX_CLASSES: Final = 4  # DAPB_MAX_CLASSES

CLASS_NAMES: Final[dict[int, str]] = {
    CLASS_DEFAULT: "default",
    CLASS_LATENCY: "latency",
    CLASS_THROUGHPUT: "throughput",
    CLASS_RECEIVER: "receiver",
}
"""Every class, by the name metrics and the history give it."""

SENSITIVITY: Final[dict[int, str]] = {
    CLASS_DEFAULT: "auto",
    CLASS_LATENCY: "latency",
    CLASS_THROUGHPUT: "throughput",
}
"""The classes the agent decides for, each with the value of policy.Sensitivity it is decided with (the default
class: the configured default sensitivity, "auto" unless set). The receiver class follows from the others."""

DECIDED: Final[dict[int, str]] = {cls: CLASS_NAMES[cls] for cls in SENSITIVITY}
"""The classes the agent decides for, with their names."""

CLASS_OF_SENSITIVITY: Final[dict[str, int]] = {s: cls for cls, s in SENSITIVITY.items()}
"""The class a sensitivity is enforced in."""

# DSCP code points that carry a class (RFC 4594 names): DAPB_DSCP_* in bpf/dapb.h.
DSCP_DEFAULT: Final = 0  # CS0, best effort: sockets nothing marks (the default class)
DSCP_LATENCY: Final = 46  # EF
DSCP_THROUGHPUT: Final = 10  # AF11
DSCP_AUTO: Final = 18
"""AF21, lab only: the product leaves auto sockets unmarked; the bench marks its default cluster with this code
point so that tc can count auto-class traffic apart from the rest (no class rule names it)."""

# The request header the Wasm filter sets to a class name, and the classes it can name: a route variant matches
# each value and leads to a cluster whose sockets carry the class's DSCP. No value: the default class.
CLASS_HEADER: Final = "x-dapb-class"
CLASS_DSCP: Final[dict[str, int]] = {
    CLASS_NAMES[CLASS_LATENCY]: DSCP_LATENCY,
    CLASS_NAMES[CLASS_THROUGHPUT]: DSCP_THROUGHPUT,
}
"""Header value (the class's name) -> the DSCP its cluster's sockets carry."""

NAMED_URGENCY: Final[dict[str, float]] = {CLASS_NAMES[CLASS_LATENCY]: 1.0, CLASS_NAMES[CLASS_THROUGHPUT]: 0.0}
"""A class name given where an urgency is expected (a VirtualService annotation): the urgency that selects it."""

# The socket option that marks a socket with a DSCP: IP_TOS at level SOL_IP, the DSCP in the upper six bits.
SOL_IP: Final = 0
IP_TOS: Final = 1


def tos_socket_option(dscp: int) -> dict:
    """An Envoy socket option (config.core.v3.SocketOption) that marks a socket with ``dscp`` before it
    connects, as every class cluster does."""
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be in 0..63, got {dscp}")
    return {"level": SOL_IP, "name": IP_TOS, "int_value": dscp << 2, "state": "STATE_PREBIND"}


# Istio's sidecar, as DAPB relies on it.
OUTBOUND_PORT: Final = 15001  # virtualOutbound: the app's traffic, redirected
INBOUND_PORT: Final = 15006  # virtualInbound: accepted sidecar-to-sidecar sockets take the receiver class here
SIDECAR_UID: Final = 1337  # the uid Envoy runs as: only its sockets may hold
METRICS_PORT: Final = 9464  # the agent's /metrics, /healthz and /readyz
