"""Reliability under faults, bad input and time (``make bench-reliability``).

Each scenario module here has one ``run(full: bool) -> Report``: ``full=True`` is the
benchmark's size (written to ``benchmarks/results/reliability.{json,md}`` by ``__main__``),
``full=False`` a smaller run of the same code that ``tests/reliability/`` asserts on in
``make test``. A report says what load was held, which faults were injected, which bad inputs
were tried and what was lost (the goal: nothing), with the figures behind it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Report:
    """What one scenario did and what it cost."""

    name: str
    load: str
    """The load held while faults were injected, e.g. "10 RTSP cameras at 25 fps"."""
    faults: str
    """What was done to the system, e.g. "RTSP server killed and restarted 100 times"."""
    bad_inputs: str
    lost: str
    """What was lost or leaked, in words ("nothing" is the goal)."""
    ok: bool
    """Whether every check of the scenario held."""
    figures: dict[str, Any] = field(default_factory=dict)
    command: str = "make bench-reliability"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
