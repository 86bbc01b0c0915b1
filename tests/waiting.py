"""Waiting in tests: on a condition, with a deadline, never for a fixed time."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 60.0, every: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something true and return that; fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout:.0f} s")
        time.sleep(every)
