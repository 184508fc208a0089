"""kopf's start-up gate, made linear in the number of objects.

Until every index is populated, kopf (1.45) gives each newly seen object a toggle in one
``ToggleSet`` and makes the object's handlers wait until the whole set is on. Adding or
dropping a toggle wakes every waiting object (``notify_all``), so n objects listed or created
before the gate opens cost about n² wake-ups: with 1,024 Nodes and 10,000 Cameras arriving
while it was still closed, the operator spent its whole time waking waiters and reconciled
nothing for minutes. A waiter waits for the set's state (on/off); adding or dropping a toggle
changes no toggle's own state, so only a change of the set's state needs to wake anyone.
:func:`install` makes ``make_toggle``/``drop_toggle``/``drop_toggles`` notify only then.
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet


async def _make_toggle(self: ToggleSet, __val: bool = False, *, name: str | None = None) -> Toggle:
    toggle = Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: ToggleSet, toggles: Iterable[Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: ToggleSet, toggle: Toggle) -> None:
    await _drop_toggles(self, (toggle,))


def install() -> None:
    """Replace the three methods (idempotent); called before ``kopf.run``."""
    ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
