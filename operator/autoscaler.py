"""Scaling decisions for one worker group: an HPA-like rule on latency and dropped frames,
stabilisation windows, a maximum step, real capacity, and the degradation ladder.

Pure code: the caller brings the signals (:mod:`.signals`) and the clock, and applies the
:class:`Decision`. The rule, per decision:

* load ratio = max(p99 / SLO p99, 1 / (1 - drop rate)); within ``tolerance`` of 1 nothing
  changes; otherwise the recommendation is ``ceil(current x ratio)`` bounded by min/max
  replicas and ``max_step``;
* like the HPA's behaviour: a scale-up takes the lowest recommendation of the scale-up window,
  a scale-down the highest of the scale-down window, so a spike or a dip alone moves nothing;
* when more replicas are wanted than max replicas or free capacity allow, the next allowed
  degradation step is engaged instead; when load falls, steps are undone one at a time (newest
  first) before any replica is removed;
* without signals (workers or Prometheus unreachable) the decision holds and says why: never
  scale to zero or flap on missing data.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from kubevision.api.pipeline import DegradationStep
from kubevision.operator.conditions import METRICS_UNAVAILABLE
from kubevision.operator.signals import GroupSignals

HOLD_NO_METRICS = METRICS_UNAVAILABLE
"""Reason of a decision taken without signals (also the Autoscaling condition's reason)."""


@dataclass(frozen=True)
class Policy:
    """A group's scaling bounds and targets (from its Pipeline's spec)."""

    target_p99_ms: float
    min_replicas: int
    max_replicas: int
    ladder: tuple[DegradationStep, ...] = ()
    tolerance: float = 0.1
    max_step: int = 4
    scale_up_window: float = 0.0
    scale_down_window: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.max_step < 1:
            raise ValueError(f"max_step must be >= 1, got {self.max_step}")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")


@dataclass(frozen=True)
class Decision:
    replicas: int
    degradation: tuple[DegradationStep, ...]
    """Engaged ladder steps, in the order they were engaged."""
    reason: str
    ratio: float | None = None
    held: bool = False
    short: int = 0
    """Replicas wanted beyond what max replicas and free capacity allow (0 when none)."""

    def changed_from(self, replicas: int, degradation: tuple[DegradationStep, ...]) -> bool:
        return (self.replicas, self.degradation) != (replicas, degradation)


class Autoscaler:
    """Remembers recent recommendations of one group (bounded; older than the windows are
    irrelevant)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._history: deque[tuple[float, int, float]] = deque(maxlen=1024)
        """(time, recommended replicas, load ratio)"""

    def decide(
        self,
        now: float,
        replicas: int,
        degradation: tuple[DegradationStep, ...],
        signals: GroupSignals | None,
        capacity: int | None = None,
    ) -> Decision:
        """The next (replicas, degradation) for the group.

        ``capacity``: the most replicas the cluster can run for this group now (e.g. current
        replicas + free ``nvidia.com/gpu`` on matching nodes); None when unbounded.
        """
        p = self.policy
        if signals is None or signals.pods == 0:
            return Decision(
                replicas,
                degradation,
                f"{HOLD_NO_METRICS}: no worker of the group answered; holding",
                held=True,
            )
        ratio = _load_ratio(signals, p.target_p99_ms)
        recommendation = self._recommend(replicas, ratio)
        self._history.append((now, recommendation, ratio))
        if recommendation > replicas:
            return self._scale_up(now, replicas, degradation, ratio, signals, capacity)
        if ratio < 1 - p.tolerance and (recommendation < replicas or degradation):
            return self._scale_down(now, replicas, degradation, ratio, signals)
        return Decision(
            replicas, degradation, f"load {ratio:.2f} of target: within tolerance", ratio
        )

    def _scale_up(
        self,
        now: float,
        replicas: int,
        degradation: tuple[DegradationStep, ...],
        ratio: float,
        signals: GroupSignals,
        capacity: int | None,
    ) -> Decision:
        p = self.policy
        wanted = max(replicas, min(r for t, r, _ in self._history if t >= now - p.scale_up_window))
        ceiling = min(p.max_replicas, capacity if capacity is not None else p.max_replicas)
        if wanted <= ceiling:
            return Decision(wanted, degradation, _why(ratio, signals, replicas, wanted), ratio)
        remaining = [s for s in p.ladder if s not in degradation]
        short = f"need {wanted} replicas, at most {ceiling} possible"
        missing = wanted - ceiling
        if not remaining:
            return Decision(
                ceiling, degradation, f"{short}; degradation ladder exhausted", ratio, short=missing
            )
        return Decision(
            ceiling,
            (*degradation, remaining[0]),
            f"{short}: engaging {remaining[0]}",
            ratio,
            short=missing,
        )

    def _scale_down(
        self,
        now: float,
        replicas: int,
        degradation: tuple[DegradationStep, ...],
        ratio: float,
        signals: GroupSignals,
    ) -> Decision:
        p = self.policy
        since = now - p.scale_down_window
        window = [(r, q) for t, r, q in self._history if t >= since]
        covered = self._history[0][0] <= since
        if not covered or any(q >= 1 - p.tolerance for _, q in window):
            return Decision(
                replicas,
                degradation,
                f"load {ratio:.2f} of target: waiting out the scale-down window",
                ratio,
            )
        if degradation:
            return Decision(
                replicas,
                degradation[:-1],
                f"load {ratio:.2f} of target: undoing {degradation[-1]} first",
                ratio,
            )
        wanted = max(p.min_replicas, max(r for r, _ in window))
        return Decision(
            min(wanted, replicas),
            degradation,
            _why(ratio, signals, replicas, min(wanted, replicas)),
            ratio,
        )

    def _recommend(self, replicas: int, ratio: float) -> int:
        p = self.policy
        if abs(ratio - 1) <= p.tolerance:
            return replicas
        raw = math.ceil(max(replicas, 1) * ratio)
        return max(p.min_replicas, replicas - p.max_step, min(replicas + p.max_step, raw))


def _load_ratio(signals: GroupSignals, target_p99_ms: float) -> float:
    """How loaded the group is relative to its SLO (1.0 = exactly at target)."""
    latency = (signals.p99_ms or 0.0) / target_p99_ms
    drops = 1 / (1 - min(signals.drop_rate, 0.99))
    return max(latency, drops if signals.drop_rate > 0.01 else 0.0)


def _why(ratio: float, signals: GroupSignals, before: int, after: int) -> str:
    p99 = "n/a" if signals.p99_ms is None else f"{signals.p99_ms:.0f} ms"
    verb = "scaling" if after != before else "holding"
    return (
        f"{verb} {before} -> {after}: load {ratio:.2f} of target (p99 {p99}, drops "
        f"{signals.drop_rate:.1%}, queue {signals.queue_depth:.0f})"
    )
