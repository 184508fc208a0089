"""Results that may still be computing on a GPU, so a thread can queue work and go on.

The worker's lane threads queue a batch's detector and classifier work on their CUDA streams
and wait for the answers only where they need them (the finishing thread, after tracking the
next batch), instead of sleeping in a synchronisation at every stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """A result that :meth:`result` waits for; the wait runs once, on the thread that asks."""

    def __init__(self, wait: Callable[[], T]) -> None:
        self._wait: Callable[[], T] | None = wait
        self._value: T | None = None

    @classmethod
    def done(cls, value: T) -> Pending[T]:
        """A result that is already there (host work, or nothing to do)."""
        return cls(lambda: value)

    def result(self) -> T:
        """The value, waiting for the device the first time."""
        if self._wait is not None:
            self._value, self._wait = self._wait(), None
        return self._value  # type: ignore[return-value]
