"""Selective buffering (eq. 6): per-packet urgency u_i in [0, 1], the mean U(t), and the flush rule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from dapb_mesh.classes import DSCP_DEFAULT, DSCP_LATENCY, DSCP_THROUGHPUT
from dapb_mesh.policy.structured_fields import parse_dictionary

# The DSCP code points that carry a class to the kernel (EF: send at once, AF11: coalesce up to B_max, best
# effort: the formula decides) belong to the class contract: dapb_mesh/classes.py mirrors the numbers bpf/dapb.h
# defines, and tests/test_class_contract.py checks they agree. Re-exported here for the policy.
__all__ = [
    "DSCP_DEFAULT",
    "DSCP_LATENCY",
    "DSCP_THROUGHPUT",
    "Priority",
    "clamp_urgency",
    "dscp_urgency",
    "mean_urgency",
    "parse_priority",
    "priority_urgency",
    "should_flush",
]

# Urgency implied by well-known DSCP values when traffic arrives already marked.
_DSCP_URGENCY = {
    DSCP_LATENCY: 1.0,  # EF
    44: 1.0,  # VOICE-ADMIT
    40: 0.9,  # CS5 signalling
    48: 1.0,  # CS6 network control
    56: 1.0,  # CS7
    34: 0.8,  # AF41 interactive video
    26: 0.6,  # AF31
    18: 0.5,  # AF21 low-latency data
    DSCP_THROUGHPUT: 0.1,  # AF11 high-throughput data
    8: 0.0,  # CS1 lower effort
    1: 0.0,  # LE (RFC 8622)
}


def clamp_urgency(u: float) -> float:
    """Keep u_i in [0, 1]; NaN counts as not urgent."""
    if math.isnan(u):
        return 0.0
    return min(1.0, max(0.0, u))


def dscp_urgency(dscp: int, default: float = 0.3) -> float:
    """u_i from the DSCP bits of an IP header; unknown code points get ``default``."""
    if not 0 <= dscp <= 63:
        raise ValueError(f"DSCP must be in 0..63, got {dscp}")
    return _DSCP_URGENCY.get(dscp, default)


def mean_urgency(urgencies: Iterable[float]) -> float:
    """U(t) = (1/N) * sum(u_i) over the buffered packets (eq. 6); an empty buffer has U = 0."""
    values = [clamp_urgency(u) for u in urgencies]
    return sum(values) / len(values) if values else 0.0


def should_flush(urgencies: Iterable[float], buffered_bytes: int, buffer_bytes: int, u_threshold: float) -> bool:
    """Send the buffer now if U(t) > U_th or the buffer holds B(t) bytes or more (eq. 6 and the text after it)."""
    return buffered_bytes >= buffer_bytes or mean_urgency(urgencies) > u_threshold


class Priority(NamedTuple):
    """An RFC 9218 `priority` header: urgency 0..7 (None when it gives no valid one) and the incremental flag."""

    urgency: int | None
    incremental: bool


def parse_priority(header: str) -> Priority:
    """The header as RFC 9218 section 4 reads it: an RFC 8941 Dictionary whose last `u` and `i` count.

    A header that is not a valid Dictionary is ignored as a whole (RFC 8941 4.2); a `u` that is not an integer
    0..7, or an `i` that is not a boolean, is ignored on its own (RFC 9218 section 4). Parameters on them are ignored.
    """
    members = parse_dictionary(header)
    if members is None:
        return Priority(None, False)
    u = members.get("u", (None, {}))[0]
    i = members.get("i", (False, {}))[0]
    # type() is: a bare `u` is the boolean True, which isinstance(.., int) would take for 1
    return Priority(u if type(u) is int and 0 <= u <= 7 else None, i if type(i) is bool else False)


def priority_urgency(header: str) -> float | None:
    """u_i from an RFC 9218 `priority` header ("u=0..7[, i]"): u=0 -> 1.0 (most urgent) .. u=7 -> 0.0.

    None when the header carries no valid urgency (see parse_priority). The Wasm filter implements the same rule
    in C; tests/test_mesh.py and tests/test_priority_rfc9218.py check they agree.
    """
    u = parse_priority(header).urgency
    return None if u is None else (7 - u) * 1000 // 7 / 1000  # thousandths, rounded down as the filter does
