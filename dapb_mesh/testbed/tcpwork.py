"""Raw-TCP workloads that model one mesh hop, for the kernel tests and benchmarks.

Both sides exchange a small preface first, as HTTP/2 SETTINGS and TLS handshakes do: that makes the receiver
delay its ACKs (Linux's pingpong mode), which is what decides whether Nagle coalesces at all
(../shared/PLATFORM.md). The client sets TCP_NODELAY before connect, as Envoy does.

Every message carries a sequence number and its send time (CLOCK_MONOTONIC, shared by all network namespaces),
so the server measures each message's one-way delay and checks order and completeness itself.

  python -m dapb_mesh.testbed.tcpwork server --port P --mode stream|burst|wwr|pingpong
  python -m dapb_mesh.testbed.tcpwork client --host H --port P --mode ... [--rate R --count N --size S]

Each side prints one JSON line with what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time

HEADER = struct.Struct("!QQ")  # sequence number, send time in ns
PREFACE = b"DAPB-PREFACE-v1\n"
TCP_INFO_LEN = 232
# offsets in struct tcp_info (linux/tcp.h)
_TI_SND_MSS, _TI_UNACKED, _TI_RTT, _TI_TOTAL_RETRANS = 16, 24, 68, 100
_TI_NOTSENT, _TI_MIN_RTT, _TI_DATA_SEGS_OUT, _TI_DATA_SEGS_IN = 144, 148, 156, 152


def tcp_info(sock: socket.socket) -> dict[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)

    def u32(off: int) -> int:
        return struct.unpack_from("I", raw, off)[0]

    return {
        "snd_mss": u32(_TI_SND_MSS),
        "unacked": u32(_TI_UNACKED),
        "rtt_us": u32(_TI_RTT),
        "min_rtt_us": u32(_TI_MIN_RTT),
        "total_retrans": u32(_TI_TOTAL_RETRANS),
        "notsent_bytes": u32(_TI_NOTSENT),
        "data_segs_in": u32(_TI_DATA_SEGS_IN),
        "data_segs_out": u32(_TI_DATA_SEGS_OUT),
    }


def wait_until(due: float) -> None:
    """Sleep until a monotonic deadline. No spinning: on a 2-core machine a spinning load generator starves the
    proxies it measures. The schedule is open-loop, so a late wake-up sends what is due at once."""
    lag = due - time.monotonic()
    if lag > 0:
        time.sleep(lag)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _message(seq: int, size: int) -> bytes:
    return HEADER.pack(seq, time.monotonic_ns()).ljust(size, b"m")


HIST_EDGES_US = [2**k for k in range(0, 21)]  # 1 us .. ~1 s, log2 bins: enough for CDF plots


def delay_summary(values: list[float]) -> dict:
    """p50/p99/max/mean of delays in ms, plus a log2 histogram in microseconds for CDF plots."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "hist_us": [0] * (len(HIST_EDGES_US) + 1)}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    hist = [0] * (len(HIST_EDGES_US) + 1)
    for v in ordered:
        us = v * 1000
        hist[next((i for i, edge in enumerate(HIST_EDGES_US) if us < edge), len(HIST_EDGES_US))] += 1
    return {
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
        "hist_us": hist,
    }


# -- server ---------------------------------------------------------------------------------------------------
def serve(port: int, mode: str, size: int, ready_fd: int | None, timeout_s: float, prelude: int = 0) -> dict:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(1)
    lsock.settimeout(timeout_s)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    conn, _ = lsock.accept()
    conn.settimeout(timeout_s)
    preface = _recv_exact(conn, len(PREFACE))
    conn.sendall(PREFACE)
    result: dict = {"preface_ok": preface == PREFACE}
    if mode in ("stream", "burst"):
        result |= _receive_messages(conn, size)
    elif mode == "wwr":
        exchanges = 0
        result["prelude_bytes"] = len(_recv_exact(conn, prelude * size))  # a one-way stream first, unanswered
        while True:
            request = _recv_exact(conn, size)
            if len(request) < size:
                result["trailing_bytes"] = len(request)
                break
            conn.sendall(request[:8])
            exchanges += 1
        result["exchanges"] = exchanges
    elif mode == "pingpong":
        rounds = 0
        while True:
            data = _recv_exact(conn, size)
            if len(data) < size:
                break
            conn.sendall(data)
            rounds += 1
        result["rounds"] = rounds
    result["tcp_info"] = tcp_info(conn)
    conn.close()
    lsock.close()
    return result


class MessageReader:
    """Reassembles fixed-size messages from a byte stream: order, per-message one-way delay, every byte counted."""

    def __init__(self, size: int):
        self.size = size
        self.buf = bytearray()
        self.total = 0
        self.expected = 0
        self.in_order = True
        self.delays_ms: list[float] = []

    def feed(self, chunk: bytes, now_ns: int) -> None:
        self.total += len(chunk)
        self.buf += chunk
        whole = len(self.buf) // self.size
        for i in range(whole):
            seq, sent = HEADER.unpack_from(self.buf, i * self.size)
            self.in_order &= seq == self.expected
            self.expected = seq + 1
            self.delays_ms.append((now_ns - sent) / 1e6)
        del self.buf[: whole * self.size]

    def summary(self) -> dict:
        return {
            "bytes": self.total,
            "messages": len(self.delays_ms),
            "partial_bytes": len(self.buf),
            "in_order": self.in_order,
            "delay_ms": delay_summary(self.delays_ms),
        }


def _receive_messages(conn: socket.socket, size: int) -> dict:
    """Read the stream to EOF through a MessageReader."""
    reader = MessageReader(size)
    while chunk := conn.recv(65536):
        reader.feed(chunk, time.monotonic_ns())
    return reader.summary()


# -- client ---------------------------------------------------------------------------------------------------
def _connect(host: str, port: int, nodelay: str, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if nodelay == "before":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # before connect, as Envoy does
    sock.settimeout(timeout_s)
    sock.connect((host, port))
    if nodelay == "after":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as applications that set it late do
    sock.sendall(PREFACE)
    if _recv_exact(sock, len(PREFACE)) != PREFACE:
        raise RuntimeError("server preface missing")
    return sock


def _drain(sock: socket.socket, limit_s: float = 2.0) -> None:
    """Wait (bounded) until the kernel has sent and got ACKs for everything written."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        info = tcp_info(sock)
        if info["unacked"] == 0 and info["notsent_bytes"] == 0:
            return
        time.sleep(0.001)


def run_client(args: argparse.Namespace) -> dict:
    sock = _connect(args.host, args.port, args.nodelay, args.timeout)
    before = tcp_info(sock)
    result: dict = {}
    start = time.monotonic()
    if args.mode in ("stream", "burst"):
        interval = 0.0 if args.mode == "burst" else 1.0 / args.rate
        t0 = time.monotonic()
        sent = 0
        for seq in range(args.count):
            if interval:
                wait_until(t0 + seq * interval)
            sock.sendall(_message(seq, args.size))
            sent += args.size
        if args.partial:
            sock.sendall(_message(args.count, args.size)[: args.partial])
            sent += args.partial
        result["bytes_sent"] = sent
        if args.end == "close":
            sock.close()  # mid-message when --partial: the tail must still arrive
            result["elapsed_s"] = time.monotonic() - start
            return result
        if args.end == "shutdown":
            sock.shutdown(socket.SHUT_WR)
        _drain(sock)
    elif args.mode == "wwr":
        stalls: list[float] = []
        half = args.size // 2
        for seq in range(args.prelude):  # a one-way stream at about 10k msg/s before the exchanges
            sock.sendall(_message(seq, args.size))
            time.sleep(0.0001)
        for seq in range(args.count):
            msg = _message(seq, args.size)
            t = time.monotonic_ns()
            sock.sendall(msg[:half])
            sock.sendall(msg[half:])
            if len(_recv_exact(sock, 8)) < 8:
                raise RuntimeError("server closed during write-write-read")
            stalls.append((time.monotonic_ns() - t) / 1e6)
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000)
        result["exchange_ms"] = delay_summary(stalls)
    elif args.mode == "pingpong":
        rtts: list[float] = []
        for seq in range(args.count):
            msg = _message(seq, args.size)
            t = time.monotonic_ns()
            sock.sendall(msg)
            if len(_recv_exact(sock, args.size)) < args.size:
                raise RuntimeError("server closed during ping-pong")
            rtts.append((time.monotonic_ns() - t) / 1e3)
        ms = delay_summary([r / 1000 for r in rtts])
        result["rtt_ms"] = ms
        result["rtt_us"] = {k: ms[k] * 1000 for k in ("p50", "p99", "max", "mean")}
        if args.samples:
            result["rtt_samples_us"] = rtts
    after = tcp_info(sock)
    result["elapsed_s"] = time.monotonic() - start
    result["data_segs_out"] = after["data_segs_out"] - before["data_segs_out"]
    result["total_retrans"] = after["total_retrans"]
    result["mss"] = after["snd_mss"]
    result["srtt_us"] = after["rtt_us"]
    result["min_rtt_us"] = after["min_rtt_us"]
    if args.end != "shutdown":
        sock.shutdown(socket.SHUT_WR)
    sock.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["stream", "burst", "wwr", "pingpong"], default="stream")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes (>= 16)")
    parser.add_argument("--rate", type=float, default=10_000, help="messages per second (stream)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--partial", type=int, default=0, help="bytes of one more, incomplete message at the end")
    parser.add_argument("--end", choices=["normal", "close", "shutdown"], default="normal")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between write-write-read exchanges")
    parser.add_argument("--prelude", type=int, default=0, help="wwr: stream this many messages first, unanswered")
    parser.add_argument(
        "--nodelay",
        choices=["before", "after", "never"],
        default="before",
        help="set TCP_NODELAY before connect (as Envoy), after connect, or never",
    )
    parser.add_argument("--samples", action="store_true", help="ping-pong: include every RTT sample")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--ready-fd", type=int, default=None, help="server: write 'ready' here once listening")
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    args = parser.parse_args(argv)
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.role == "server":
        result = serve(args.port, args.mode, args.size, args.ready_fd, args.timeout, args.prelude)
    else:
        result = run_client(args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
