"""The one detections type every worker stage takes and returns (after Roboflow supervision).

Parallel numpy arrays, one row per object: boxes in pixel ``xyxy``, scores, class ids and,
once a tracker has run, track ids. Shapes are checked on construction; stages never mutate
their input but return a new ``Detections`` (indexing with a mask or indices makes a copy).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

Index = npt.NDArray[np.bool_] | npt.NDArray[np.integer] | slice
"""What selects rows: a boolean mask, integer indices or a slice."""

NO_TRACK = -1
"""Track id of a detection no tracker has confirmed."""


@dataclass(frozen=True, eq=False)
class Detections:
    """N objects in one frame.

    Attributes:
        xyxy: (N, 4) float32 boxes, pixels of the original frame, x1 < x2, y1 < y2.
        scores: (N,) float32 confidences in [0, 1].
        class_ids: (N,) int64 class indices into the detector's labels.
        track_ids: (N,) int64; ``NO_TRACK`` until a tracker assigns one.
        embeddings: optional (N, D) float32 appearance features (re-id).
    """

    xyxy: FloatArray
    scores: FloatArray
    class_ids: IntArray
    track_ids: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    embeddings: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        object.__setattr__(self, "xyxy", np.asarray(self.xyxy, np.float32).reshape(n, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float32).reshape(-1))
        object.__setattr__(self, "class_ids", np.asarray(self.class_ids, np.int64).reshape(-1))
        if len(self.track_ids) == 0 and n:
            object.__setattr__(self, "track_ids", np.full(n, NO_TRACK, np.int64))
        else:
            object.__setattr__(self, "track_ids", np.asarray(self.track_ids, np.int64).reshape(-1))
        for name in ("scores", "class_ids", "track_ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, xyxy has {n}")
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings, np.float32)
            if emb.ndim != 2 or len(emb) != n:
                raise ValueError(f"embeddings must be (N={n}, D), got {emb.shape}")
            object.__setattr__(self, "embeddings", emb)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Index) -> Detections:
        """Rows selected by a boolean mask, integer indices or a slice (always a copy)."""
        emb = None if self.embeddings is None else self.embeddings[index].copy()
        return Detections(
            self.xyxy[index].copy(),
            self.scores[index].copy(),
            self.class_ids[index].copy(),
            self.track_ids[index].copy(),
            emb,
        )

    def __iter__(self) -> Iterator[tuple[FloatArray, float, int, int]]:
        """(box, score, class id, track id) per object, for sinks and logs (not hot paths)."""
        for i in range(len(self)):
            box, score = self.xyxy[i], float(self.scores[i])
            yield box, score, int(self.class_ids[i]), int(self.track_ids[i])

    def with_tracks(self, track_ids: IntArray) -> Detections:
        return Detections(self.xyxy, self.scores, self.class_ids, track_ids, self.embeddings)

    def with_embeddings(self, embeddings: FloatArray) -> Detections:
        return Detections(self.xyxy, self.scores, self.class_ids, self.track_ids, embeddings)

    @property
    def area(self) -> FloatArray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        area: FloatArray = (wh[:, 0] * wh[:, 1]).astype(np.float32)
        return area

    @staticmethod
    def merge(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        emb = None
        if all(p.embeddings is not None for p in parts):
            emb = np.concatenate([p.embeddings for p in parts if p.embeddings is not None])
        return Detections(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
            np.concatenate([p.track_ids for p in parts]),
            emb,
        )


def _areas(boxes: FloatArray) -> FloatArray:
    """(N,) areas of (N, 4) xyxy boxes, zero for inverted ones."""
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], 0)
    area: FloatArray = size[:, 0] * size[:, 1]
    return area


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M), vectorised."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    # plain ufuncs: np.clip / np.prod wrappers cost more than the arithmetic at tracker sizes
    overlap = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(
        a[:, None, :2], b[None, :, :2]
    )
    np.maximum(overlap, 0, out=overlap)
    inter = overlap[..., 0] * overlap[..., 1]
    area_a, area_b = _areas(a), _areas(b)
    union = area_a[:, None] + area_b[None, :] - inter
    iou: FloatArray = (inter / np.maximum(union, 1e-9)).astype(np.float32)
    return iou
