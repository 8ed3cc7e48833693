/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The one definition of everything the kernel programs and user space share: classes, flags, map layouts.
 * dapb_mesh/kernel/layout.py mirrors these structs with ctypes; tests/test_layout.py proves sizes and
 * offsets agree (it compiles this header with clang and compares). Keep every field naturally aligned. */
#ifndef __DAPB_H
#define __DAPB_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Bump when a map's meaning changes without its shape changing: an agent finding pins of another layout
 * version (or shape) loads fresh maps beside them and swaps its programs in before removing the old ones. */
#define DAPB_LAYOUT_VERSION 1

/* Traffic classes: L(t) of the paper's eq. 1, carried to the kernel as a DSCP or a port rule. */
#define DAPB_CLASS_DEFAULT 0 /* auto: the formula or the predictor decides */
#define DAPB_CLASS_LATENCY 1 /* B_min: send at once */
#define DAPB_CLASS_THROUGHPUT 2 /* B_max: coalesce */
#define DAPB_CLASS_RECEIVER 3 /* accepted sidecar-to-sidecar sockets: bound the delayed ACK for the sender */
#define DAPB_MAX_CLASSES 4

/* DSCP code points that name a class (RFC 4594): EF for latency, AF11 for throughput. */
#define DAPB_DSCP_LATENCY 46
#define DAPB_DSCP_THROUGHPUT 10

/* dapb_class_policy.flags */
#define DAPB_F_NAGLE (1U << 0) /* sender: clear TCP_NODELAY, also when the app sets it later */
#define DAPB_F_ACK_BOUND (1U << 1) /* receiver: bound the delayed ACK at ack_bound_us */
#define DAPB_F_ACK_RTO_MIN (1U << 2) /* bound via TCP_BPF_RTO_MIN instead of TCP_BPF_DELACK_MAX */
#define DAPB_F_NOTSENT_LOWAT (1U << 3) /* set TCP_NOTSENT_LOWAT to notsent_lowat */
#define DAPB_F_SET_TOS (1U << 4) /* mark the socket's packets with dscp */

/* The policy of one class: one slot of the policy array. A policy change writes every slot, then bumps
 * dapb_config.version; sockets notice the new version on their next RTT callback and re-apply. */
struct dapb_class_policy {
	__u32 flags;
	__u32 ack_bound_us; /* T_eff requested from the kernel (>= 5000 here) */
	__u32 buffer_bytes; /* B(t), for accounting and the filter */
	__u32 timeout_us; /* T(t) as decided, before kernel rounding */
	__u32 notsent_lowat;
	__u32 dscp;
};

/* Global settings: slot 0 of the config array. */
struct dapb_config {
	__u32 version; /* policy snapshot version; 0 = no policy written yet: touch nothing */
	__u32 default_class; /* class of sockets no rule matches */
	__u32 small_bytes; /* tc: a data segment with less payload than this is "small" */
	__u32 drop_per_million; /* tc loss injection on ingress (testbed only); 0 = off */
	__u32 flags; /* DAPB_CFG_* */
	__u32 hold_uid; /* only sockets owned by this uid (the sidecar's, 1337 in Istio) may hold; DAPB_ANY_UID: any */
};

#define DAPB_ANY_UID 0xFFFFFFFFU

/* dapb_config.flags */
#define DAPB_CFG_MSG_ACCOUNTING (1U << 0) /* put sockets in the sockhash so sk_msg accounts their messages */
#define DAPB_CFG_UNGUARDED (1U << 1) /* lab only (bench mode nagle): hold every socket of a holding class, bound or
					* not, to show the harm the guard prevents; the agent never sets it */

/* dapb_sock_stats.applied_flags, beyond the DAPB_F_* knobs */
#define DAPB_S_APP_NODELAY (1U << 8) /* the application had TCP_NODELAY set when DAPB first saw the socket */
/* The hold guard: a socket holds (Nagle) only where DAPB bounds every byte's wait. Nagle's wait ends with the
 * peer's ACK, so the peer must be a sidecar whose delayed ACK DAPB bounds: the socket is the sidecar's own
 * (hold_uid), opened by it (upstream), to a peer in dapb_bounded_peers that is not in the same pod. */
#define DAPB_S_UNBOUNDED_PEER (1U << 9) /* never held: the peer's ACK delay is not DAPB's to bound */
#define DAPB_S_INTERACTIVE (1U << 10) /* not held now: the peer answers between our ACKs (request/response) */
#define DAPB_S_GUARD_BITS (DAPB_S_APP_NODELAY | DAPB_S_UNBOUNDED_PEER | DAPB_S_INTERACTIVE)

/* The request/response detector: on every RTT callback, turn_score = turn_score * 7/8 + (peer sent data since
 * the last callback ? 32 : 0), in [0, 256]. A socket starts interactive (256) and may hold once the score falls
 * below DAPB_TURN_HOLD_BELOW (about 11 ACKs with no reply: a one-way stream); it is released at once when the
 * score reaches DAPB_TURN_RELEASE_AT (4-6 replies in a row). */
#define DAPB_TURN_MAX 256
#define DAPB_TURN_STEP 32
#define DAPB_TURN_HOLD_BELOW 64
#define DAPB_TURN_RELEASE_AT 128

/* Per-socket telemetry, LRU-keyed by socket cookie. Cumulative counters as the kernel keeps them. */
struct dapb_sock_stats {
	__u64 cookie;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 last_update_ns;
	__u32 class_id;
	__u32 policy_version; /* version of the knobs applied to this socket */
	__u32 srtt_us;
	__u32 rttvar_us;
	__u32 total_retrans;
	__u32 segs_out;
	__u32 data_segs_out;
	__u32 data_segs_in;
	__u32 state; /* TCP state (BPF_TCP_*) at the last state change */
	__u32 mss;
	__u32 local_port; /* host order */
	__u32 remote_port; /* host order */
	__u32 applied_flags; /* which knobs took effect (DAPB_F_*) and the guard's state (DAPB_S_*) */
	__u32 apply_errors; /* bpf_setsockopt failures */
	__u32 turn_score; /* request/response detector, see DAPB_TURN_* */
	__u32 guard_releases; /* times the guard released a holding socket because replies came */
	__u64 rx_mark; /* bytes_received at the last RTT callback */
};

/* A prefix of peers whose delayed ACK DAPB bounds (pods of DAPB nodes): LPM trie key, IPv4 as ::ffff:a.b.c.d. */
struct dapb_peer_key {
	__u32 prefixlen;
	__u8 addr[16];
};
#define DAPB_MAX_PEER_PREFIXES 1024

/* Per-socket state in socket-local storage, where cgroup/setsockopt (which cannot read cookies) finds it. */
struct dapb_sk_state {
	__u32 class_id;
	__u32 applied_flags; /* as dapb_sock_stats.applied_flags */
};

/* Per-class message accounting from sk_msg (per-CPU array indexed by class). */
#define DAPB_HIST_SLOTS 16 /* log2 size slots: [0] = 1 B, [1] = 2-3 B, ... [15] >= 32 KiB */
struct dapb_msg_stats {
	__u64 messages;
	__u64 bytes;
	__u64 urgent_messages; /* messages on sockets whose class sends at once */
	__u64 first_ns;
	__u64 last_ns;
	__u64 size_hist[DAPB_HIST_SLOTS];
};

/* Per-DSCP packet counters from tc (per-CPU array indexed by DSCP 0..63), for one direction. */
/* Segment payload sizes in log2 bins: [1, 64), [64, 128), [128, 256), ..., [2048, 4096), [4096, inf). */
#define DAPB_SIZE_BINS 8
#define DAPB_SIZE_BIN0_LIMIT 64

struct dapb_tc_stats {
	__u64 packets;
	__u64 bytes;
	__u64 data_packets; /* TCP segments with payload */
	__u64 small_packets; /* of those, payload < small_bytes */
	__u64 payload_bytes;
	__u64 dropped; /* by loss injection */
	__u64 size_hist[DAPB_SIZE_BINS]; /* data segments by payload size */
};

#define DAPB_MAX_SOCKETS 65536
#define DAPB_MAX_PORT_RULES 1024

#endif /* __DAPB_H */
