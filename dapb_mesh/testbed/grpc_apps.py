"""gRPC workloads behind the sidecars (grpcio, raw bytes: no generated code), on the apps' gRPC port.

Service dapb.Bench:
  Echo   (unary):            any request -> x-response-size bytes (metadata; default 1 KiB)
  Stream (client streaming): fixed-size messages (sequence number + send time each) -> a JSON summary of what
                             arrived, as the HTTP stream server gives (bytes, order, one-way delays)
"""

from __future__ import annotations

import json
import time
from concurrent import futures
from contextlib import contextmanager

import grpc

from dapb_mesh.testbed.paced_load import paced_requests
from dapb_mesh.testbed.tcpwork import HEADER, MessageReader, wait_until

SERVICE = "dapb.Bench"
ECHO, STREAM = f"/{SERVICE}/Echo", f"/{SERVICE}/Stream"


def serve(port: int, forward_to: tuple[str, int, str] | None = None) -> grpc.Server:
    """Start the Bench service on 0.0.0.0:port (cleartext HTTP/2, as an app behind a sidecar listens). With
    ``forward_to`` (host, port, authority) it relays every call to the next hop of a chain instead, message by
    message, and returns the next hop's answer."""
    downstream = _channel(*forward_to) if forward_to else None

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()
        if downstream is not None:
            return downstream.unary_unary(ECHO)(request, metadata=_passed_on(metadata))
        return b"r" * int(dict(metadata).get("x-response-size", 1024))

    def stream(requests, context: grpc.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()
        if downstream is not None:
            return downstream.stream_unary(STREAM)(requests, metadata=_passed_on(metadata))
        reader = MessageReader(int(dict(metadata).get("x-msg-size", 64)))
        for message in requests:
            reader.feed(message, time.monotonic_ns())
        return json.dumps({**reader.summary(), "complete": True}).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.stream_unary_rpc_method_handler(stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    return server


def _passed_on(metadata) -> list[tuple[str, str]]:
    return [(k, v) for k, v in metadata if k in ("x-msg-size", "x-response-size")]


def _channel(host: str, port: int, authority: str) -> grpc.Channel:
    # The authority picks the route in the sidecar, as the Host header does for HTTP/1.1.
    return grpc.insecure_channel(f"{host}:{port}", options=[("grpc.default_authority", authority)])


def client_stream(host: str, port: int, rate: float, count: int, size: int, authority: str, timeout_s: float) -> dict:
    """``count`` messages at ``rate`` on one client-streaming call; the server's summary plus our own view."""
    report: dict = {"bytes_sent": 0, "messages_sent": 0, "error": None}
    t0 = time.monotonic()

    def messages():
        for seq in range(count):
            wait_until(t0 + seq / rate)
            yield HEADER.pack(seq, time.monotonic_ns()).ljust(size, b"m")
            report["messages_sent"], report["bytes_sent"] = seq + 1, (seq + 1) * size
        report["elapsed_s"] = time.monotonic() - t0

    with _channel(host, port, authority) as channel:
        call = channel.stream_unary(STREAM)
        try:
            answer = call(messages(), metadata=[("x-msg-size", str(size))], timeout=timeout_s)
            report["server"] = json.loads(answer)
        except grpc.RpcError as error:
            report["error"] = f"{error.code().name}: {error.details()}"
    report.setdefault("elapsed_s", time.monotonic() - t0)
    return report


def unary(
    host: str, port: int, rate: float, count: int, size: int, connections: int, authority: str, timeout_s: float
) -> dict:
    """Unary calls for ``size``-byte answers, each connection its own channel (HTTP/2 connection); reported as
    the HTTP request/response load is (paced_load.paced_requests)."""

    @contextmanager
    def connection():
        with _channel(host, port, authority) as channel:
            rpc = channel.unary_unary(ECHO)

            def call() -> int:
                try:
                    return len(rpc(b"q", metadata=[("x-response-size", str(size))], timeout=timeout_s))
                except grpc.RpcError as error:
                    raise RuntimeError(f"{error.code().name}: {error.details()}") from None

            yield call

    return paced_requests(rate, count, size, connections, timeout_s, connection)
