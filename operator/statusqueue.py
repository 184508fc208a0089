"""A coalescing queue of objects whose status waits to be written.

One entry per object: queuing an object again replaces its body (the newest wins) and its
hold, but keeps the time it was first queued, so a burst of changes is written once, with the
last state, and the queue never holds more entries than there are objects. Used from the
event loop only.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class StatusQueue:
    def __init__(self) -> None:
        self._pending: dict[Hashable, tuple[dict[str, Any], float, float]] = {}

    def put(self, key: Hashable, body: dict[str, Any], now: float, hold: float = 0.0) -> bool:
        """Queue ``body``; it is due ``hold`` seconds after the object was first queued.
        Returns whether it is due already (it waited long enough before)."""
        first = self._pending[key][1] if key in self._pending else now
        self._pending[key] = (body, first, hold)
        return now - first >= hold

    def requeue(self, key: Hashable, body: dict[str, Any], now: float, hold: float) -> None:
        """Queue again after a failed write, unless a newer body came in meanwhile."""
        if key not in self._pending:
            self._pending[key] = (body, now, hold)

    def discard(self, key: Hashable) -> None:
        self._pending.pop(key, None)

    def take(self, now: float) -> list[tuple[Any, dict[str, Any]]]:
        """Remove and return the entries that are due."""
        ready = [(k, b) for k, (b, first, hold) in self._pending.items() if now - first >= hold]
        for key, _ in ready:
            del self._pending[key]
        return ready

    def __len__(self) -> int:
        return len(self._pending)
