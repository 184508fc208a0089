"""The cross-stream batcher: when a batch is due, what it holds, fairness and bounds."""

from __future__ import annotations

import math
import threading

import pytest

from kubevision.worker.batching import DynamicBatcher


def _fill(batcher: DynamicBatcher[str, int], streams: list[str], now: float) -> None:
    for i, stream in enumerate(streams):
        batcher.put(stream, i, captured=now, now=now)


@pytest.mark.parametrize(
    ("max_batch", "max_wait", "streams", "at", "expected_size"),
    [
        (4, 0.010, 4, 0.0, 4),  # full: due at once
        (4, 0.010, 2, 0.0, 0),  # partial, not waited long enough
        (4, 0.010, 2, 0.010, 2),  # partial, waited max_wait
        (4, 0.0, 1, 0.0, 1),  # no waiting at all
        (4, 0.010, 9, 0.0, 4),  # more streams than fit: max_batch
    ],
)
def test_batch_is_due_when_full_or_waited(
    max_batch: int, max_wait: float, streams: int, at: float, expected_size: int
) -> None:
    batcher: DynamicBatcher[str, int] = DynamicBatcher(max_batch, max_wait)
    _fill(batcher, [f"cam-{i}" for i in range(streams)], now=0.0)
    assert len(batcher.take(now=at)) == expected_size


def test_due_in_counts_down_from_the_oldest_frame() -> None:
    batcher: DynamicBatcher[str, int] = DynamicBatcher(8, 0.010)
    assert batcher.due_in(0.0) is None
    batcher.put("a", 1, captured=0.0, now=1.000)
    batcher.put("b", 2, captured=0.0, now=1.004)
    assert batcher.due_in(1.004) == pytest.approx(0.006)
    assert batcher.due_in(2.0) == 0.0


def test_at_most_one_frame_per_stream_and_the_freshest_wins() -> None:
    batcher: DynamicBatcher[str, int] = DynamicBatcher(4, 0.0)
    for frame in range(5):
        batcher.put("cam", frame, captured=float(frame), now=float(frame))
    batch = batcher.take(now=10.0)
    assert [(item.stream, item.payload) for item in batch] == [("cam", 4)]
    assert batch[0].captured == 4.0  # latency is counted from the frame's own capture
    assert batcher.dropped("cam") == 4


def test_a_replaced_frame_keeps_its_streams_place_in_line() -> None:
    """Otherwise a fast camera would refresh its slot forever and never reach a full batch."""
    batcher: DynamicBatcher[str, int] = DynamicBatcher(2, 1.0)
    batcher.put("fast", 0, captured=0.0, now=0.0)
    batcher.put("slow", 0, captured=0.1, now=0.1)
    batcher.put("late", 0, captured=0.2, now=0.2)
    batcher.put("fast", 1, captured=0.3, now=0.3)
    assert [item.stream for item in batcher.take(now=0.3)] == ["fast", "slow"]


def test_overload_serves_every_stream_within_its_share_of_batches() -> None:
    """10 streams always waiting, batches of 3: each is served once every ceil(10/3) batches."""
    streams = [f"cam-{i}" for i in range(10)]
    batcher: DynamicBatcher[str, int] = DynamicBatcher(3, 0.005)
    last_served = {s: 0 for s in streams}
    worst_gap = 0
    now = 0.0
    for batch_no in range(1, 61):
        for stream in streams:  # every camera delivers a new frame before each batch
            batcher.put(stream, batch_no, captured=now, now=now)
        for item in batcher.take(now=now):
            worst_gap = max(worst_gap, batch_no - last_served[item.stream])
            last_served[item.stream] = batch_no
        now += 0.033
    assert worst_gap <= math.ceil(len(streams) / 3)
    assert all(batch_no > 56 for batch_no in last_served.values())


def test_memory_is_bounded_by_the_number_of_streams() -> None:
    batcher: DynamicBatcher[str, int] = DynamicBatcher(64, 10.0)
    for frame in range(10_000):
        batcher.put(f"cam-{frame % 7}", frame, captured=0.0, now=0.0)
    assert batcher.pending == 7


def test_discarded_streams_leave_no_frame_behind() -> None:
    batcher: DynamicBatcher[str, int] = DynamicBatcher(4, 0.0)
    _fill(batcher, ["a", "b"], now=0.0)
    batcher.discard("a")
    assert [item.stream for item in batcher.take(now=0.0)] == ["b"]
    assert batcher.dropped("a") == 0


def test_concurrent_producers_lose_nothing_but_superseded_frames() -> None:
    """Capture threads put while the inference thread takes: every frame is batched or dropped."""
    batcher: DynamicBatcher[int, int] = DynamicBatcher(8, 0.0)
    frames_per_stream = 2_000
    taken: list[int] = []
    done = threading.Event()

    def produce(stream: int) -> None:
        for frame in range(frames_per_stream):
            batcher.put(stream, frame, captured=0.0, now=0.0)

    def consume() -> None:
        while not done.is_set() or batcher.pending:
            taken.extend(item.stream for item in batcher.take(now=0.0))

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(s,)) for s in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    done.set()
    consumer.join(timeout=10)
    for stream in range(4):
        assert taken.count(stream) + batcher.dropped(stream) == frames_per_stream


@pytest.mark.parametrize(("max_batch", "max_wait"), [(0, 0.01), (4, -0.1)])
def test_invalid_settings_are_refused(max_batch: int, max_wait: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        DynamicBatcher(max_batch, max_wait)
