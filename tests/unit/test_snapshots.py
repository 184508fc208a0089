"""The snapshot stage's own logic: crops, the node folder's bounds (across a restart), and the
encoder thread's queue: events keep their order and are never lost, crops beyond the bound
are dropped and counted."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kubevision.api.worker_config import SnapshotConfig
from kubevision.worker.events import TrackEvent
from kubevision.worker.snapshots import (
    InlineStore,
    NodeStore,
    SnapshotMetrics,
    Snapshotter,
    crop,
    encode_jpeg,
)
from tests.envtest.sinks import track_event

CONFIG = SnapshotConfig(
    storage="inline",
    events=["track.started"],
    jpeg_quality=80,
    margin=0.1,
    max_files=10,
    max_bytes=2**20,
)


@pytest.mark.parametrize(
    ("box", "shape"),
    [
        ((10, 20, 30, 60), (48, 24)),  # 20x40 plus 10 % each side
        ((-50, -50, 5, 5), (11, 11)),  # clipped at the frame's corner
        ((95, 95, 200, 200), (16, 16)),
    ],
)
def test_crop_adds_the_margin_and_clips_to_the_frame(
    box: tuple[float, float, float, float], shape: tuple[int, int]
) -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    cut = crop(image, box, 0.1)
    assert cut is not None
    assert cut.shape[:2] == shape


def test_crop_outside_the_frame_is_none() -> None:
    assert crop(np.zeros((10, 10, 3), np.uint8), (20, 20, 30, 30), 0.0) is None


def test_jpeg_round_trips() -> None:
    pixels = np.full((16, 32, 3), (0, 128, 255), np.uint8)
    decoded = cv2.imdecode(np.frombuffer(encode_jpeg(pixels, 95), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels).max() <= 4


def test_node_store_keeps_its_bounds_across_a_restart(tmp_path: Path) -> None:
    evicted: list[int] = []
    store = NodeStore(tmp_path, max_files=3, max_bytes=10**6, evicted=evicted.append)
    for i in range(5):
        store.put(f"p/c/{i:02d}.jpg", b"x" * 100)
    assert sorted(p.name for p in tmp_path.rglob("*.jpg")) == ["02.jpg", "03.jpg", "04.jpg"]
    assert sum(evicted) == 2
    again = NodeStore(tmp_path, max_files=3, max_bytes=250, evicted=evicted.append)
    assert again.files == 2, "the oldest left over goes at start"
    assert again.bytes == 200
    assert sorted(p.name for p in tmp_path.rglob("*.jpg")) == ["03.jpg", "04.jpg"]
    assert sum(evicted) == 3


class _Recorder:
    """A FanOut stand-in that records what reaches the sinks."""

    def __init__(self) -> None:
        self.events: list[TrackEvent] = []

    def publish(self, events: list[TrackEvent]) -> None:
        self.events.extend(events)


class _GatedStore(InlineStore):
    """An inline store whose puts wait for a gate (a store stuck in a call)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def put(self, key: str, data: bytes) -> str:
        self.gate.wait(10)
        return super().put(key, data)


def test_a_stuck_store_drops_crops_beyond_the_bound_never_events() -> None:
    registry = CollectorRegistry()
    metrics = SnapshotMetrics(registry, "p")
    sink, store = _Recorder(), _GatedStore()
    snapshotter = Snapshotter(
        sink,  # type: ignore[arg-type]
        store,
        CONFIG,
        metrics,
        max_pending_crops=2,
        max_jobs=4,
    )
    image = np.full((200, 200, 3), 90, np.uint8)
    sent = [track_event("p", "cam", n) for n in range(10)]
    for event in sent:
        snapshotter.submit([event], lambda: image)
    store.gate.set()
    snapshotter.close()
    assert [e.track_id for e in sink.events] == list(range(10)), "all, in order"
    with_snapshot = [e.track_id for e in sink.events if e.snapshot is not None]
    dropped = registry.get_sample_value(
        "kubevision_snapshots_dropped_total", {"pipeline": "p", "reason": "queue_full"}
    )
    assert dropped == 10 - len(with_snapshot) > 0
    assert with_snapshot, "the crops still queued when the store answers are stored"
