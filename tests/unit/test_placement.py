"""Streams over the GPUs of a node: balanced by load, sticky, rebalanced after removals."""

from __future__ import annotations

import pytest

from kubevision.worker.placement import place_streams


def _totals(placement: dict[str, int], loads: dict[str, float], devices: int) -> list[float]:
    totals = [0.0] * devices
    for stream, device in placement.items():
        totals[device] += loads[stream]
    return totals


@pytest.mark.parametrize(
    ("loads", "devices", "max_spread"),
    [
        ({f"cam-{i}": 30.0 for i in range(150)}, 1, 0.0),
        ({f"cam-{i}": 30.0 for i in range(150)}, 2, 0.0),
        ({f"cam-{i}": 30.0 for i in range(150)}, 8, 30.0),  # 150 = 8 x 18 + 6
        ({**{f"hd-{i}": 30.0 for i in range(10)}, **{f"low-{i}": 5.0 for i in range(30)}}, 4, 5.0),
        ({"only": 25.0}, 4, 25.0),
    ],
)
def test_fresh_placement_balances_load(
    loads: dict[str, float], devices: int, max_spread: float
) -> None:
    placement = place_streams(loads, devices, {})
    assert set(placement) == set(loads)
    totals = _totals(placement, loads, devices)
    assert max(totals) - min(totals) <= max_spread


def test_existing_streams_stay_where_they_are_when_balanced() -> None:
    loads = {f"cam-{i}": 30.0 for i in range(8)}
    before = place_streams(loads, 2, {})
    loads["new"] = 30.0
    after = place_streams(loads, 2, before)
    assert {s: d for s, d in after.items() if s != "new"} == before


def test_removals_are_rebalanced_by_moving_few_streams() -> None:
    loads = {f"cam-{i}": 30.0 for i in range(12)}
    before = place_streams(loads, 2, {})
    for stream in [s for s, d in before.items() if d == 0][:4]:  # device 0 loses four cameras
        del loads[stream]
    after = place_streams(loads, 2, before)
    assert _totals(after, loads, 2) == [120.0, 120.0]
    assert sum(after[s] != before[s] for s in loads) == 2


def test_a_lost_device_moves_its_streams_to_the_others() -> None:
    loads = {f"cam-{i}": 30.0 for i in range(6)}
    before = place_streams(loads, 3, {})
    after = place_streams(loads, 2, before)
    assert set(after.values()) == {0, 1}
    assert _totals(after, loads, 2) == [90.0, 90.0]


def test_no_devices_is_an_error() -> None:
    with pytest.raises(ValueError, match="devices must be >= 1"):
        place_streams({"a": 1.0}, 0, {})
