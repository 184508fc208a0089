"""DeepSORT (Wojke et al., 2017) with one global appearance assignment instead of the cascade.

Each track keeps an appearance feature. Per frame:

1. appearance: confirmed tracks vs all detections, cost = cosine distance between the track's
   feature and the detection's embedding; a pair is allowed only if that distance is at most
   ``max_cosine_distance``, the detection lies inside the track's 95% Kalman gate (squared
   Mahalanobis distance <= chi2(4 dof) = 9.49) and the classes agree;
2. IoU: tentative tracks, plus confirmed tracks that were seen last frame and are still
   unmatched, vs the remaining detections, cost 1 - IoU with IoU at least ``min_iou``
   (DeepSORT's fallback for tracks whose appearance is not yet reliable);
3. detections left start tentative tracks.

Simplifications, after StrongSORT (Du et al., IEEE TMM 2023), which found both to help once
the re-id features are decent: the matching cascade (confirmed tracks matched in order of
age) is replaced by one optimal assignment over all confirmed tracks, since the gate already
bounds how far a stale track may jump; and the per-track gallery of the last 100 features is
replaced by an exponential moving average (``feature_momentum``), one vector per track, so the
appearance cost is a single matrix product.

Embeddings come from ``detections.embeddings`` when an earlier stage computed them, otherwise
from ``embedder(frame, boxes)``.
"""

from __future__ import annotations

import numpy as np

from kubevision.worker.detections import Detections, FloatArray, IntArray, box_iou
from kubevision.worker.trackers import kalman
from kubevision.worker.trackers.base import (
    Embedder,
    Image,
    TrackTable,
    assign,
    check_fraction,
    same_class,
)


class DeepSort:
    """DeepSORT tracker; see the module docstring."""

    def __init__(
        self,
        *,
        embedder: Embedder | None = None,
        max_age: int = 30,
        min_hits: int = 3,
        max_cosine_distance: float = 0.2,
        min_iou: float = 0.3,
        feature_momentum: float = 0.9,
    ) -> None:
        """``feature_momentum``: weight of a track's old feature when a new one is averaged in."""
        check_fraction("max_cosine_distance", max_cosine_distance)
        check_fraction("min_iou", min_iou)
        check_fraction("feature_momentum", feature_momentum)
        self.embedder = embedder
        self.max_cosine_distance = max_cosine_distance
        self.min_iou = min_iou
        self.feature_momentum = feature_momentum
        self._tracks = TrackTable(max_age=max_age, min_hits=min_hits)

    def update(self, detections: Detections, frame: Image | None = None) -> Detections:
        """Advance one frame; needs ``frame`` and an embedder unless detections carry embeddings."""
        features = self._features(detections, frame)
        tracks = self._tracks
        was_tracked = tracks.confirmed & (tracks.misses == 0)
        tracks.predict()
        all_dets = np.arange(len(detections))

        confirmed = np.flatnonzero(tracks.confirmed)
        track_features = self._track_features(features.shape[1])[confirmed]
        cosine = 1.0 - track_features.astype(np.float64) @ features.T.astype(np.float64)
        z = kalman.xyxy_to_xyah(detections.xyxy)
        in_gate = kalman.mahalanobis_sq(tracks.mean[confirmed], tracks.cov[confirmed], z)
        allowed = (in_gate <= kalman.CHI2_95_4DOF) & same_class(
            tracks.class_ids[confirmed], detections.class_ids
        )
        r, c = assign(np.where(allowed, cosine, np.inf), self.max_cosine_distance)
        self._match(confirmed[r], c, detections, features)
        matched_rows, dets_left = confirmed[r], np.setdiff1d(all_dets, c)

        candidates = np.setdiff1d(np.flatnonzero(~tracks.confirmed | was_tracked), matched_rows)
        iou = box_iou(tracks.boxes(candidates), detections.xyxy[dets_left])
        allowed = same_class(tracks.class_ids[candidates], detections.class_ids[dets_left])
        r, c = assign(np.where(allowed, 1.0 - iou, np.inf), 1.0 - self.min_iou)
        self._match(candidates[r], dets_left[c], detections, features)
        dets_left = np.setdiff1d(dets_left, dets_left[c])

        tracks.spawn(dets_left, detections, features[dets_left])
        return tracks.finish(detections.with_embeddings(features))

    def reset(self) -> None:
        self._tracks.clear()

    def _features(self, detections: Detections, frame: Image | None) -> FloatArray:
        """L2-normalised (N, D) embeddings of this frame's detections."""
        if detections.embeddings is not None:
            emb = detections.embeddings
        elif len(detections) == 0:
            emb = np.empty((0, self._track_features(0).shape[1]), np.float32)
        elif frame is None or self.embedder is None:
            raise ValueError(
                "DeepSort needs appearance: pass the frame to update() and give the tracker an "
                "embedder, or pass detections that already carry embeddings"
            )
        else:
            emb = self.embedder(frame, detections.xyxy)
        unit: FloatArray = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return unit.astype(np.float32)

    def _track_features(self, dim: int) -> FloatArray:
        """Every track's feature; (0, dim) before the first track exists."""
        stored = self._tracks.features
        return stored if stored is not None else np.empty((0, dim), np.float32)

    def _match(
        self, rows: IntArray, det_rows: IntArray, detections: Detections, features: FloatArray
    ) -> None:
        """Kalman-correct the matched tracks and fold the new embeddings into their features."""
        tracks = self._tracks
        tracks.match(rows, det_rows, detections)
        if len(rows) == 0 or tracks.features is None:
            return
        mixed = (
            self.feature_momentum * tracks.features[rows]
            + (1.0 - self.feature_momentum) * features[det_rows]
        )
        tracks.features[rows] = mixed / np.maximum(
            np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12
        )
