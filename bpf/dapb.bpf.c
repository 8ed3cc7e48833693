// SPDX-License-Identifier: GPL-2.0-only
/* DAPB kernel programs: classify sockets and apply their class's knobs (sock_ops), keep Nagle in force when the
 * application sets TCP_NODELAY later (cgroup/setsockopt), account messages (sk_msg) and packets per DSCP (tc).
 * Nothing here holds data: coalescing is the kernel's own Nagle, bounded by the receiver's delayed-ACK bound, so
 * every byte leaves within the bound even if these programs are detached or the agent dies. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dapb.h"

/* UAPI constants that are macros, so not in vmlinux.h. */
#define SOL_IP 0
#define SOL_TCP 6
#define SOL_IPV6 41
#define IP_TOS 1
#define IPV6_TCLASS 67
#define TCP_NODELAY 1
#define TCP_NOTSENT_LOWAT 25
#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TCP_DEFAULT_BOUND_US 200000 /* TCP_DELACK_MAX and TCP_RTO_MIN: 200 ms */

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dapb_config);
} dapb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DAPB_MAX_CLASSES);
	__type(key, __u32);
	__type(value, struct dapb_class_policy);
} dapb_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} dapb_dscp_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DAPB_MAX_PORT_RULES);
	__type(key, __u32);
	__type(value, __u32);
} dapb_port_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DAPB_MAX_PEER_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dapb_peer_key);
	__type(value, __u32);
} dapb_bounded_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DAPB_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct dapb_sock_stats);
} dapb_sock_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dapb_sk_state);
} dapb_sk_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, DAPB_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} dapb_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DAPB_MAX_CLASSES);
	__type(key, __u32);
	__type(value, struct dapb_msg_stats);
} dapb_msg_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 128); /* [0..63] egress by DSCP, [64..127] ingress by DSCP */
	__type(key, __u32);
	__type(value, struct dapb_tc_stats);
} dapb_tc_stats SEC(".maps");

static __always_inline struct dapb_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&dapb_config, &zero);
}

static __always_inline __u32 classify(struct bpf_sock_ops *skops, const struct dapb_config *cfg)
{
	__u32 lport = skops->local_port;
	__u32 rport = bpf_ntohl(skops->remote_port);
	__u32 *cls = bpf_map_lookup_elem(&dapb_port_class, &lport);
	if (!cls)
		cls = bpf_map_lookup_elem(&dapb_port_class, &rport);
	if (cls)
		return *cls < DAPB_MAX_CLASSES ? *cls : DAPB_CLASS_DEFAULT;

	int tos = 0;
	long rc = skops->family == AF_INET6 ? bpf_getsockopt(skops, SOL_IPV6, IPV6_TCLASS, &tos, sizeof(tos))
					    : bpf_getsockopt(skops, SOL_IP, IP_TOS, &tos, sizeof(tos));
	if (rc == 0 && tos) {
		__u32 dscp = ((__u32)tos >> 2) & 63;
		cls = bpf_map_lookup_elem(&dapb_dscp_class, &dscp);
		if (cls && *cls)
			return *cls < DAPB_MAX_CLASSES ? *cls : DAPB_CLASS_DEFAULT;
	}
	return cfg->default_class < DAPB_MAX_CLASSES ? cfg->default_class : DAPB_CLASS_DEFAULT;
}

static __always_inline void set_int(struct bpf_sock_ops *skops, int level, int opt, int val, __u32 bit,
				    struct dapb_sock_stats *st)
{
	if (bpf_setsockopt(skops, level, opt, &val, sizeof(val)) == 0)
		st->applied_flags |= bit;
	else
		st->apply_errors++;
}

/* Apply the class policy to the socket, undoing knobs the previous version set and this one does not. */
static __always_inline void apply(struct bpf_sock_ops *skops, const struct dapb_class_policy *p,
				  struct dapb_sock_stats *st)
{
	__u32 had = st->applied_flags;
	__u32 want = p ? p->flags : 0;
	st->applied_flags &= DAPB_S_GUARD_BITS;
	if (st->applied_flags & (DAPB_S_UNBOUNDED_PEER | DAPB_S_INTERACTIVE))
		want &= ~DAPB_F_NAGLE; /* the guard: no hold where DAPB does not bound the wait */

	if (want & DAPB_F_NAGLE)
		set_int(skops, SOL_TCP, TCP_NODELAY, 0, DAPB_F_NAGLE, st);
	else if ((had & DAPB_F_NAGLE) && (had & DAPB_S_APP_NODELAY))
		set_int(skops, SOL_TCP, TCP_NODELAY, 1, 0, st);

	int rto_opt = (want & DAPB_F_ACK_RTO_MIN) ? TCP_BPF_RTO_MIN : TCP_BPF_DELACK_MAX;
	if (want & DAPB_F_ACK_BOUND) {
		/* Switching mechanism: reset the other one first. */
		if ((had & DAPB_F_ACK_BOUND) && ((had ^ want) & DAPB_F_ACK_RTO_MIN))
			set_int(skops, SOL_TCP, (had & DAPB_F_ACK_RTO_MIN) ? TCP_BPF_RTO_MIN : TCP_BPF_DELACK_MAX,
				TCP_DEFAULT_BOUND_US, 0, st);
		set_int(skops, SOL_TCP, rto_opt, p->ack_bound_us,
			DAPB_F_ACK_BOUND | (want & DAPB_F_ACK_RTO_MIN), st);
	} else if (had & DAPB_F_ACK_BOUND) {
		set_int(skops, SOL_TCP, (had & DAPB_F_ACK_RTO_MIN) ? TCP_BPF_RTO_MIN : TCP_BPF_DELACK_MAX,
			TCP_DEFAULT_BOUND_US, 0, st);
	}

	if (want & DAPB_F_NOTSENT_LOWAT)
		set_int(skops, SOL_TCP, TCP_NOTSENT_LOWAT, p->notsent_lowat, DAPB_F_NOTSENT_LOWAT, st);
	else if (had & DAPB_F_NOTSENT_LOWAT)
		set_int(skops, SOL_TCP, TCP_NOTSENT_LOWAT, -1, 0, st); /* -1 = UINT_MAX = off */

	if ((want & DAPB_F_SET_TOS) && skops->family == AF_INET)
		set_int(skops, SOL_IP, IP_TOS, (int)(p->dscp << 2), DAPB_F_SET_TOS, st);
}

static __always_inline void mirror_state(struct bpf_sock_ops *skops, const struct dapb_sock_stats *st)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct dapb_sk_state *ss = bpf_sk_storage_get(&dapb_sk_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (ss) {
		ss->class_id = st->class_id;
		ss->applied_flags = st->applied_flags;
	}
}

static __always_inline void record(struct bpf_sock_ops *skops, struct dapb_sock_stats *st)
{
	st->srtt_us = skops->srtt_us >> 3;
	st->total_retrans = skops->total_retrans;
	st->segs_out = skops->segs_out;
	st->data_segs_out = skops->data_segs_out;
	st->data_segs_in = skops->data_segs_in;
	st->bytes_acked = skops->bytes_acked;
	st->bytes_received = skops->bytes_received;
	st->mss = skops->mss_cache;
	st->last_update_ns = bpf_ktime_get_ns();
	struct bpf_sock *sk = skops->sk;
	if (sk) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
		if (tp)
			st->rttvar_us = tp->mdev_us >> 2;
	}
}

static __always_inline int is_loopback4(__u32 addr_be)
{
	return (bpf_ntohl(addr_be) >> 24) == 127;
}

/* The peer's address as an LPM key (IPv4 mapped into IPv6); 0 if the peer is in this pod (loopback or our own
 * address: a local application, whose delayed ACK nobody bounds). */
static __always_inline int peer_key(struct bpf_sock_ops *skops, struct dapb_peer_key *key)
{
	key->prefixlen = 128;
	if (skops->family == AF_INET) {
		__u32 remote = skops->remote_ip4;
		if (is_loopback4(remote) || remote == skops->local_ip4)
			return 0;
		key->addr[10] = 0xff;
		key->addr[11] = 0xff;
		__builtin_memcpy(&key->addr[12], &remote, 4);
		return 1;
	}
	if (skops->family != AF_INET6)
		return 0;
	__u32 r[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3] };
	__u32 l[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };
	if (r[0] == l[0] && r[1] == l[1] && r[2] == l[2] && r[3] == l[3])
		return 0;
	if (!r[0] && !r[1] && !r[2] && r[3] == bpf_htonl(1)) /* ::1 */
		return 0;
	if (!r[0] && !r[1] && r[2] == bpf_htonl(0xffff) && is_loopback4(r[3]))
		return 0;
	__builtin_memcpy(key->addr, r, 16);
	return 1;
}

/* May this socket ever hold? Only where DAPB bounds the wait: the sidecar's own upstream socket to a peer
 * sidecar whose delayed ACK DAPB bounds (dapb_bounded_peers), never a socket to or from a local application. */
static __always_inline int peer_bounded(struct bpf_sock_ops *skops, const struct dapb_config *cfg)
{
	if (cfg->flags & DAPB_CFG_UNGUARDED)
		return 1;
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 0; /* accepted: our peer opened it; its ACKs are its own */
	if (cfg->hold_uid != DAPB_ANY_UID) {
		struct bpf_sock *sk = skops->sk;
		struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;
		if (!tp || tp->inet_conn.icsk_inet.sk.sk_uid.val != cfg->hold_uid)
			return 0;
	}
	struct dapb_peer_key key = {};
	if (!peer_key(skops, &key))
		return 0;
	return bpf_map_lookup_elem(&dapb_bounded_peers, &key) != 0;
}

/* The request/response detector (dapb.h, DAPB_TURN_*): release a hold as soon as the peer answers between our
 * ACKs, hold again only once the socket is a one-way stream again. Returns 1 when the guard state changed. */
static __always_inline int observe_turns(struct bpf_sock_ops *skops, struct dapb_sock_stats *st)
{
	__u64 rx = skops->bytes_received;
	__u32 score = st->turn_score - (st->turn_score >> 3);
	if (rx > st->rx_mark)
		score += DAPB_TURN_STEP;
	if (score > DAPB_TURN_MAX)
		score = DAPB_TURN_MAX;
	st->turn_score = score;
	st->rx_mark = rx;
	__u32 interactive = st->applied_flags & DAPB_S_INTERACTIVE;
	if (!interactive && score >= DAPB_TURN_RELEASE_AT) {
		st->applied_flags |= DAPB_S_INTERACTIVE;
		if (st->applied_flags & DAPB_F_NAGLE)
			st->guard_releases++;
		return 1;
	}
	if (interactive && score < DAPB_TURN_HOLD_BELOW) {
		st->applied_flags &= ~DAPB_S_INTERACTIVE;
		return 1;
	}
	return 0;
}

static __always_inline void on_established(struct bpf_sock_ops *skops, const struct dapb_config *cfg)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct dapb_sock_stats fresh = {};
	fresh.cookie = cookie;
	fresh.class_id = classify(skops, cfg);
	fresh.local_port = skops->local_port;
	fresh.remote_port = bpf_ntohl(skops->remote_port);
	fresh.state = skops->state;

	int nodelay = 0;
	if (bpf_getsockopt(skops, SOL_TCP, TCP_NODELAY, &nodelay, sizeof(nodelay)) == 0 && nodelay)
		fresh.applied_flags |= DAPB_S_APP_NODELAY;
	if (!peer_bounded(skops, cfg))
		fresh.applied_flags |= DAPB_S_UNBOUNDED_PEER;
	else if (!(cfg->flags & DAPB_CFG_UNGUARDED)) {
		/* a new socket is presumed interactive until ACKs without replies show a one-way stream */
		fresh.applied_flags |= DAPB_S_INTERACTIVE;
		fresh.turn_score = DAPB_TURN_MAX;
	}
	fresh.rx_mark = skops->bytes_received;

	__u32 cls = fresh.class_id;
	struct dapb_class_policy *p = bpf_map_lookup_elem(&dapb_policy, &cls);
	apply(skops, p, &fresh);
	mirror_state(skops, &fresh);
	fresh.policy_version = cfg->version;
	record(skops, &fresh);
	bpf_map_update_elem(&dapb_sock_stats, &cookie, &fresh, BPF_ANY);

	/* Per-ACK callbacks only where a hold may follow (and on receivers, whose ACK bound follows new policy
	 * versions): latency-class sockets and sockets the guard never lets hold send exactly as without DAPB, at
	 * no per-packet cost; the latter keep state callbacks so that the agent sees them close. */
	int may_hold = !(fresh.applied_flags & DAPB_S_UNBOUNDED_PEER) || cls == DAPB_CLASS_RECEIVER;
	if (cls != DAPB_CLASS_LATENCY)
		bpf_sock_ops_cb_flags_set(skops, may_hold ? BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG
							  : BPF_SOCK_OPS_STATE_CB_FLAG);
	if (cfg->flags & DAPB_CFG_MSG_ACCOUNTING)
		bpf_sock_hash_update(skops, &dapb_sockhash, &cookie, BPF_NOEXIST);
}

SEC("sockops")
int dapb_sockops(struct bpf_sock_ops *skops)
{
	struct dapb_config *cfg = get_config();
	if (!cfg || cfg->version == 0)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, cfg);
		break;
	case BPF_SOCK_OPS_RTT_CB:
	case BPF_SOCK_OPS_STATE_CB: {
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct dapb_sock_stats *st = bpf_map_lookup_elem(&dapb_sock_stats, &cookie);
		if (!st)
			break; /* evicted from the LRU: the next established socket gets a slot */
		if (skops->op == BPF_SOCK_OPS_STATE_CB)
			st->state = skops->args[1];
		if (skops->op == BPF_SOCK_OPS_RTT_CB) {
			int guard_moved = !(st->applied_flags & DAPB_S_UNBOUNDED_PEER) &&
					  !(cfg->flags & DAPB_CFG_UNGUARDED) && observe_turns(skops, st);
			if (st->policy_version != cfg->version || guard_moved) {
				__u32 cls = st->class_id;
				apply(skops, bpf_map_lookup_elem(&dapb_policy, &cls), st);
				mirror_state(skops, st);
				st->policy_version = cfg->version;
			}
		}
		record(skops, st);
		break;
	}
	}
	return 1;
}

/* Envoy and others may set TCP_NODELAY after connect; keep Nagle where the socket's class wants it. */
SEC("cgroup/setsockopt")
int dapb_setsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_TCP || ctx->optname != TCP_NODELAY)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	struct dapb_config *cfg = get_config();
	if (!sk || !cfg || cfg->version == 0)
		return 1;
	struct dapb_sk_state *ss = bpf_sk_storage_get(&dapb_sk_state, sk, 0, 0);
	if (!ss)
		return 1; /* not yet established: sock_ops decides at establishment */
	int *optval = ctx->optval;
	if ((void *)(optval + 1) > ctx->optval_end)
		return 1;
	if (*optval) {
		ss->applied_flags |= DAPB_S_APP_NODELAY;
		if (ss->applied_flags & DAPB_F_NAGLE)
			*optval = 0;
	}
	return 1;
}

static __always_inline __u32 log2_slot(__u32 v)
{
	__u32 slot = 0;
#pragma unroll
	for (int i = 0; i < DAPB_HIST_SLOTS - 1; i++) {
		if (v > 1) {
			v >>= 1;
			slot++;
		}
	}
	return slot;
}

/* Per-message accounting; never corks, never drops: every message passes as written. */
SEC("sk_msg")
int dapb_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct dapb_sk_state *st = sk ? bpf_sk_storage_get(&dapb_sk_state, sk, 0, 0) : 0;
	__u32 cls = st ? st->class_id : DAPB_CLASS_DEFAULT;
	if (cls >= DAPB_MAX_CLASSES)
		cls = DAPB_CLASS_DEFAULT;
	struct dapb_msg_stats *ms = bpf_map_lookup_elem(&dapb_msg_stats, &cls);
	if (!ms)
		return SK_PASS;
	__u64 now = bpf_ktime_get_ns();
	__u32 size = msg->size;
	ms->messages++;
	ms->bytes += size;
	if (!ms->first_ns)
		ms->first_ns = now;
	ms->last_ns = now;
	__u32 slot = log2_slot(size);
	if (slot < DAPB_HIST_SLOTS)
		ms->size_hist[slot]++;
	if (st && !(st->applied_flags & DAPB_F_NAGLE))
		ms->urgent_messages++;
	return SK_PASS;
}

/* Per-DSCP packet counters; on ingress optionally drops data segments at random (testbed loss injection: a
 * drop on the receiver's ingress makes the sender retransmit, a drop on egress would not). */

/* The log2 bin of a segment's payload size (dapb.h: DAPB_SIZE_BINS). */
static __always_inline __u32 size_bin(__u32 payload)
{
	__u32 bin = 0;
	for (__u32 limit = DAPB_SIZE_BIN0_LIMIT; bin < DAPB_SIZE_BINS - 1 && payload >= limit; limit <<= 1)
		bin++;
	return bin;
}

static __always_inline int count(struct __sk_buff *skb, __u32 base, int may_drop)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;

	__u32 dscp = 0, payload = 0, is_tcp = 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
		dscp = ip->tos >> 2;
		__u32 ihl = ip->ihl * 4;
		if (ip->protocol == IPPROTO_TCP && ihl >= sizeof(*ip)) {
			struct tcphdr *tcp = (void *)ip + ihl;
			if ((void *)(tcp + 1) > end)
				return TC_ACT_OK;
			__u32 hdrs = ihl + tcp->doff * 4;
			__u32 total = bpf_ntohs(ip->tot_len);
			payload = total > hdrs ? total - hdrs : 0;
			is_tcp = 1;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		dscp = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) >> 2;
		if (ip6->nexthdr == IPPROTO_TCP) {
			struct tcphdr *tcp = (void *)(ip6 + 1);
			if ((void *)(tcp + 1) > end)
				return TC_ACT_OK;
			__u32 len = bpf_ntohs(ip6->payload_len);
			__u32 hdr = tcp->doff * 4;
			payload = len > hdr ? len - hdr : 0;
			is_tcp = 1;
		}
	}

	__u32 key = base + (dscp & 63);
	struct dapb_tc_stats *s = bpf_map_lookup_elem(&dapb_tc_stats, &key);
	if (!s)
		return TC_ACT_OK;
	struct dapb_config *cfg = get_config();
	if (may_drop && cfg && cfg->drop_per_million && payload &&
	    bpf_get_prandom_u32() % 1000000 < cfg->drop_per_million) {
		s->dropped++;
		return TC_ACT_SHOT;
	}
	/* A GSO/GRO skb carries several wire segments: count segments, not skbs. The last one may be short. */
	__u32 segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	__u32 last = payload;
	if (segs > 1 && skb->gso_size && payload > (segs - 1) * skb->gso_size)
		last = payload - (segs - 1) * skb->gso_size;
	s->packets += segs;
	s->bytes += skb->len;
	if (is_tcp && payload) {
		s->data_packets += segs;
		s->payload_bytes += payload;
		if (cfg && last < cfg->small_bytes)
			s->small_packets++;
		__u32 full = segs > 1 && skb->gso_size ? skb->gso_size : last;
		s->size_hist[size_bin(full)] += segs - 1;
		s->size_hist[size_bin(last)] += 1;
	}
	return TC_ACT_OK;
}

SEC("tc")
int dapb_tc_egress(struct __sk_buff *skb)
{
	return count(skb, 0, 0);
}

SEC("tc")
int dapb_tc_ingress(struct __sk_buff *skb)
{
	return count(skb, 64, 1);
}
