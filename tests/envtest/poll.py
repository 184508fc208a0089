"""Polling with a deadline: the only way tests and the harness wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition was still false at the deadline; the message says what was awaited."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Call ``condition`` until it returns something truthy and return that value.

    Exceptions raised by ``condition`` count as "not yet" (the API may not be up yet); the last
    one is chained to the :class:`WaitTimeout` so a failure shows why it never became true.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - any error means "not ready yet"; kept below
            last_error = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}") from last_error
        time.sleep(interval)
