"""Request/response load at a fixed rate over several connections, whatever the protocol: the HTTP/1.1 client
(apps.request_response) and the gRPC one (grpc_apps.unary) each bring their own connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dapb_mesh.testbed.tcpwork import delay_summary, wait_until


def paced_requests(rate: float, count: int, size: int, connections: int, timeout_s: float, connect: Callable) -> dict:
    """Istio-benchmark style load: ``count`` requests at ``rate`` per second over ``connections`` connections,
    each paced on its own schedule (a late answer delays only its connection). ``connect()`` is a context manager
    that opens one connection and yields ``call() -> bytes answered``; a failing call ends its connection's
    schedule and the first failure is reported. Latency per request, end to end, in log2 bins as for one-way
    delays."""
    latencies: list[float] = []
    received = [0]
    errors: list[str] = []
    lock = threading.Lock()
    per_conn = max(1, count // connections)

    def worker(offset: float) -> None:
        mine: list[float] = []
        got = 0
        try:
            with connect() as call:
                t0 = time.monotonic() + offset
                for i in range(per_conn):
                    wait_until(t0 + i * connections / rate)
                    start = time.monotonic_ns()
                    got += call()
                    mine.append((time.monotonic_ns() - start) / 1e6)
        except (OSError, RuntimeError) as error:
            errors.append(f"{type(error).__name__}: {error}")
        with lock:
            latencies.extend(mine)
            received[0] += got

    threads = [threading.Thread(target=worker, args=(c / rate,)) for c in range(connections)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout_s)
    return {
        "requests": len(latencies),
        "bytes": received[0],
        "expected_bytes": per_conn * connections * size,
        "latency_ms": delay_summary(latencies),
        "elapsed_s": time.monotonic() - t,
        "error": errors[0] if errors else None,
    }
