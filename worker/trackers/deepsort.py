"""DeepSORT (Wojke et al., ICIP 2017): SORT plus appearance, for ids that survive occlusions.

Behaviour is that of the authors' ``nwojke/deep_sort`` (same output on the same detections and
features). Per frame, after every track is predicted:

1. matching cascade: confirmed tracks, those seen most recently first (one assignment per
   number of frames since the last match), against the detections still free; cost = the
   smallest cosine distance between a detection's embedding and the track's gallery (its last
   ``gallery_size`` embeddings), pairs allowed up to ``max_cosine_distance`` and only inside
   the track's 95% Kalman gate (squared Mahalanobis distance <= chi2(4 dof) = 9.49);
2. IoU: tentative tracks and confirmed tracks missed for just this frame against the
   detections left, cost 1 - IoU, up to ``1 - min_iou``;
3. unmatched tentative tracks and tracks unmatched for more than ``max_age`` frames end;
   unmatched detections start tentative tracks, confirmed on their ``min_hits``-th match.

Reported: confirmed tracks matched this frame and, with ``report_boxes="filter"`` (the
reference's output), also those missed for this one frame, at their predicted box.

Real-time cost: the embeddings of a frame are one batched re-id call (``ReidEmbedder``), made
only when detections carry none; each track's gallery is a fixed (gallery_size, D) array, so
the appearance cost of all tracks is one matrix product per frame. With ``reid_every`` > 1 (a
deviation from the reference, which embeds every detection) a detection that can only be one
track is not embedded: it overlaps one track seen last frame at IoU >= ``REUSE_IOU``, and no
other track overlaps it, nor another detection that track, at IoU >= ``CROWD_IOU``. It takes
that track's newest embedding, so the cascade matches the pair as the reference would; the
track's gallery is not written, and it is embedded again at least every ``reid_every`` frames,
so its appearance is current when another person comes near. Crowded detections, new ones
and those of tracks that were missed are embedded as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubevision.worker.detections import NO_TRACK, Detections, FloatArray, IntArray
from kubevision.worker.trackers.base import (
    Array,
    Embedder,
    IdCounter,
    Mask,
    Pixels,
    ReportBoxes,
    append_rows,
    assign_capped,
    check_count,
    check_fraction,
    check_report_boxes,
    iou,
    keep_rows,
    output,
    same_class,
)
from kubevision.worker.trackers.kalman import CHI2_95_4DOF, HeightScaled

REUSE_IOU = 0.5
"""A detection reuses its track's embedding only when it overlaps that track's prediction at
least this much (and nothing else overlaps either)."""
CROWD_IOU = 0.2
"""Another track or detection overlapping at least this much makes the pair ambiguous. At 0
(any overlap) only 32 % of MOT17's public detections (>= 0.3, full length) would skip re-id,
at 0.2 71 %: crowds touch but rarely overlap that much without being one another."""


@dataclass
class _Tracks:
    mean: Array
    cov: Array
    ids: IntArray
    class_ids: IntArray
    scores: FloatArray
    hits: IntArray
    since: IntArray
    """Frames since the last match (0: matched this frame)."""
    confirmed: Mask
    det: IntArray
    """This frame's detection row, -1 if unmatched."""
    gallery: FloatArray
    """(T, gallery_size, D) unit embeddings, a ring buffer per track."""
    stored: IntArray
    """Embeddings ever written to each gallery (the next slot is ``stored % gallery_size``)."""
    embedded: IntArray
    """Frames since the track's newest embedding was computed (not reused)."""

    @classmethod
    def empty(cls, gallery_size: int, dim: int) -> _Tracks:
        none = np.empty(0, np.int64)
        return cls(
            np.empty((0, 8)),
            np.empty((0, 8, 8)),
            none,
            none,
            np.empty(0, np.float32),
            none,
            none,
            np.empty(0, bool),
            none,
            np.empty((0, gallery_size, dim), np.float32),
            none,
            none,
        )


class DeepSort:
    """DeepSORT tracker; see the module docstring."""

    def __init__(
        self,
        *,
        embedder: Embedder | None = None,
        max_age: int = 70,
        min_hits: int = 3,
        max_cosine_distance: float = 0.2,
        min_iou: float = 0.3,
        gallery_size: int = 100,
        report_boxes: ReportBoxes = "filter",
        reid_every: int = 1,
    ) -> None:
        """Defaults are the paper's: n_init 3, max_age 70, cosine 0.2, IoU distance 0.7, a
        gallery (nn_budget) of 100 and every detection embedded (``reid_every`` 1)."""
        check_count("max_age", max_age)
        check_count("reid_every", reid_every)
        check_count("min_hits", min_hits)
        check_count("gallery_size", gallery_size)
        check_fraction("max_cosine_distance", max_cosine_distance)
        check_fraction("min_iou", min_iou)
        check_report_boxes(report_boxes)
        self.embedder = embedder
        self.max_age = max_age
        self.min_hits = min_hits
        self.max_cosine_distance = max_cosine_distance
        self.min_iou = min_iou
        self.gallery_size = gallery_size
        self.report_boxes: ReportBoxes = report_boxes
        self.reid_every = reid_every
        self._filter = HeightScaled()
        self._computed: Mask = np.empty(0, bool)
        self.reset()

    def reset(self) -> None:
        self._tracks = _Tracks.empty(self.gallery_size, 0)
        self._ids = IdCounter()

    def close(self) -> None:
        """Its state is its own: forgetting it is all there is to release."""
        self.reset()

    def update(self, detections: Detections, frame: Pixels | None = None) -> Detections:
        """Advance one frame; needs ``frame`` and an embedder unless detections carry embeddings."""
        t = self._tracks
        t.mean, t.cov = self._filter.predict(t.mean, t.cov)
        t.since += 1
        t.embedded += 1
        t.det[:] = -1
        reuse = self._reusable(detections)
        features = self._features(detections, frame, reuse)
        if self._tracks.gallery.shape[2] != features.shape[1] and not len(self._tracks.ids):
            self._tracks = _Tracks.empty(self.gallery_size, features.shape[1])
        t = self._tracks
        free = self._cascade(detections, features)
        free = self._match_iou(detections, features, free)
        dead = (~t.confirmed & (t.det < 0)) | (t.since > self.max_age)
        self._tracks = keep_rows(t, ~dead)
        self._spawn(detections, features, free)
        return self._report(detections.with_embeddings(features))

    @property
    def embedded_last_frame(self) -> int:
        """Detections of the last frame that needed the re-id model (those that came with
        embeddings count where they would have)."""
        return int(self._computed.sum())

    def _reusable(self, detections: Detections) -> IntArray:
        """Per detection, the track row whose newest embedding it reuses, or -1 (embed it)."""
        reuse = np.full(len(detections), -1, np.int64)
        t = self._tracks
        if self.reid_every == 1 or len(t.ids) == 0 or len(detections) == 0:
            return reuse
        overlap = iou(self._filter.boxes(t.mean), detections.xyxy)
        touching = overlap >= CROWD_IOU
        track = np.argmax(overlap, axis=0)
        cols = np.arange(len(detections))
        alone = (touching.sum(axis=0) == 1) & (touching.sum(axis=1)[track] == 1)
        fits = (
            t.confirmed[track]
            & (t.since[track] == 1)
            & (t.embedded[track] < self.reid_every)
            & (t.class_ids[track] == detections.class_ids)
            & (overlap[track, cols] >= REUSE_IOU)
        )
        ok = alone & fits
        reuse[ok] = track[ok]
        return reuse

    def _features(
        self, detections: Detections, frame: Pixels | None, reuse: IntArray
    ) -> FloatArray:
        """L2-normalised (N, D) embeddings of this frame's detections: computed (or given)
        where ``reuse`` is -1, else the reused track's newest embedding."""
        t = self._tracks
        self._computed = reuse < 0
        need = np.flatnonzero(self._computed)
        if detections.embeddings is not None:
            emb = detections.embeddings[need]
        elif len(need) == 0:
            emb = np.empty((0, t.gallery.shape[2]), np.float32)
        elif frame is None or self.embedder is None:
            raise ValueError(
                "DeepSort needs appearance: pass the frame to update() and give the tracker an "
                "embedder, or pass detections that already carry embeddings"
            )
        else:
            emb = self.embedder(frame, detections.xyxy[need])
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        out = np.empty((len(detections), unit.shape[1]), np.float32)
        out[need] = unit
        rows = reuse[~self._computed]
        if len(rows):
            out[~self._computed] = t.gallery[rows, (t.stored[rows] - 1) % self.gallery_size]
        return out

    def _appearance_cost(self, rows: IntArray, features: FloatArray) -> Array:
        """(rows, N) nearest-gallery cosine distance, inf outside the Kalman gate."""
        t = self._tracks
        depth = int(min(self.gallery_size, t.stored[rows].max()))
        gallery = t.gallery[rows, :depth]
        distance = 1.0 - (gallery.reshape(-1, gallery.shape[2]) @ features.T).reshape(
            len(rows), depth, -1
        )
        empty = np.arange(depth)[None, :] >= t.stored[rows][:, None]
        distance[empty] = np.inf
        cost: Array = distance.min(axis=1).astype(np.float64)
        return cost

    def _cascade(self, detections: Detections, features: FloatArray) -> IntArray:
        """Match confirmed tracks by appearance, most recently seen first; the free detections."""
        t = self._tracks
        free = np.arange(len(detections))
        confirmed = np.flatnonzero(t.confirmed)
        if len(confirmed) == 0 or len(free) == 0:
            return free
        cost = self._appearance_cost(confirmed, features)
        gate = self._filter.mahalanobis_sq(t.mean[confirmed], t.cov[confirmed], detections.xyxy)
        allowed = (gate <= CHI2_95_4DOF) & same_class(t.class_ids[confirmed], detections.class_ids)
        cost[~allowed] = np.inf
        levels = np.unique(t.since[confirmed])
        for level in levels[levels <= self.max_age]:
            if len(free) == 0:
                break
            at_level = np.flatnonzero(t.since[confirmed] == level)
            r, c = assign_capped(cost[np.ix_(at_level, free)], self.max_cosine_distance)
            self._match(confirmed[at_level[r]], free[c], detections, features)
            free = np.delete(free, c)
        return free

    def _match_iou(self, detections: Detections, features: FloatArray, free: IntArray) -> IntArray:
        """Tentative tracks and confirmed ones missed only this frame, by IoU; the free left."""
        t = self._tracks
        candidates = np.flatnonzero((~t.confirmed | (t.since == 1)) & (t.det < 0))
        if len(candidates) == 0 or len(free) == 0:
            return free
        similarity = iou(self._filter.boxes(t.mean[candidates]), detections.xyxy[free])
        similarity[~same_class(t.class_ids[candidates], detections.class_ids[free])] = 0.0
        r, c = assign_capped(1.0 - similarity, 1.0 - self.min_iou)
        self._match(candidates[r], free[c], detections, features)
        return np.delete(free, c)

    def _match(
        self, rows: IntArray, det_rows: IntArray, detections: Detections, features: FloatArray
    ) -> None:
        """Correct the matched tracks and add the computed embeddings to their galleries."""
        if len(rows) == 0:
            return
        t = self._tracks
        t.mean[rows], t.cov[rows] = self._filter.update(
            t.mean[rows], t.cov[rows], detections.xyxy[det_rows]
        )
        fresh = self._computed[det_rows]
        rows_fresh = rows[fresh]
        t.gallery[rows_fresh, t.stored[rows_fresh] % self.gallery_size] = features[det_rows[fresh]]
        t.stored[rows_fresh] += 1
        t.embedded[rows_fresh] = 0
        t.hits[rows] += 1
        t.since[rows], t.det[rows] = 0, det_rows
        t.class_ids[rows], t.scores[rows] = (
            detections.class_ids[det_rows],
            detections.scores[det_rows],
        )
        t.confirmed[rows] |= t.hits[rows] >= self.min_hits

    def _spawn(self, detections: Detections, features: FloatArray, det_rows: IntArray) -> None:
        mean, cov = self._filter.initiate(detections.xyxy[det_rows])
        n = len(det_rows)
        gallery = np.zeros((n, self.gallery_size, features.shape[1]), np.float32)
        gallery[:, 0] = features[det_rows]
        ones = np.ones(n, np.int64)
        new = _Tracks(
            mean,
            cov,
            np.full(n, NO_TRACK, np.int64),
            detections.class_ids[det_rows],
            detections.scores[det_rows],
            ones,
            np.zeros(n, np.int64),
            ones >= self.min_hits,
            det_rows.astype(np.int64),
            gallery,
            ones.copy(),
            # a reused embedding that started a track (its owner not matched) is redone next
            np.where(self._computed[det_rows], 0, self.reid_every).astype(np.int64),
        )
        self._tracks = append_rows(self._tracks, new)

    def _report(self, detections: Detections) -> Detections:
        """Confirmed tracks matched now; with filter boxes also those missed just this frame."""
        t = self._tracks
        matched = np.flatnonzero(t.confirmed & (t.since == 0))
        coasting = np.flatnonzero(t.confirmed & (t.since == 1))
        if self.report_boxes == "detection":
            coasting = coasting[:0]
        self._ids.give(t.ids, np.concatenate([matched, coasting]))
        seen = output(
            detections,
            t.det[matched],
            t.ids[matched],
            self._filter.boxes(t.mean[matched]),
            self.report_boxes,
        )
        if len(coasting) == 0:
            return seen
        newest = t.gallery[coasting, (t.stored[coasting] - 1) % self.gallery_size]
        missed = Detections(
            self._filter.boxes(t.mean[coasting]).astype(np.float32),
            t.scores[coasting],
            t.class_ids[coasting],
            t.ids[coasting],
            newest,
        )
        return Detections.merge([seen, missed])
