"""What every tracker is (``Tracker``) and the pieces SORT, ByteTrack and DeepSORT share.

Each tracker reproduces its reference implementation's behaviour (the authors' code on the same
detections gives the same MOTA/IDF1: ``tests/quality/test_tracking_mot.py``); what they share
is kept here: the protocols, threshold checks, IoU, the two assignment rules the references
use, per-track columns that are added and dropped together, and building the output.

Output: ``update`` returns one row per reported track with ``track_ids`` set. Ids are given
when a track is first reported (1, 2, 3, ... per instance), so tentative tracks never burn one.
``report_boxes`` picks the boxes: ``"filter"`` (the Kalman estimate, what the references
report) or ``"detection"`` (the matched detector box, what a downstream crop classifier wants).
Scores and classes are always the matched detection's.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.worker.detections import NO_TRACK, Detections, FloatArray, IntArray
from kubevision.worker.nvdec import Pixels as Pixels  # a host or an NVDEC (GPU) frame

Image = npt.NDArray[np.uint8]
"""A decoded frame in host memory, H x W x 3, BGR (OpenCV's order)."""
Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
ReportBoxes = Literal["filter", "detection"]


class Tracker(Protocol):
    """A stateful multi-object tracker for one camera stream."""

    def update(self, detections: Detections, frame: Pixels | None = None) -> Detections:
        """Advance one frame; return the reported tracks' detections with track ids set."""
        ...

    def reset(self) -> None:
        """Forget every track and restart ids at 1 (e.g. after a stream reconnects)."""
        ...

    def close(self) -> None:
        """Release this camera's state for good (its camera is gone)."""
        ...


class Embedder(Protocol):
    """Appearance features for boxes in a frame (re-id), for DeepSORT."""

    def __call__(self, frame: Pixels, xyxy: FloatArray) -> FloatArray:
        """(N, 4) boxes of ``frame`` -> (N, D) L2-normalised embeddings."""
        ...


def check_fraction(name: str, value: float) -> None:
    """Thresholds on scores, IoUs and cosine distances are fractions."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1 inclusive, got {value!r}")


def check_count(name: str, value: int) -> None:
    """Frame counts: a tracker that keeps or confirms after zero frames is meaningless."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_report_boxes(value: str) -> None:
    if value not in ("filter", "detection"):
        raise ValueError(f"report_boxes must be 'filter' or 'detection', got {value!r}")


def iou(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], offset: float = 0.0) -> Array:
    """(N, M) IoU of xyxy boxes in float64; ``offset`` 1 counts pixels inclusively, the
    py-faster-rcnn convention ByteTrack's ``cython_bbox`` uses (a 10 px box spans 11)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return iou_pairs(a[:, None, :], b[None, :, :], offset)


def iou_pairs(
    a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], offset: float = 0.0
) -> Array:
    """IoU of the box pairs ``a[k]``, ``b[k]`` (xyxy, broadcast like any numpy operands; float64,
    ``offset`` as in :func:`iou`): the pairs of a sparse set, e.g. only those of one camera."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2])
    size = np.maximum(size + offset, 0.0)
    inter = size[..., 0] * size[..., 1]
    area_a = (a[..., 2] - a[..., 0] + offset) * (a[..., 3] - a[..., 1] + offset)
    area_b = (b[..., 2] - b[..., 0] + offset) * (b[..., 3] - b[..., 1] + offset)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: Array = inter / (area_a + area_b - inter)
    return np.nan_to_num(out, nan=0.0)


def assign_capped(cost: Array, max_cost: float) -> tuple[IntArray, IntArray]:
    """Matching that minimises the summed cost with every cost capped at ``max_cost``; pairs
    above it are dropped afterwards. DeepSORT's ``min_cost_matching`` (and, up to ties,
    ByteTrack's ``lapjv`` with ``cost_limit``): a pair is worth ``max_cost - cost``, so one
    good match can beat two mediocre ones. Returns matched (rows, columns)."""
    if cost.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    capped = np.minimum(np.nan_to_num(cost, nan=np.inf), max_cost + 1e-5)
    rows, cols = linear_sum_assignment(capped)
    keep = capped[rows, cols] <= max_cost
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def same_class(track_classes: IntArray, detection_classes: IntArray) -> Mask:
    """(T, N) mask of pairs of equal class: a car detection never continues a person track."""
    mask: Mask = track_classes[:, None] == detection_classes[None, :]
    return mask


class Columns(Protocol):
    """A dataclass of per-track arrays, one row per track."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


C = TypeVar("C", bound=Columns)


def keep_rows(tracks: C, rows: Mask | IntArray) -> C:
    """The tracks selected by ``rows`` (a mask or indices), every column alike."""
    return replace(tracks, **{f.name: getattr(tracks, f.name)[rows] for f in fields(tracks)})


def append_rows(tracks: C, new: C) -> C:
    """``tracks`` followed by ``new``."""
    return replace(
        tracks,
        **{
            f.name: np.concatenate([getattr(tracks, f.name), getattr(new, f.name)])
            for f in fields(tracks)
        },
    )


class IdCounter:
    """Public track ids of one tracker instance: 1, 2, 3, ... in order of first report."""

    def __init__(self) -> None:
        self.next = 1

    def give(self, ids: IntArray, rows: IntArray) -> None:
        """Set an id, in place, on every track of ``rows`` that has none yet."""
        fresh = rows[ids[rows] == NO_TRACK]
        ids[fresh] = np.arange(self.next, self.next + len(fresh))
        self.next += len(fresh)


def output(
    detections: Detections,
    det_rows: IntArray,
    ids: IntArray,
    filter_boxes: Array,
    report_boxes: ReportBoxes,
) -> Detections:
    """The reported tracks, matched to detections ``det_rows``, in detection order."""
    order = np.argsort(det_rows, kind="stable")
    det_rows, ids, filter_boxes = det_rows[order], ids[order], filter_boxes[order]
    seen = detections[det_rows].with_tracks(ids)
    if report_boxes == "detection":
        return seen
    return Detections(
        filter_boxes.astype(np.float32), seen.scores, seen.class_ids, ids, seen.embeddings
    )
