"""Dynamic batching across streams: one model call serves many cameras.

Every stream has one slot holding its freshest frame: a newer frame replaces a waiting one
(counted in ``dropped``), so a stream never queues stale frames behind a slow model and the
batcher's memory is bounded by the number of streams. A batch is due when ``max_batch``
streams are waiting or when the longest-waiting frame has waited ``max_wait``; it takes at
most one frame per stream, longest-waiting streams first, so under overload every stream is
served within ``ceil(streams / max_batch)`` batches and none starves.

Times are the caller's monotonic seconds (``now`` arguments), so the policy is pure and
tests drive it without sleeping; capture time travels with each item so the latency a stream
sees is counted from when its frame was captured, not when it was batched.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Item(Generic[K, T]):
    """One stream's frame waiting for (or in) a batch."""

    stream: K
    payload: T
    captured: float
    """Monotonic seconds when the frame was captured (latency is counted from here)."""
    queued: float
    """Monotonic seconds when it entered the batcher (max_wait is counted from here)."""


class DynamicBatcher(Generic[K, T]):
    """Latest-frame-per-stream slots and the rule that turns them into batches. Thread-safe."""

    def __init__(self, max_batch: int, max_wait: float) -> None:
        """Args:
        max_batch: most frames (= streams) per batch, >= 1.
        max_wait: seconds a frame may wait for others before a partial batch goes, >= 0.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._slots: dict[K, Item[K, T]] = {}
        self._dropped: dict[K, int] = {}
        self._lock = threading.Lock()

    def put(self, stream: K, payload: T, captured: float, now: float) -> bool:
        """Offer a stream's new frame; True when it replaced one still waiting (a drop)."""
        with self._lock:
            replaced = stream in self._slots
            if replaced:
                self._dropped[stream] = self._dropped.get(stream, 0) + 1
                queued = self._slots[stream].queued  # the stream keeps its place in line
            else:
                queued = now
            self._slots[stream] = Item(stream, payload, captured, queued)
            return replaced

    def discard(self, stream: K) -> None:
        """Forget a stream (removed camera): its waiting frame and its drop count."""
        with self._lock:
            self._slots.pop(stream, None)
            self._dropped.pop(stream, None)

    @property
    def pending(self) -> int:
        """Frames waiting (at most one per stream)."""
        with self._lock:
            return len(self._slots)

    @property
    def streams(self) -> int:
        """Streams the batcher remembers anything of (a slot or a drop count): a removed
        camera must not stay here, so this is bounded by the cameras."""
        with self._lock:
            return len(self._slots.keys() | self._dropped.keys())

    def dropped(self, stream: K) -> int:
        """Frames of ``stream`` replaced by a fresher one before they were batched."""
        with self._lock:
            return self._dropped.get(stream, 0)

    def due_in(self, now: float) -> float | None:
        """Seconds until a batch is due (0 if it is now), or None when nothing waits."""
        with self._lock:
            return self._due_in(now)

    def take(self, now: float) -> list[Item[K, T]]:
        """The due batch (emptying its slots), or [] when no batch is due yet."""
        with self._lock:
            wait = self._due_in(now)
            if wait is None or wait > 0:
                return []
            batch = sorted(self._slots.values(), key=lambda item: item.queued)[: self.max_batch]
            for item in batch:
                del self._slots[item.stream]
            return batch

    def _due_in(self, now: float) -> float | None:
        if not self._slots:
            return None
        if len(self._slots) >= self.max_batch:
            return 0.0
        oldest = min(item.queued for item in self._slots.values())
        return max(0.0, oldest + self.max_wait - now)
