"""Waiting for a condition: the one polling loop of freshrec, its tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T | None:
    """Call ``check`` every ``interval_s`` until it returns something truthy, and return that;
    ``None`` once ``timeout_s`` have passed (``check`` runs at least once). Exceptions from
    ``check`` propagate: raising there is how a caller gives up early (a process died).

    >>> calls = []
    >>> wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done", 5, interval_s=0)
    'done'
    >>> wait_until(lambda: 0, timeout_s=0.05, interval_s=0.01) is None
    True
    """
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval_s, left))
