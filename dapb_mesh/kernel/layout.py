"""ctypes mirrors of the structs and constants in bpf/dapb.h (the one definition; tests/test_layout.py proves the
mirror matches it field by field), and the pure mapping from a policy Decision to a class policy slot. The class
ids and DSCPs come from the class contract (dapb_mesh/classes.py) and are re-exported here with the layout."""

from __future__ import annotations

import ctypes
from ctypes import c_uint32 as u32
from ctypes import c_uint64 as u64

from dapb_mesh.classes import (
    CLASS_DEFAULT,
    CLASS_LATENCY,
    CLASS_OF_SENSITIVITY,
    CLASS_RECEIVER,
    CLASS_THROUGHPUT,
    DSCP_LATENCY,
    DSCP_THROUGHPUT,
    MAX_CLASSES,
)
from dapb_mesh.config import KernelConfig
from dapb_mesh.policy import Decision, Sensitivity

F_NAGLE = 1 << 0
F_ACK_BOUND = 1 << 1
F_ACK_RTO_MIN = 1 << 2
F_NOTSENT_LOWAT = 1 << 3
F_SET_TOS = 1 << 4
S_APP_NODELAY = 1 << 8
S_UNBOUNDED_PEER = 1 << 9
S_INTERACTIVE = 1 << 10
CFG_MSG_ACCOUNTING = 1 << 0
CFG_UNGUARDED = 1 << 1
ANY_UID = 0xFFFFFFFF
TURN_MAX = 256
TURN_STEP = 32
TURN_HOLD_BELOW = 64
TURN_RELEASE_AT = 128

HIST_SLOTS = 16
SIZE_BINS = 8  # segment payload sizes, log2 bins from SIZE_BIN0_LIMIT
SIZE_BIN0_LIMIT = 64
LAYOUT_VERSION = 1
MAX_SOCKETS = 65536
MAX_PORT_RULES = 1024
MAX_PEER_PREFIXES = 1024

CLASS_OF = {Sensitivity(s): cls for s, cls in CLASS_OF_SENSITIVITY.items()}


class ClassPolicy(ctypes.Structure):
    _fields_ = [
        ("flags", u32),
        ("ack_bound_us", u32),
        ("buffer_bytes", u32),
        ("timeout_us", u32),
        ("notsent_lowat", u32),
        ("dscp", u32),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("version", u32),
        ("default_class", u32),
        ("small_bytes", u32),
        ("drop_per_million", u32),
        ("flags", u32),
        ("hold_uid", u32),
    ]


class SockStats(ctypes.Structure):
    _fields_ = [
        ("cookie", u64),
        ("bytes_acked", u64),
        ("bytes_received", u64),
        ("last_update_ns", u64),
        ("class_id", u32),
        ("policy_version", u32),
        ("srtt_us", u32),
        ("rttvar_us", u32),
        ("total_retrans", u32),
        ("segs_out", u32),
        ("data_segs_out", u32),
        ("data_segs_in", u32),
        ("state", u32),
        ("mss", u32),
        ("local_port", u32),
        ("remote_port", u32),
        ("applied_flags", u32),
        ("apply_errors", u32),
        ("turn_score", u32),
        ("guard_releases", u32),
        ("rx_mark", u64),
    ]


class PeerKey(ctypes.Structure):
    _fields_ = [("prefixlen", u32), ("addr", ctypes.c_uint8 * 16)]


class SkState(ctypes.Structure):
    _fields_ = [("class_id", u32), ("applied_flags", u32)]


class MsgStats(ctypes.Structure):
    _fields_ = [
        ("messages", u64),
        ("bytes", u64),
        ("urgent_messages", u64),
        ("first_ns", u64),
        ("last_ns", u64),
        ("size_hist", u64 * HIST_SLOTS),
    ]


class TcStats(ctypes.Structure):
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("data_packets", u64),
        ("small_packets", u64),
        ("payload_bytes", u64),
        ("dropped", u64),
        ("size_hist", u64 * SIZE_BINS),
    ]


# struct name in dapb.h -> mirror, for the layout test and the map readers
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "dapb_class_policy": ClassPolicy,
    "dapb_config": Config,
    "dapb_sock_stats": SockStats,
    "dapb_sk_state": SkState,
    "dapb_peer_key": PeerKey,
    "dapb_msg_stats": MsgStats,
    "dapb_tc_stats": TcStats,
}

CONSTANTS = {
    "DAPB_CLASS_DEFAULT": CLASS_DEFAULT,
    "DAPB_CLASS_LATENCY": CLASS_LATENCY,
    "DAPB_CLASS_THROUGHPUT": CLASS_THROUGHPUT,
    "DAPB_CLASS_RECEIVER": CLASS_RECEIVER,
    "DAPB_MAX_CLASSES": MAX_CLASSES,
    "DAPB_DSCP_LATENCY": DSCP_LATENCY,
    "DAPB_DSCP_THROUGHPUT": DSCP_THROUGHPUT,
    "DAPB_SIZE_BINS": SIZE_BINS,
    "DAPB_SIZE_BIN0_LIMIT": SIZE_BIN0_LIMIT,
    "DAPB_F_NAGLE": F_NAGLE,
    "DAPB_F_ACK_BOUND": F_ACK_BOUND,
    "DAPB_F_ACK_RTO_MIN": F_ACK_RTO_MIN,
    "DAPB_F_NOTSENT_LOWAT": F_NOTSENT_LOWAT,
    "DAPB_F_SET_TOS": F_SET_TOS,
    "DAPB_S_APP_NODELAY": S_APP_NODELAY,
    "DAPB_S_UNBOUNDED_PEER": S_UNBOUNDED_PEER,
    "DAPB_S_INTERACTIVE": S_INTERACTIVE,
    "DAPB_CFG_MSG_ACCOUNTING": CFG_MSG_ACCOUNTING,
    "DAPB_CFG_UNGUARDED": CFG_UNGUARDED,
    "DAPB_ANY_UID": ANY_UID,
    "DAPB_TURN_MAX": TURN_MAX,
    "DAPB_TURN_STEP": TURN_STEP,
    "DAPB_TURN_HOLD_BELOW": TURN_HOLD_BELOW,
    "DAPB_TURN_RELEASE_AT": TURN_RELEASE_AT,
    "DAPB_MAX_PEER_PREFIXES": MAX_PEER_PREFIXES,
    "DAPB_HIST_SLOTS": HIST_SLOTS,
    "DAPB_MAX_SOCKETS": MAX_SOCKETS,
    "DAPB_LAYOUT_VERSION": LAYOUT_VERSION,
    "DAPB_MAX_PORT_RULES": MAX_PORT_RULES,
}

# The kernel accepts a delayed-ACK/RTO-min bound of at least 5 ms here (2 jiffies after rounding up).
MIN_ACK_BOUND_US = 5000


def size_bin_edges() -> list[int]:
    """Lower edges of the segment-size bins (bytes of payload): 1, 64, 128, ... as the tc program bins them."""
    return [1] + [SIZE_BIN0_LIMIT << k for k in range(SIZE_BINS - 1)]


def class_policy(decision: Decision, kernel: KernelConfig) -> ClassPolicy:
    """The kernel slot for a decision: Nagle on the sender and a delayed-ACK bound of T_eff on the receiver when
    the decision holds data; nothing (baseline behaviour) when it sends at once."""
    p = ClassPolicy(buffer_bytes=decision.buffer_bytes, timeout_us=round(decision.timeout_ms * 1000))
    knobs = decision.knobs
    if not knobs.nodelay and knobs.ack_bound_ms is not None:
        p.flags = F_NAGLE | F_ACK_BOUND | (F_ACK_RTO_MIN if kernel.ack_bound == "rto_min" else 0)
        # Ask for the decided T (the kernel rounds it up to T_eff); never below what the kernel accepts.
        p.ack_bound_us = max(MIN_ACK_BOUND_US, round(decision.timeout_ms * 1000))
    p.dscp = knobs.dscp
    return p


def receiver_policy(senders: list[ClassPolicy]) -> ClassPolicy:
    """The receiving half for the given sender slots: no Nagle of its own, its delayed ACK bounded by the
    tightest bound any holding class asks for (the receiver cannot tell which class a peer's socket is in)."""
    holding = [p for p in senders if p.flags & F_ACK_BOUND]
    if not holding:
        return ClassPolicy()
    tightest = min(holding, key=lambda p: p.ack_bound_us)
    return ClassPolicy(
        flags=tightest.flags & (F_ACK_BOUND | F_ACK_RTO_MIN),
        ack_bound_us=tightest.ack_bound_us,
        timeout_us=tightest.timeout_us,
    )
