"""kopf's start-up gate with :mod:`kubevision.operator.kopf_toggles`: objects waiting for the
indexes are woken once, when the gate opens, not once per object added or dropped; and the
gate still opens and closes as kopf expects."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import ToggleSet

from kubevision.operator import kopf_toggles

OBJECTS = 300


class _CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += len(self._waiters)
        super().notify_all()


async def _gate_with_waiters() -> tuple[int, bool]:
    """kopf's pattern: a blocker, then each object adds its toggle, drops it once indexed and
    waits for the whole set; the blocker goes last. Returns the wake-ups and whether every
    object got through."""
    gate = ToggleSet(all)
    gate._condition = condition = _CountingCondition()
    blocker = await gate.make_toggle(name="blocker")

    async def one_object(n: int) -> None:
        mine = await gate.make_toggle(name=f"object {n}")
        await asyncio.sleep(0)  # indexing
        await gate.drop_toggle(mine)
        await gate.wait_for(True)

    objects = [asyncio.create_task(one_object(n)) for n in range(OBJECTS)]
    while len(gate) > 1:  # every object indexed and waiting
        await asyncio.sleep(0)
    await gate.drop_toggle(blocker)
    done, _ = await asyncio.wait(objects, timeout=10)
    return condition.wakeups, len(done) == OBJECTS


def test_waiting_objects_wake_once_when_the_gate_opens() -> None:
    kopf_toggles.install()
    wakeups, all_through = asyncio.run(_gate_with_waiters())
    assert all_through
    assert wakeups <= OBJECTS  # kopf's own methods: about OBJECTS² / 2


async def _closes_again() -> bool:
    gate = ToggleSet(all)
    closed = asyncio.create_task(gate.wait_for(False))
    await asyncio.sleep(0)
    await gate.make_toggle(name="late")  # an off toggle turns an empty (on) set off
    await asyncio.wait_for(closed, timeout=5)
    return gate.is_off()


def test_adding_an_off_toggle_to_an_open_gate_still_wakes_who_waits_for_off() -> None:
    kopf_toggles.install()
    assert asyncio.run(_closes_again())
