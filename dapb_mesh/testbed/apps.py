"""Testbed workloads behind the sidecars, speaking plain HTTP/1.1 to their local Envoy as most apps do.

server: POST /stream takes a chunked body of fixed-size messages (sequence number + send time each) and answers
        with what it measured: bytes, messages, order, per-message one-way delay. With --results DIR it also
        writes that summary to DIR/<x-stream-id>.json, complete or not, so that a stream that breaks (client
        abort, proxy killed) is still accounted for. `x-fail-after: K` makes it reset the connection after K
        messages (an upstream failure). Any other request gets a body of x-response-size bytes (default 1 KiB),
        for request/response load from wrk, h2load or curl.
relay:  the middle of a chain: POST /stream is forwarded chunk by chunk, as it arrives, to --next (through this
        pod's sidecar), and the next hop's answer is returned. Other requests are served as by the server.
grpc-stream, grpc-rr: the same two workloads over gRPC (grpc_apps.py), against the server's --grpc-port.
client: POST /stream at a fixed rate, one chunk per message, then (after --pause-ms) ends the body and prints the
        server's answer plus its own view, or with --abort resets the connection instead.

  python -m dapb_mesh.testbed.apps server --port 8080
  python -m dapb_mesh.testbed.apps client --host IP --port 8080 --rate 10000 --count 20000 --size 64
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dapb_mesh.testbed.paced_load import paced_requests
from dapb_mesh.testbed.tcpwork import HEADER, MessageReader, wait_until

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends RST, as a crashed peer would


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    results_dir: Path | None = None
    forward_to: tuple[str, int, str] | None = None  # relay: (host, port, authority) of the next hop

    def log_message(self, *args) -> None:  # quiet: the bench reads stdout
        pass

    def setup(self) -> None:
        super().setup()
        # Like most servers (Go's net/http, Envoy), no Nagle: headers and body are separate writes here.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _reply(self, body: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        size = int(self.headers.get("x-response-size", 1024))
        self._reply(b"r" * size)

    def do_POST(self) -> None:
        if self.path.startswith("/stream") and self.forward_to is not None:
            self._relay()
            return
        if self.path.startswith("/stream"):
            summary = self._stream()
            if summary["complete"]:
                self._reply(json.dumps(summary).encode(), "application/json")
            else:
                self.close_connection = True
            return
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        self.do_GET()

    def _stream(self) -> dict:
        reader = MessageReader(int(self.headers.get("x-msg-size", 64)))
        fail_after = int(self.headers.get("x-fail-after", 0))
        complete = False
        try:
            for chunk in _chunks(self.rfile):
                if not chunk:
                    complete = True
                    break
                reader.feed(chunk, time.monotonic_ns())
                if fail_after and len(reader.delays_ms) >= fail_after:
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                    self.request.close()
                    break
        except (OSError, ValueError):
            pass  # a broken stream: what arrived is still recorded
        summary = {**reader.summary(), "complete": complete}
        stream_id = self.headers.get("x-stream-id", "")
        if self.results_dir is not None and stream_id.isalnum():
            path = self.results_dir / f"{stream_id}.json"
            path.with_suffix(".tmp").write_text(json.dumps(summary))
            path.with_suffix(".tmp").rename(path)
        return summary

    def _relay(self) -> None:
        """Forward the chunked body to the next hop as it arrives (one write per chunk), then its answer back."""
        host, port, authority = self.forward_to
        extra = "".join(f"{k}: {self.headers[k]}\r\n" for k in ("x-msg-size", "x-stream-id") if self.headers.get(k))
        try:
            with socket.create_connection((host, port), timeout=60) as down:
                down.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                down.sendall(
                    f"POST /stream HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\n{extra}\r\n".encode()
                )
                for chunk in _chunks(self.rfile):
                    down.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # the empty last chunk too
                answer = _read_response(down)
        except (OSError, RuntimeError, ValueError) as error:
            self.send_response(502)
            body = json.dumps({"error": f"relay to {authority}: {error}"}).encode()
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._reply(json.dumps(answer).encode(), "application/json")


def _chunks(rfile) -> Iterator[bytes]:
    """The chunks of a chunked HTTP/1.1 body as they arrive, ending with the empty last chunk; a body that
    breaks off (EOF) just ends sooner. ValueError on a malformed size line."""
    while line := rfile.readline():
        n = int(line.split(b";")[0], 16)
        chunk = rfile.read(n) if n else b""
        rfile.readline()  # the CRLF after the data (or the empty trailer section)
        yield chunk
        if not n:
            return


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A peer that went away mid-response (a load client stopping at its deadline) is not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(
    port: int,
    results_dir: Path | None = None,
    forward_to: tuple[str, int, str] | None = None,
    grpc_port: int | None = None,
) -> None:
    _Handler.results_dir = results_dir
    _Handler.forward_to = forward_to
    grpc_server = None
    if grpc_port:
        from dapb_mesh.testbed import grpc_apps

        grpc_forward = None
        if forward_to is not None:  # a relay relays gRPC too: the next hop's gRPC port, same host name
            host, _, authority = forward_to
            grpc_forward = (host, grpc_port, f"{authority.rpartition(':')[0]}:{grpc_port}")
        grpc_server = grpc_apps.serve(grpc_port, grpc_forward)  # kept: a collected grpc.Server stops serving
    server = _QuietServer(("0.0.0.0", port), _Handler)
    print("ready", flush=True)
    try:
        server.serve_forever()
    finally:
        if grpc_server is not None:
            grpc_server.stop(0)


def _read_response(sock: socket.socket) -> dict:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed before the response: {bytes(data[:200])!r}")
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if b" 200 " not in status:
        raise RuntimeError(f"stream failed: {status.decode()} {body[:200]!r}")
    return json.loads(body)


def stream(
    host: str,
    port: int,
    rate: float,
    count: int,
    size: int,
    authority: str,
    timeout_s: float,
    *,
    stream_id: str = "",
    pause_ms: float = 0.0,
    abort: bool = False,
    fail_after: int = 0,
) -> dict:
    """Stream ``count`` messages at ``rate``; wait ``pause_ms``; then end the body and read the server's answer,
    or with ``abort`` reset the connection. A failed stream is reported (``error``), not raised."""
    extra = f"x-stream-id: {stream_id}\r\n" if stream_id else ""
    extra += f"x-fail-after: {fail_after}\r\n" if fail_after else ""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        f"POST /stream HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\n"
        f"content-type: application/octet-stream\r\nx-msg-size: {size}\r\n{extra}\r\n".encode()
    )
    interval = 1.0 / rate
    prefix = f"{size:x}\r\n".encode()
    t0 = time.monotonic()
    report: dict = {"bytes_sent": 0, "messages_sent": 0, "error": None}
    try:
        for seq in range(count):
            wait_until(t0 + seq * interval)
            sock.sendall(prefix + HEADER.pack(seq, time.monotonic_ns()).ljust(size, b"m") + b"\r\n")
            report["messages_sent"], report["bytes_sent"] = seq + 1, (seq + 1) * size
        report["elapsed_s"] = time.monotonic() - t0
        report["sent_done_ns"] = time.monotonic_ns()  # CLOCK_MONOTONIC: comparable across the testbed's namespaces
        time.sleep(pause_ms / 1000)
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        else:
            sock.sendall(b"0\r\n\r\n")
            report["server"] = _read_response(sock)
    except (OSError, RuntimeError) as error:
        report["error"] = f"{type(error).__name__}: {error}"
    report.setdefault("elapsed_s", time.monotonic() - t0)
    sock.close()
    return report


def request_response(
    host: str, port: int, rate: float, count: int, size: int, connections: int, authority: str, timeout_s: float
) -> dict:
    """GETs for ``size``-byte responses over keep-alive HTTP/1.1 connections (paced_load.paced_requests)."""
    request = f"GET / HTTP/1.1\r\nhost: {authority}\r\nx-response-size: {size}\r\n\r\n".encode()

    @contextmanager
    def connection():
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")

        def call() -> int:
            sock.sendall(request)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length"):
                    length = int(line.split(b":")[1])
            return len(reader.read(length))

        try:
            yield call
        finally:
            sock.close()

    return paced_requests(rate, count, size, connections, timeout_s, connection)


def merge_delays(parts: list[dict]) -> dict:
    """Delay summaries of several streams as one: histograms add up, max and the message-weighted mean are
    exact; p50 and p99 are the largest of the parts (an upper bound: the parts' samples are not kept)."""
    return {
        "p50": max(p["p50"] for p in parts),
        "p99": max(p["p99"] for p in parts),
        "max": max(p["max"] for p in parts),
        "mean": sum(p["mean"] * sum(p["hist_us"]) for p in parts) / max(1, sum(sum(p["hist_us"]) for p in parts)),
        "hist_us": [sum(b) for b in zip(*(p["hist_us"] for p in parts), strict=True)],
    }


def merge(answers: list[dict]) -> dict:
    """The answers of several clients (fan-out) as one: counts and bytes add up, times take the longest,
    flags must all hold, delay summaries merge (merge_delays), the first error is kept."""
    out: dict = {}
    for key, first in answers[0].items():
        values = [a.get(key) for a in answers]
        if key in ("delay_ms", "latency_ms"):
            out[key] = merge_delays(values)
        elif isinstance(first, dict):
            out[key] = merge(values)
        elif isinstance(first, bool):
            out[key] = all(values)
        elif key == "error" or first is None:
            out[key] = next((v for v in values if v), None)
        elif key.startswith("elapsed"):
            out[key] = max(values)
        else:
            out[key] = sum(values)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["server", "relay", "client", "rr", "grpc-stream", "grpc-rr"])
    parser.add_argument("--grpc-port", type=int, help="server: also serve dapb.Bench over gRPC on this port")
    parser.add_argument("--next", help="relay: host:port of the next hop")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--authority", default="svc-b:8080", help="Host header: which service the route is for")
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=2, help="rr: keep-alive connections")
    parser.add_argument("--results", type=Path, help="server: write each stream's summary to this directory")
    parser.add_argument("--stream-id", default="", help="client: names the stream's summary file on the server")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="client: idle time before ending the body")
    parser.add_argument("--abort", action="store_true", help="client: reset the connection instead of ending")
    parser.add_argument("--fail-after", type=int, default=0, help="client: ask the server to reset after K messages")
    args = parser.parse_args(argv)
    if args.role in ("server", "relay"):
        forward = None
        if args.role == "relay":
            if not args.next or ":" not in args.next:
                parser.error("relay needs --next host:port")
            host, _, port = args.next.rpartition(":")
            forward = (host, int(port), args.authority)
        serve(args.port, args.results, forward, args.grpc_port)
        return 0
    if args.role.startswith("grpc"):
        from dapb_mesh.testbed import grpc_apps

        common = (args.host, args.port, args.rate, args.count, args.size)
        if args.role == "grpc-rr":
            result = grpc_apps.unary(*common, args.connections, args.authority, args.timeout)
        else:
            result = grpc_apps.client_stream(*common, args.authority, args.timeout)
        json.dump(result, sys.stdout)
        print()
        return 0
    if args.role == "rr":
        json.dump(
            request_response(
                args.host, args.port, args.rate, args.count, args.size, args.connections, args.authority, args.timeout
            ),
            sys.stdout,
        )
        print()
        return 0
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")
    result = stream(
        args.host,
        args.port,
        args.rate,
        args.count,
        args.size,
        args.authority,
        args.timeout,
        stream_id=args.stream_id,
        pause_ms=args.pause_ms,
        abort=args.abort,
        fail_after=args.fail_after,
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
