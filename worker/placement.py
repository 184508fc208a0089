"""Streams spread across the GPUs of a node by load: sticky, least-loaded, rebalanced.

A stream's load is its expected frame rate (what it asks of a detector per second). New
streams go to the least-loaded device, heaviest first; existing streams stay where they are
(their batches are warm there) unless a move strictly narrows the gap between the most and
the least loaded device, so removing cameras evens out again without reshuffling everything.
Moving a stream costs nothing but batch membership: its tracker lives with the camera.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def place_streams(loads: Mapping[K, float], devices: int, current: Mapping[K, int]) -> dict[K, int]:
    """Device index per stream for ``loads`` (stream -> frames/s) over ``devices`` devices.

    ``current`` is the previous placement; entries for gone streams or devices are ignored.
    """
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    placed = {s: d for s, d in current.items() if s in loads and 0 <= d < devices}
    totals = [0.0] * devices
    for stream, device in placed.items():
        totals[device] += loads[stream]
    for stream in sorted((s for s in loads if s not in placed), key=lambda s: -loads[s]):
        device = min(range(devices), key=lambda d: (totals[d], d))
        placed[stream] = device
        totals[device] += loads[stream]
    _rebalance(placed, loads, totals)
    return placed


def _rebalance(placed: dict[K, int], loads: Mapping[K, float], totals: list[float]) -> None:
    """Move single streams from the busiest to the idlest device while that narrows the gap."""
    for _ in range(len(placed)):  # each move strictly lowers the spread, so this bounds it
        busiest = max(range(len(totals)), key=lambda d: (totals[d], -d))
        idlest = min(range(len(totals)), key=lambda d: (totals[d], d))
        gap = totals[busiest] - totals[idlest]
        movable = [s for s, d in placed.items() if d == busiest and 0 < loads[s] < gap]
        if not movable:
            return
        # the stream closest to half the gap evens the pair out best
        stream = min(movable, key=lambda s: (abs(gap / 2 - loads[s]), str(s)))
        placed[stream] = idlest
        totals[busiest] -= loads[stream]
        totals[idlest] += loads[stream]
