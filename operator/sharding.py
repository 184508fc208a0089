"""Sharding cameras across worker replicas by capacity, moving as few cameras as possible.

Replica ``i`` of a worker StatefulSet processes shard ``i``. The replica count is what the
cameras' frame rates need at the planned utilisation of one replica (or a fixed number of
streams per replica), within the Pipeline's min/max. Cameras keep their previous shard while
it still exists and has room; only the rest are placed, largest first, each on the first shard
with room.
"""

from __future__ import annotations

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
    estimated_replicas: int = 0
    """What the expected throughput alone asks for (before any autoscaler decision)."""

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
    fixed_replicas: int | None = None,
) -> ShardPlan:
    """Assign every camera to a shard; see the module docstring for the rules.

    ``fixed_replicas`` (the autoscaler's decision, from measured load) can raise the count
    above the estimate from expected throughput, never lower it: the variant's expected
    throughput is the plan, measurements add replicas where reality falls short of it.

    The replica count is what a fresh first-fit-decreasing packing needs, so it depends only
    on the cameras (not on where they were): reconciling the same cameras twice gives the same
    count, and every camera then finds its previous shard again.
    """
    if not demands:
        return ShardPlan(
            shards=[[] for _ in range(min_replicas)],
            overloaded=False,
            estimated_replicas=min_replicas,
        )
    raw_cost = _cost_function(replica_fps, streams_per_replica)
    too_big = any(raw_cost(d) > _FULL for d in demands)

    def cost(d: Demand) -> float:
        return min(raw_cost(d), 1.0)  # a camera larger than a replica gets one of its own

    fresh = _fresh_packing_size(demands, cost)
    replicas = max(1, min_replicas, min(max(fresh, fixed_replicas or 0), max_replicas))
    while True:
        shards, placed_all = _place(demands, replicas, previous, cost)
        if placed_all or replicas >= max_replicas:
            break
        replicas += 1
    return ShardPlan(
        shards=[sorted(s) for s in shards],
        overloaded=too_big or not placed_all or fresh > max_replicas,
        estimated_replicas=max(1, min_replicas, min(fresh, max_replicas)),
    )


_FULL = 1.0 + 1e-9
"""A replica's capacity (1.0) with room for float rounding."""


def _cost_function(replica_fps: float, streams_per_replica: int | None) -> Cost:
    if streams_per_replica:
        per_stream = 1.0 / streams_per_replica
        return lambda d: per_stream
    return lambda d: d.fps / replica_fps


def _largest_first(demands: list[Demand], cost: Cost) -> list[Demand]:
    return sorted(demands, key=lambda d: (-cost(d), d.camera))


def _fresh_packing_size(demands: list[Demand], cost: Cost) -> int:
    """Replicas a first-fit-decreasing packing of all cameras needs."""
    loads: list[float] = []
    for d in _largest_first(demands, cost):
        i = next((j for j, load in enumerate(loads) if load + cost(d) <= _FULL), None)
        if i is None:
            loads.append(cost(d))
        else:
            loads[i] += cost(d)
    return len(loads)


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
        if i is not None and i < replicas and load[i] + cost(d) <= _FULL:
            shards[i].append(d.camera)
            load[i] += cost(d)
        else:
            rest.append(d)
    # Then the rest, largest first, each on the first shard with room (first-fit decreasing,
    # as the replica count was sized); with no room anywhere, on the least-loaded shard.
    for d in _largest_first(rest, cost):
        fits = [j for j in range(replicas) if load[j] + cost(d) <= _FULL]
        if fits:
            i = fits[0]
        else:
            placed_all = False  # still placed: an overloaded camera beats an unwatched one
            i = min(range(replicas), key=lambda j: (load[j], j))
        shards[i].append(d.camera)
        load[i] += cost(d)
    return shards, placed_all
