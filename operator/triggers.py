"""Wake-up calls for Pipeline reconcilers.

Each Pipeline has one reconciler task (a kopf daemon) that sleeps until something relevant
changes — its own spec, a Camera or ModelVariant in its namespace, a Node's hardware facts, one
of its StatefulSets — or the resync period passes. Handlers of those objects fire the trigger
instead of reconciling themselves, so bursts of changes coalesce into one reconcile.
Used only from the operator's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

from kubevision.api.common import LabelSelector

PipelineKey = tuple[str, str]
"""(namespace, name): the one way a Pipeline is keyed in the operator's runtime state."""


def pipeline_key(namespace: str, name: str) -> PipelineKey:
    return (namespace, name)


class Triggers:
    """One asyncio.Event per live Pipeline reconciler."""

    def __init__(self) -> None:
        self._events: dict[PipelineKey, asyncio.Event] = {}
        self._selectors: dict[PipelineKey, LabelSelector | None] = {}
        """Each reconciler's camera selector, as its last pass read it (absent: not yet)."""

    def register(self, key: PipelineKey) -> asyncio.Event:
        event = self._events.setdefault(key, asyncio.Event())
        event.set()  # reconcile at once on start
        return event

    def unregister(self, key: PipelineKey) -> None:
        self._events.pop(key, None)
        self._selectors.pop(key, None)

    def interest(self, key: PipelineKey, selector: LabelSelector | None) -> None:
        """The cameras ``key`` selects (None: unknown, so every Camera change wakes it)."""
        self._selectors[key] = selector

    def fire_selecting(
        self,
        namespace: str,
        labels: Iterable[Mapping[str, str]],
        pipelines: Iterable[str] = (),
    ) -> None:
        """Wake the namespace's Pipelines that select any of ``labels`` (a Camera's labels
        before and after a change) or are named in ``pipelines`` (those it is assigned to),
        and those whose selector is not known yet."""
        label_sets, named = [dict(x) for x in labels], set(pipelines)
        for key, event in self._events.items():
            if key[0] != namespace:
                continue
            selector = self._selectors.get(key)
            if key[1] in named or selector is None or any(selector.matches(x) for x in label_sets):
                event.set()

    def selected(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether a live Pipeline of the namespace selects (or, not reconciled yet, may
        select) a Camera with ``labels``."""
        plain = dict(labels)
        for key in self._events:
            if key[0] != namespace:
                continue
            selector = self._selectors.get(key)
            if selector is None or selector.matches(plain):
                return True
        return False

    def fire(self, key: PipelineKey) -> None:
        if key in self._events:
            self._events[key].set()

    def fire_namespace(self, namespace: str) -> None:
        for key, event in self._events.items():
            if key[0] == namespace:
                event.set()

    def fire_all(self) -> None:
        for event in self._events.values():
            event.set()

    def pipelines(self, namespace: str) -> set[str]:
        """Names of the Pipelines in ``namespace`` that have a live reconciler."""
        return {name for ns, name in self._events if ns == namespace}

    async def wait(self, key: PipelineKey, timeout: float) -> None:
        """Sleep until fired or ``timeout`` seconds pass, then re-arm."""
        event = self._events[key]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()
