"""Waiting for something another thread or process does, bounded in time (shared by the tests)."""

import time


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    """True as soon as ``predicate()`` holds, False once ``timeout_s`` passed without it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
