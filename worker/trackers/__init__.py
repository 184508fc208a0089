"""Multi-object trackers: SORT, ByteTrack and DeepSORT behind one ``Tracker`` protocol.

``create_tracker`` builds the one a Pipeline's ``spec.stages.tracker`` asks for, with the
thresholds of the detector that feeds it (``ModelVariant.spec.tracking``) where the catalog
measured them. Each camera stream gets its own tracker (ids are per camera); ByteTrack cameras
of one worker share a table (``tables``) so that :func:`track_batch` advances a whole batch
of cameras in one vectorised update.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import TypedDict

from kubevision.api.modelvariant import TrackingThresholds
from kubevision.api.pipeline import TrackerStage
from kubevision.worker.detections import Detections
from kubevision.worker.trackers.base import Embedder, Pixels, Tracker
from kubevision.worker.trackers.bytetrack import ByteTrack, ByteTrackSettings, ByteTrackTable
from kubevision.worker.trackers.deepsort import DeepSort
from kubevision.worker.trackers.sort import Sort

__all__ = [
    "ByteTrack",
    "ByteTrackSettings",
    "ByteTrackTable",
    "DeepSort",
    "Embedder",
    "Sort",
    "Tables",
    "Tracker",
    "create_tracker",
    "track_batch",
]

Tables = MutableMapping[ByteTrackSettings, ByteTrackTable]
"""ByteTrack tables by settings (a ``weakref.WeakValueDictionary`` frees a table with its
last camera)."""


class _Counts(TypedDict, total=False):
    """The life-cycle counts a Pipeline sets; ``min_hits`` only when it sets one."""

    max_age: int
    min_hits: int


def create_tracker(
    stage: TrackerStage,
    embedder: Embedder | None = None,
    thresholds: TrackingThresholds | None = None,
    tables: Tables | None = None,
) -> Tracker:
    """The tracker ``stage`` describes; ``embedder`` is the re-id model (deepsort only).

    ``thresholds`` come from the detector's ModelVariant; without them each tracker keeps its
    reference's defaults, as it keeps its reference's confirmation rule when the stage sets no
    ``min_hits``. The Pipeline names its re-id model by reference (``stage.reid``); resolving
    that to a file is the caller's job, which hands the loaded embedder in here.
    A ByteTrack camera joins the table of ``tables`` with its settings (made if missing).
    """
    counts = _Counts(max_age=stage.max_age_frames)
    if stage.min_hits is not None:
        counts["min_hits"] = stage.min_hits
    if stage.type == "deepsort":
        if embedder is None:
            raise ValueError(
                "a deepsort tracker needs an embedder built from the stage's reid model"
            )
        every = stage.reid_refresh_frames
        if thresholds is None:
            return DeepSort(embedder=embedder, reid_every=every, **counts)
        return DeepSort(embedder=embedder, min_iou=thresholds.match_iou, reid_every=every, **counts)
    if embedder is not None:
        raise ValueError(f"an embedder is only used by deepsort, not by {stage.type}")
    if stage.type == "sort":
        if thresholds is None:
            return Sort(**counts)
        return Sort(iou_threshold=thresholds.match_iou, **counts)
    settings = ByteTrackSettings(**counts)
    if thresholds is not None:
        settings = ByteTrackSettings(
            high_score=thresholds.high_score,
            low_score=thresholds.low_score,
            new_track_score=thresholds.new_track_score,
            **counts,
        )
    if tables is None:
        return ByteTrack(ByteTrackTable(settings))
    table = tables.get(settings)
    if table is None:
        table = tables[settings] = ByteTrackTable(settings)
    return ByteTrack(table)


def track_batch(work: Sequence[tuple[Tracker, Detections, Pixels | None]]) -> list[Detections]:
    """One frame for each camera's tracker (tracker, its detections, its frame); ByteTrack
    cameras of one table in one update, so a batch of cameras costs about what one does."""
    out = [Detections.empty()] * len(work)
    shared: dict[int, tuple[ByteTrackTable, list[int], list[tuple[int, Detections]]]] = {}
    for i, (tracker, found, frame) in enumerate(work):
        if isinstance(tracker, ByteTrack):
            _, rows, batch = shared.setdefault(id(tracker.table), (tracker.table, [], []))
            rows.append(i)
            batch.append((tracker.key, found))
        else:
            out[i] = tracker.update(found, frame)
    for table, rows, batch in shared.values():
        for i, tracked in zip(rows, table.update(batch), strict=True):
            out[i] = tracked
    return out
