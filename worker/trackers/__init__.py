"""Multi-object trackers: SORT, ByteTrack and DeepSORT behind one ``Tracker`` protocol.

``create_tracker`` builds the one a Pipeline's ``spec.stages.tracker`` asks for. Each camera
stream gets its own instance: trackers are stateful and their ids are per instance.
"""

from __future__ import annotations

from kubevision.api.pipeline import TrackerStage
from kubevision.worker.trackers.base import Embedder, Tracker
from kubevision.worker.trackers.bytetrack import ByteTrack
from kubevision.worker.trackers.deepsort import DeepSort
from kubevision.worker.trackers.sort import Sort

__all__ = ["ByteTrack", "DeepSort", "Embedder", "Sort", "Tracker", "create_tracker"]


def create_tracker(stage: TrackerStage, embedder: Embedder | None = None) -> Tracker:
    """The tracker ``stage`` describes; ``embedder`` is the re-id model (deepsort only).

    The Pipeline names its re-id model by reference (``stage.reid``); resolving that to a file
    is the caller's job, which hands the loaded embedder in here.
    """
    if stage.type == "deepsort":
        if embedder is None:
            raise ValueError(
                "a deepsort tracker needs an embedder built from the stage's reid model"
            )
        return DeepSort(embedder=embedder, max_age=stage.max_age_frames, min_hits=stage.min_hits)
    if embedder is not None:
        raise ValueError(f"an embedder is only used by deepsort, not by {stage.type}")
    if stage.type == "sort":
        return Sort(max_age=stage.max_age_frames, min_hits=stage.min_hits)
    return ByteTrack(max_age=stage.max_age_frames, min_hits=stage.min_hits)
