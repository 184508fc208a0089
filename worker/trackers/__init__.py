"""Multi-object trackers: SORT, ByteTrack and DeepSORT behind one ``Tracker`` protocol.

``create_tracker`` builds the one a Pipeline's ``spec.stages.tracker`` asks for, with the
thresholds of the detector that feeds it (``ModelVariant.spec.tracking``) where the catalog
measured them. Each camera stream gets its own instance: trackers are stateful and their ids
are per instance.
"""

from __future__ import annotations

from kubevision.api.modelvariant import TrackingThresholds
from kubevision.api.pipeline import TrackerStage
from kubevision.worker.trackers.base import Embedder, Tracker
from kubevision.worker.trackers.bytetrack import ByteTrack
from kubevision.worker.trackers.deepsort import DeepSort
from kubevision.worker.trackers.sort import Sort

__all__ = ["ByteTrack", "DeepSort", "Embedder", "Sort", "Tracker", "create_tracker"]


def create_tracker(
    stage: TrackerStage,
    embedder: Embedder | None = None,
    thresholds: TrackingThresholds | None = None,
) -> Tracker:
    """The tracker ``stage`` describes; ``embedder`` is the re-id model (deepsort only).

    ``thresholds`` come from the detector's ModelVariant; without them each tracker keeps its
    reference's defaults. The Pipeline names its re-id model by reference (``stage.reid``);
    resolving that to a file is the caller's job, which hands the loaded embedder in here.
    """
    max_age, min_hits = stage.max_age_frames, stage.min_hits
    if stage.type == "deepsort":
        if embedder is None:
            raise ValueError(
                "a deepsort tracker needs an embedder built from the stage's reid model"
            )
        if thresholds is None:
            return DeepSort(embedder=embedder, max_age=max_age, min_hits=min_hits)
        return DeepSort(
            embedder=embedder, min_iou=thresholds.match_iou, max_age=max_age, min_hits=min_hits
        )
    if embedder is not None:
        raise ValueError(f"an embedder is only used by deepsort, not by {stage.type}")
    if stage.type == "sort":
        if thresholds is None:
            return Sort(max_age=max_age, min_hits=min_hits)
        return Sort(iou_threshold=thresholds.match_iou, max_age=max_age, min_hits=min_hits)
    if thresholds is None:
        return ByteTrack(max_age=max_age, min_hits=min_hits)
    return ByteTrack(
        high_score=thresholds.high_score,
        low_score=thresholds.low_score,
        new_track_score=thresholds.new_track_score,
        max_age=max_age,
        min_hits=min_hits,
    )
