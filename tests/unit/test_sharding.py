"""Sharding cameras over worker replicas: enough replicas for the load, and cameras that stay put.

A camera that moves shard is reconnected by another pod (a gap in its events and tracks), so
the sharder must move cameras only when it has to; and it must never drop one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from kubevision.operator.sharding import Demand, ShardPlan, plan_shards

REPLICA_FPS = 80.0  # e.g. a variant sustaining 100 fps planned at 80 % utilisation
EPSILON = 1e-9


def cams(*fps: float, prefix: str = "cam") -> list[Demand]:
    return [Demand(f"{prefix}-{i:02d}", f) for i, f in enumerate(fps)]


def where(plan: ShardPlan) -> dict[str, int]:
    """camera -> shard; fails if a camera is on two shards."""
    out: dict[str, int] = {}
    for i, shard in enumerate(plan.shards):
        for name in shard:
            assert name not in out, f"{name} is on shards {out[name]} and {i}"
            out[name] = i
    return out


def loads(plan: ShardPlan, demands: list[Demand], replica_fps: float) -> list[float]:
    fps = {d.camera: d.fps for d in demands}
    return [sum(fps[c] for c in shard) / replica_fps for shard in plan.shards]


def plan(
    demands: list[Demand],
    previous: Mapping[str, int] | None = None,
    *,
    min_replicas: int = 1,
    max_replicas: int = 10,
    streams_per_replica: int | None = None,
) -> ShardPlan:
    return plan_shards(
        demands, REPLICA_FPS, min_replicas, max_replicas, previous or {}, streams_per_replica
    )


@pytest.mark.parametrize(
    ("fps", "min_replicas", "max_replicas", "replicas", "overloaded"),
    [
        pytest.param([30], 1, 10, 1, False, id="one-camera-one-replica"),
        pytest.param([40, 40], 1, 10, 1, False, id="exactly-full-replica"),
        pytest.param([40, 40, 1], 1, 10, 2, False, id="one-fps-over-needs-another"),
        pytest.param([20] * 12, 1, 10, 3, False, id="240fps-needs-3"),
        pytest.param([30] * 8, 1, 10, 4, False, id="whole-cameras-only-two-of-30fps-fit"),
        pytest.param([12.5] * 6, 1, 10, 1, False, id="fractional-fps-fill-one"),
        pytest.param([10], 3, 10, 3, False, id="min-replicas-floor"),
        pytest.param([10], 0, 10, 1, False, id="min-zero-still-one-with-cameras"),
        pytest.param([30] * 10, 1, 2, 2, True, id="max-replicas-cap-overloaded"),
    ],
)
def test_replica_count_follows_the_cameras_load(
    fps: list[float], min_replicas: int, max_replicas: int, replicas: int, overloaded: bool
) -> None:
    result = plan(cams(*fps), min_replicas=min_replicas, max_replicas=max_replicas)
    assert result.replicas == replicas
    assert result.overloaded is overloaded
    assert sorted(where(result)) == sorted(d.camera for d in cams(*fps))


@pytest.mark.parametrize("min_replicas", [0, 1, 3], ids=["min-0", "min-1", "min-3"])
def test_no_cameras_gives_min_replicas_of_empty_shards(min_replicas: int) -> None:
    result = plan([], min_replicas=min_replicas)
    assert result.shards == [[] for _ in range(min_replicas)]
    assert result.replicas == min_replicas
    assert not result.overloaded


def test_every_shard_is_sorted_and_within_capacity() -> None:
    demands = cams(30, 5, 25, 12.5, 30, 15, 10, 20, 30, 7.5)
    result = plan(demands)
    assert all(shard == sorted(shard) for shard in result.shards)
    assert all(load <= 1 + EPSILON for load in loads(result, demands, REPLICA_FPS))


def test_scale_out_then_in_keeps_every_camera_whose_shard_survives() -> None:
    """1 camera -> 20 cameras -> 3 of them: nobody moves unless their replica is gone."""
    one = plan(cams(30))
    assert where(one) == {"cam-00": 0}

    twenty_demands = cams(*[30] * 20)
    twenty = plan(twenty_demands, where(one))
    assert twenty.replicas == 10  # two 30 fps cameras per 80 fps replica
    assert where(twenty)["cam-00"] == 0
    assert not twenty.overloaded

    before = where(twenty)
    by_shard = {shard: name for name, shard in sorted(before.items(), reverse=True)}
    keep = ["cam-00", by_shard[1], by_shard[5]]  # shard 0 and 1 survive, shard 5 does not
    three = plan([d for d in twenty_demands if d.camera in keep], before)
    after = where(three)
    assert three.replicas == 2  # 90 fps
    assert sorted(after) == sorted(keep)
    assert after["cam-00"] == 0
    assert after[by_shard[1]] == 1
    assert after[by_shard[5]] in (0, 1)


@pytest.mark.parametrize(
    ("existing", "added"),
    [
        pytest.param([30, 30], [10], id="room-on-same-replica"),
        pytest.param([30, 30], [30], id="needs-second-replica"),
        pytest.param([25] * 9, [25] * 7, id="grow-3-to-6-replicas"),
        pytest.param([12.5] * 5, [30, 30, 30, 30], id="mixed-rates"),
        pytest.param([60, 60, 60], [5, 5, 5, 5], id="small-cameras-fill-gaps"),
    ],
)
def test_adding_cameras_never_moves_existing_ones(
    existing: list[float], added: list[float]
) -> None:
    old = cams(*existing, prefix="old")
    first = plan(old)
    second = plan(old + cams(*added, prefix="new"), where(first))
    after = where(second)
    assert {c: after[c] for c in where(first)} == where(first)
    assert len(after) == len(existing) + len(added)


def test_camera_whose_shard_is_full_moves_and_the_earlier_one_stays() -> None:
    # both were on shard 0; b's frame rate grew so they no longer fit together
    result = plan(
        [Demand("a", 40), Demand("b", 50)],
        {"a": 0, "b": 0},
    )
    assert where(result) == {"a": 0, "b": 1}


@pytest.mark.parametrize(
    ("fps", "max_replicas"),
    [
        pytest.param([30] * 10, 1, id="ten-cameras-one-replica"),
        pytest.param([30] * 10, 3, id="ten-cameras-three-replicas"),
        pytest.param([70, 70, 70], 2, id="big-cameras-fragmented"),
    ],
)
def test_overloaded_still_assigns_every_camera(fps: list[float], max_replicas: int) -> None:
    demands = cams(*fps)
    result = plan(demands, max_replicas=max_replicas)
    assert result.overloaded
    assert result.replicas == max_replicas
    assert sorted(where(result)) == sorted(d.camera for d in demands)
    # an overloaded plan still spreads the load: no replica idles while another is over
    assert all(result.shards)


@pytest.mark.parametrize(
    ("count", "per_replica", "replicas"),
    [
        pytest.param(1, 4, 1, id="1-cam-4-per"),
        pytest.param(4, 4, 1, id="exactly-one-full"),
        pytest.param(5, 4, 2, id="one-over"),
        pytest.param(7, 3, 3, id="7-cams-3-per"),
        pytest.param(20, 1, 10, id="one-per-replica-capped"),
    ],
)
def test_streams_per_replica_counts_cameras_not_fps(
    count: int, per_replica: int, replicas: int
) -> None:
    # 200 fps each: far more than a replica's fps capacity, irrelevant in this mode
    demands = cams(*[200] * count)
    result = plan(demands, streams_per_replica=per_replica)
    assert result.replicas == replicas
    assert sorted(where(result)) == sorted(d.camera for d in demands)
    assert result.overloaded is (count > per_replica * 10)
    if not result.overloaded:
        assert all(len(shard) <= per_replica for shard in result.shards)


def test_streams_per_replica_keeps_cameras_in_place() -> None:
    first = plan(cams(*[30] * 5), streams_per_replica=2)
    second = plan(cams(*[30] * 8), where(first), streams_per_replica=2)
    assert second.replicas == 4
    assert {c: where(second)[c] for c in where(first)} == where(first)


@pytest.mark.parametrize(
    "previous",
    [
        pytest.param({}, id="fresh"),
        pytest.param({"cam-00": 2, "cam-03": 1, "cam-07": 0, "gone": 4}, id="with-previous"),
    ],
)
def test_same_input_gives_the_same_plan(previous: dict[str, int]) -> None:
    demands = cams(30, 25, 12.5, 30, 5, 15, 30, 10, 20, 25)
    shuffled = list(demands)
    random.Random(7).shuffle(shuffled)
    assert plan(demands, previous) == plan(demands, previous) == plan(shuffled, previous)


def _random_fleet(rng: random.Random, size: int) -> dict[str, float]:
    rates = [5, 7.5, 10, 12.5, 15, 20, 25, 30, 60]
    return {f"cam-{i:03d}": float(rng.choice(rates)) for i in range(size)}


@pytest.mark.parametrize("seed", range(40), ids=lambda s: f"seed-{s}")
def test_random_camera_sets_keep_the_invariants(seed: int) -> None:
    """Over random sequences of cameras joining and leaving: each camera is placed exactly
    once on an existing shard, replicas stay within min/max, an overloaded plan uses every
    replica allowed, and a camera whose shard survives keeps it (its rate did not change and
    the previous plan was not overloaded, so it still has room)."""
    rng = random.Random(seed)
    fleet = _random_fleet(rng, 80)
    replica_fps = rng.choice([60.0, 80.0, 100.0, 240.0])  # every camera fits one replica
    min_replicas = rng.randint(0, 3)
    max_replicas = rng.randint(max(min_replicas, 1), 15)
    per_replica = rng.choice([None, None, 2, 4])
    present = set(rng.sample(sorted(fleet), rng.randint(0, 30)))
    previous: dict[str, int] = {}
    previous_plan: ShardPlan | None = None
    for _ in range(10):
        before = set(present)
        if rng.random() < 0.5:
            present |= set(rng.sample(sorted(fleet), rng.randint(1, 10)))
        else:
            present -= set(rng.sample(sorted(present), min(len(present), rng.randint(1, 10))))
        demands = [Demand(c, fleet[c]) for c in sorted(present)]
        result = plan_shards(
            demands, replica_fps, min_replicas, max_replicas, previous, per_replica
        )
        placed = where(result)

        assert sorted(placed) == sorted(present)
        assert all(0 <= i < result.replicas for i in placed.values())
        floor = max(1, min_replicas) if present else min_replicas
        assert floor <= result.replicas <= max(max_replicas, min_replicas)
        if result.overloaded:
            assert result.replicas == max_replicas
        elif per_replica is None:
            assert all(load <= 1 + EPSILON for load in loads(result, demands, replica_fps))
        else:
            assert all(len(shard) <= per_replica for shard in result.shards)
        if previous_plan is not None and not previous_plan.overloaded:
            for name in before & present:
                if previous[name] < result.replicas:
                    assert placed[name] == previous[name], f"{name} moved"

        previous, previous_plan = placed, result


@pytest.mark.parametrize(
    "fps",
    [
        pytest.param([120], id="one-120fps-camera"),
        pytest.param([100, 100, 100], id="three-100fps-cameras"),
    ],
)
def test_never_more_replicas_than_cameras(fps: list[float]) -> None:
    result = plan(cams(*fps), max_replicas=10)
    assert result.overloaded  # each camera alone exceeds one replica's 80 fps
    assert result.replicas <= len(fps)


def test_reconcile_without_changes_moves_no_camera() -> None:
    # 160 fps on 80 fps replicas: fits 2 exactly, but biggest-first greedy needs 3 at first
    demands = [
        Demand("cam-007", 30),
        Demand("cam-024", 25),
        Demand("cam-028", 15),
        Demand("cam-031", 12.5),
        Demand("cam-035", 5),
        Demand("cam-040", 30),
        Demand("cam-042", 30),
        Demand("cam-053", 12.5),
    ]
    first = plan(demands)
    assert not first.overloaded
    resync = plan(demands, where(first))
    assert where(resync) == where(first)
