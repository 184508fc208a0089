"""Make-before-break: a camera is never without a serving replica while it moves."""

from __future__ import annotations

import pytest

from kubevision.operator.handover import plan_handover


@pytest.mark.parametrize(
    ("shards", "previous", "ready", "running", "since", "replicas", "copies"),
    [
        pytest.param([["a", "b"]], {"a": 0, "b": 0}, {0}, 1, 999, 1, [[]], id="steady"),
        pytest.param(
            [["a"], ["b"]],
            {"a": 0, "b": 0},
            {0},
            1,
            0,
            2,
            [["b"], []],
            id="scale-up-new-replica-not-ready-yet",
        ),
        pytest.param(
            [["a"], ["b"]],
            {"a": 0, "b": 0},
            {0, 1},
            2,
            5,
            2,
            [[], []],
            id="scale-up-done-once-ready",
        ),
        pytest.param(
            [["a", "b"]],
            {"a": 0, "b": 1},
            {0, 1},
            2,
            5,
            2,
            [[], ["b"]],
            id="scale-down-retiring-replica-keeps-serving",
        ),
        pytest.param(
            [["a", "b"]],
            {"a": 0, "b": 1},
            {0, 1},
            2,
            120,
            1,
            [[]],
            id="scale-down-after-the-window",
        ),
        pytest.param(
            [["a"], ["b"]],
            {"a": 0, "b": 1},
            {0},
            2,
            5,
            2,
            [[], []],
            id="restarting-pod-old-home-is-the-new-home",
        ),
        pytest.param(
            [["a", "b"]],
            {"a": 0, "b": 1},
            {0},
            2,
            5,
            2,
            [[], []],
            id="old-home-not-ready-cannot-hold",
        ),
        pytest.param([["a", "c"]], {"a": 0}, {0}, 1, 0, 1, [[]], id="new-camera-nothing-to-hold"),
    ],
)
def test_plan_handover(
    shards: list[list[str]],
    previous: dict[str, int],
    ready: set[int],
    running: int,
    since: float,
    replicas: int,
    copies: list[list[str]],
) -> None:
    handover = plan_handover(shards, previous, ready, running, since, window=90)
    assert handover.replicas == replicas
    assert handover.copies == copies
    assert handover.active == any(copies)


def test_every_camera_is_served_by_a_ready_replica_or_will_be() -> None:
    # 1 -> 3 replicas, only replica 0 ready: every moved camera keeps a copy on replica 0
    shards = [["a"], ["b"], ["c"]]
    handover = plan_handover(shards, {"a": 0, "b": 0, "c": 0}, {0}, 1, 0, window=90)
    served = set(shards[0]) | set(handover.copies[0])
    assert served == {"a", "b", "c"}
