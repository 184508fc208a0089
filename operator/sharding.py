"""Sharding cameras across worker replicas by capacity, moving as few cameras as possible.

Replica ``i`` of a worker StatefulSet processes shard ``i``. The replica count is what the
cameras' frame rates need at the planned utilisation of one replica (or a fixed number of
streams per replica), within the Pipeline's min/max. Cameras keep their previous shard while
it still exists and has room; only the rest are placed, each on the least-loaded shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """One camera's load on a replica."""

    camera: str
    fps: float


Cost = Callable[[Demand], float]
"""Fraction of one replica's capacity a camera takes."""


@dataclass(frozen=True)
class ShardPlan:
    shards: list[list[str]]
    """Camera names per replica ordinal, each sorted."""
    overloaded: bool
    """True when max replicas cannot carry the cameras at the planned utilisation."""

    @property
    def replicas(self) -> int:
        return len(self.shards)


def plan_shards(
    demands: list[Demand],
    replica_fps: float,
    min_replicas: int,
    max_replicas: int,
    previous: Mapping[str, int],
    streams_per_replica: int | None = None,
) -> ShardPlan:
    """Assign every camera to a shard; see the module docstring for the rules."""
    if not demands:
        return ShardPlan(shards=[[] for _ in range(min_replicas)], overloaded=False)
    cost = _cost_function(replica_fps, streams_per_replica)
    needed = math.ceil(round(sum(cost(d) for d in demands), 9))
    replicas = max(1, min_replicas, min(needed, max_replicas))
    while True:
        shards, placed_all = _place(demands, replicas, previous, cost)
        if placed_all or replicas >= max_replicas:
            break
        replicas += 1  # fragmentation: the total fits but the pieces did not
    return ShardPlan(
        shards=[sorted(s) for s in shards],
        overloaded=not placed_all or needed > max_replicas,
    )


def _cost_function(replica_fps: float, streams_per_replica: int | None) -> Cost:
    if streams_per_replica:
        per_stream = 1.0 / streams_per_replica
        return lambda d: per_stream
    return lambda d: d.fps / replica_fps


def _place(
    demands: list[Demand], replicas: int, previous: Mapping[str, int], cost: Cost
) -> tuple[list[list[str]], bool]:
    shards: list[list[str]] = [[] for _ in range(replicas)]
    load = [0.0] * replicas
    placed_all = True
    # Sticky first: a camera stays where it was if that shard still exists and has room.
    rest = []
    for d in sorted(demands, key=lambda d: d.camera):
        i = previous.get(d.camera)
        if i is not None and i < replicas and load[i] + cost(d) <= 1.0 + 1e-9:
            shards[i].append(d.camera)
            load[i] += cost(d)
        else:
            rest.append(d)
    # Then the rest, biggest first, each on the least-loaded shard (lowest ordinal on ties).
    for d in sorted(rest, key=lambda d: (-cost(d), d.camera)):
        i = min(range(replicas), key=lambda j: (load[j], j))
        if load[i] + cost(d) > 1.0 + 1e-9:
            placed_all = False  # still placed: an overloaded camera beats an unwatched one
        shards[i].append(d.camera)
        load[i] += cost(d)
    return shards, placed_all
