"""Make-before-break when cameras move between replicas, so no camera goes unwatched.

* **A camera moves onto a replica that is not ready yet** (scale-up, a restarting pod): its
  previous replica keeps a *handover copy* until the new one reports Ready.
* **Replicas are removed** (scale-down): for a handover window (the operator's
  ``handover_seconds``, 90 s by default) after the cameras' new homes
  were written, the StatefulSet keeps its old size and the retiring replicas keep their
  cameras as handover copies; only then are they removed. The window covers a worker picking
  up a changed ConfigMap (its poll) plus the kubelet projecting it into the pod.

Pure code: the reconciler brings the previous homes, the ready ordinals and the time the
homes last changed, and applies the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Handover:
    replicas: int
    """StatefulSet replicas to apply now (the plan's, or more while replicas retire)."""
    copies: list[list[str]]
    """Handover copies per replica ordinal (may be longer than the plan's shards)."""

    @property
    def active(self) -> bool:
        return any(self.copies)


def plan_handover(
    shards: list[list[str]],
    previous: Mapping[str, int],
    ready: set[int],
    running_replicas: int,
    seconds_since_change: float,
    window: float,
) -> Handover:
    """What to keep serving where, given the new homes (``shards``) and the old ones.

    ``previous``: camera -> the shard it was at home on; ``ready``: ordinals whose pod is Ready;
    ``running_replicas``: the StatefulSet's current replicas; ``seconds_since_change``: since
    the homes last changed.
    """
    planned = len(shards)
    retiring = running_replicas > planned and seconds_since_change < window
    replicas = running_replicas if retiring else planned
    copies: list[list[str]] = [[] for _ in range(replicas)]
    for new_home, cameras in enumerate(shards):
        for camera in cameras:
            old_home = previous.get(camera)
            if old_home is None or old_home == new_home or old_home not in ready:
                continue
            moving_to_unready = new_home not in ready
            old_home_retiring = old_home >= planned
            if old_home < replicas and (moving_to_unready or (retiring and old_home_retiring)):
                copies[old_home].append(camera)
    return Handover(replicas, [sorted(c) for c in copies])
