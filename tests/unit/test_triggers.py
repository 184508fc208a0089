"""Wake-up calls for Pipeline reconcilers: a change reaches the right reconcilers, bursts
coalesce into one reconcile, and a quiet reconciler still wakes at the resync period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from kubevision.operator.triggers import PipelineKey, Triggers, pipeline_key

TICK = 0.05  # the "resync period" of these tests, in seconds
A1, A2, B1 = pipeline_key("ns-a", "one"), pipeline_key("ns-a", "two"), pipeline_key("ns-b", "one")


async def woke(triggers: Triggers, key: PipelineKey) -> bool:
    """Whether ``wait`` returned because of a trigger rather than the timeout."""
    start = time.monotonic()
    await triggers.wait(key, TICK)
    return time.monotonic() - start < TICK * 0.9


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=5))


def test_register_fires_once_at_start_then_waits_for_the_resync() -> None:
    async def scenario() -> None:
        triggers = Triggers()
        triggers.register(A1)
        assert await woke(triggers, A1)  # first reconcile at once
        start = time.monotonic()
        assert not await woke(triggers, A1)  # then nothing until the timeout
        assert time.monotonic() - start >= TICK * 0.9

    run(scenario)


@pytest.mark.parametrize(
    ("fire", "woken"),
    [
        pytest.param(lambda t: t.fire(A1), {A1}, id="fire-one"),
        pytest.param(lambda t: t.fire(pipeline_key("ns-a", "gone")), set(), id="fire-unknown"),
        pytest.param(lambda t: t.fire_namespace("ns-a"), {A1, A2}, id="fire-namespace"),
        pytest.param(lambda t: t.fire_namespace("ns-c"), set(), id="fire-empty-namespace"),
        pytest.param(lambda t: t.fire_all(), {A1, A2, B1}, id="fire-all"),
    ],
)
def test_fires_reach_exactly_the_right_reconcilers(
    fire: Callable[[Triggers], None], woken: set[PipelineKey]
) -> None:
    async def scenario() -> None:
        triggers = Triggers()
        for key in (A1, A2, B1):
            triggers.register(key)
            await triggers.wait(key, TICK)  # consume the start-up fire
        fire(triggers)
        results = await asyncio.gather(*(woke(triggers, k) for k in (A1, A2, B1)))
        assert {k for k, w in zip((A1, A2, B1), results, strict=True) if w} == woken

    run(scenario)


def test_fire_wakes_a_reconciler_that_is_already_waiting() -> None:
    async def scenario() -> None:
        triggers = Triggers()
        triggers.register(A1)
        await triggers.wait(A1, TICK)
        waiting = asyncio.create_task(woke(triggers, A1))
        await asyncio.sleep(0)  # let it start waiting
        triggers.fire(A1)
        assert await waiting

    run(scenario)


def test_a_burst_of_fires_coalesces_into_one_wake_up() -> None:
    async def scenario() -> None:
        triggers = Triggers()
        triggers.register(A1)
        for _ in range(10):
            triggers.fire(A1)
            triggers.fire_namespace("ns-a")
            triggers.fire_all()
        assert await woke(triggers, A1)
        assert not await woke(triggers, A1)

    run(scenario)


def test_unregistered_pipelines_are_forgotten() -> None:
    async def scenario() -> None:
        triggers = Triggers()
        for key in (A1, A2, B1):
            triggers.register(key)
        assert triggers.pipelines("ns-a") == {"one", "two"}
        triggers.unregister(A2)
        triggers.unregister(A2)  # twice is harmless
        assert triggers.pipelines("ns-a") == {"one"}
        assert triggers.pipelines("ns-b") == {"one"}
        assert triggers.pipelines("ns-c") == set()
        triggers.fire(A2)  # a late event for a deleted Pipeline is ignored
        triggers.fire_namespace("ns-a")
        assert triggers.pipelines("ns-a") == {"one"}

    run(scenario)


def test_registering_again_keeps_one_event_and_fires_it() -> None:
    async def scenario() -> None:
        triggers = Triggers()
        first = triggers.register(A1)
        await triggers.wait(A1, TICK)
        second = triggers.register(A1)
        assert first is second
        assert await woke(triggers, A1)

    run(scenario)
