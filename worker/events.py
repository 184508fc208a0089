"""What the worker publishes about tracked objects, and how tracked detections become it.

Consumers see a track's life, not every frame: ``track.started`` when a tracker first reports
an id, ``track.updated`` at most every N frames while it stays (so 30 fps of detections do not
flood a webhook), ``track.ended`` once the tracker has dropped it. Zone and line analytics
publish ``zone.entered``, ``zone.left`` and ``line.crossed`` with the same shape plus the
zone's or line's name.

On the wire an event is one JSON object with camelCase keys, like every KubeVision API, and
without the optional keys that are unset (``classification``, ``keypoints``, ``snapshot``,
``zone``, ``line``). Times are
ISO-8601 in UTC (``...Z``); boxes are ``[x1, y1, x2, y2]`` pixels of the original frame.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubevision.worker.detections import NO_TRACK, Detections, FloatArray

log = logging.getLogger("kubevision.worker.events")

EventKind = Literal[
    "track.started", "track.updated", "track.ended", "zone.entered", "zone.left", "line.crossed"
]
Box = tuple[float, float, float, float]


class _EventModel(BaseModel):
    """camelCase on the wire like the API types; unknown keys are a producer bug."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class Classification(_EventModel):
    """The crop classifier's latest answer for a track (it runs every few frames, not each)."""

    label: str
    score: float = Field(ge=0, le=1)


class Snapshot(_EventModel):
    """A JPEG crop of the object at this event (``worker/snapshots.py``): where it is, and
    what a reader checks it against."""

    uri: str
    """file:// (on the worker's node), s3://bucket/key, or data:image/jpeg;base64,..."""
    size: int = Field(ge=0)
    """Bytes of the JPEG."""
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    """Lower-case hex SHA-256 of the JPEG."""
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class TrackEvent(_EventModel):
    """One thing that happened to one tracked object of one camera."""

    kind: EventKind
    pipeline: str
    camera: str
    track_id: int = Field(ge=0)
    class_name: str
    """Detector class of the latest sighting (trackers may relabel a track over time)."""
    confidence: float = Field(ge=0, le=1)
    box: Box
    """[x1, y1, x2, y2] in pixels of the original frame."""
    classification: Classification | None = None
    keypoints: tuple[tuple[float, float, float], ...] | None = Field(
        default=None, min_length=17, max_length=17
    )
    """The pose stage's latest 17 COCO keypoints of a person track (``worker/pose.py``
    order): x, y in pixels of the original frame and the visibility probability."""
    snapshot: Snapshot | None = None
    """The object's JPEG crop, for the kinds the Pipeline's spec.snapshots names."""
    zone: str | None = None
    """Zone name; set exactly for zone.entered and zone.left."""
    line: str | None = None
    """Line name; set exactly for line.crossed."""
    capture_time: AwareDatetime
    """Wall-clock capture time of the frame the object was seen in (for track.ended: last seen)."""
    published_time: AwareDatetime
    """When the worker emitted the event; minus capture_time, the pipeline's latency."""

    @field_validator("capture_time", "published_time")
    @classmethod
    def _in_utc(cls, value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _place_matches_kind(self) -> TrackEvent:
        if (self.zone is not None) != self.kind.startswith("zone."):
            raise ValueError(f"zone must be set exactly for zone events, kind is {self.kind}")
        if (self.line is not None) != (self.kind == "line.crossed"):
            raise ValueError(f"line must be set exactly for line.crossed, kind is {self.kind}")
        return self

    def to_json(self) -> str:
        """The wire form: one line of camelCase JSON without unset optional keys."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


def rejected_tracks_counter(registry: CollectorRegistry) -> Counter:
    """The counter :class:`EventBuilder` bumps when a camera has too many live tracks.

    Create it once per registry and hand it to every camera's builder.
    """
    return Counter(
        "kubevision_event_tracks_rejected",
        "Sightings of new tracks that got no events because the camera already had the "
        "maximum number of live tracks.",
        ["pipeline", "camera"],
        registry=registry,
    )


@dataclass
class _Track:
    """What is remembered of a live track: its latest sighting and when it last got an event."""

    event_frame: int
    class_id: int = 0
    confidence: float = 0.0
    box: Box = (0.0, 0.0, 0.0, 0.0)
    seen_at: float = 0.0
    seen_frame: int = 0
    classification: Classification | None = None
    keypoints: tuple[tuple[float, float, float], ...] | None = None

    def saw(self, box: FloatArray, score: float, class_id: int, at: float, frame: int) -> None:
        """Keep the latest sighting, rounded: sub-pixel and 5th-digit noise is not news."""
        x1, y1, x2, y2 = (round(float(v), 2) for v in box)
        self.box = (x1, y1, x2, y2)
        self.confidence = round(score, 4)
        self.class_id = class_id
        self.seen_at = at
        self.seen_frame = frame


class EventBuilder:
    """Turns one camera's successive tracked ``Detections`` into track events.

    ``update_every``: frames between ``track.updated`` events of one track (None: never).
    ``grace_frames``: frames a track may be missing from the tracker's output before it ends;
    0 when the tracker reports every live track, the tracker's ``maxAgeFrames`` when it only
    reports the tracks matched in the current frame. ``max_tracks`` bounds the state: new
    tracks beyond it get no events, are counted on ``rejected`` and logged once per episode.
    Ended tracks are forgotten, so memory stays bounded however long the camera runs.
    """

    def __init__(
        self,
        pipeline: str,
        camera: str,
        labels: Sequence[str],
        *,
        update_every: int | None = 30,
        grace_frames: int = 0,
        max_tracks: int = 1000,
        rejected: Counter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if update_every is not None and update_every < 1:
            raise ValueError(f"update_every must be at least 1 or None, got {update_every}")
        if grace_frames < 0:
            raise ValueError(f"grace_frames must not be negative, got {grace_frames}")
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be at least 1, got {max_tracks}")
        self.pipeline = pipeline
        self.camera = camera
        self._labels = tuple(labels)
        self._update_every = update_every
        self._grace_frames = grace_frames
        self._max_tracks = max_tracks
        self._rejected = None if rejected is None else rejected.labels(pipeline, camera)
        self._clock = clock
        self._tracks: dict[int, _Track] = {}
        self._frame = 0
        self._over_cap = False

    @property
    def live_tracks(self) -> int:
        return len(self._tracks)

    def update(
        self,
        detections: Detections,
        captured_at: float,
        classifications: Mapping[int, Classification] | None = None,
        keypoints: Mapping[int, FloatArray] | None = None,
    ) -> list[TrackEvent]:
        """Events for the next frame: ended tracks first, then started/updated in row order.

        ``captured_at`` is the frame's wall-clock capture time (Unix seconds);
        ``classifications`` maps track ids to the classifier's results from this frame,
        ``keypoints`` to the pose stage's (17, 3) keypoints.
        Untracked rows (``NO_TRACK``) are ignored.
        """
        self._frame += 1
        frame = self._frame
        published = self._now()
        present = {int(t) for t in detections.track_ids if t != NO_TRACK}
        gone = [
            track_id
            for track_id, track in self._tracks.items()
            if track_id not in present and frame - track.seen_frame > self._grace_frames
        ]
        events = [self._event("track.ended", t, self._tracks.pop(t), published) for t in gone]
        rejected = 0
        handled: set[int] = set()
        for box, score, class_id, track_id in detections:
            if track_id == NO_TRACK or track_id in handled:
                continue
            handled.add(track_id)
            track = self._tracks.get(track_id)
            kind: EventKind | None = None
            if track is None:
                if len(self._tracks) >= self._max_tracks:
                    rejected += 1
                    continue
                kind = "track.started"
                track = self._tracks[track_id] = _Track(event_frame=frame)
            elif self._update_every is not None and (
                frame - track.event_frame >= self._update_every
            ):
                kind = "track.updated"
                track.event_frame = frame
            track.saw(box, score, class_id, captured_at, frame)
            if classifications is not None and track_id in classifications:
                track.classification = classifications[track_id]
            if keypoints is not None and track_id in keypoints:
                track.keypoints = tuple(
                    (round(float(x), 1), round(float(y), 1), round(float(v), 3))
                    for x, y, v in keypoints[track_id]
                )
            if kind is not None:
                events.append(self._event(kind, track_id, track, published))
        self._note_rejected(rejected)
        return events

    def end_all(self) -> list[TrackEvent]:
        """``track.ended`` for every live track, e.g. when the camera stops or is reassigned."""
        published = self._now()
        events = [self._event("track.ended", t, tr, published) for t, tr in self._tracks.items()]
        self._tracks.clear()
        return events

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    def _class_name(self, class_id: int) -> str:
        """The detector's label, or the id as text if the labels do not cover it."""
        return self._labels[class_id] if 0 <= class_id < len(self._labels) else str(class_id)

    def _event(
        self, kind: EventKind, track_id: int, track: _Track, published: dt.datetime
    ) -> TrackEvent:
        return TrackEvent(
            kind=kind,
            pipeline=self.pipeline,
            camera=self.camera,
            track_id=track_id,
            class_name=self._class_name(track.class_id),
            confidence=track.confidence,
            box=track.box,
            classification=track.classification,
            keypoints=track.keypoints,
            capture_time=dt.datetime.fromtimestamp(track.seen_at, dt.UTC),
            published_time=published,
        )

    def _note_rejected(self, rejected: int) -> None:
        """Count sightings over the cap; log when an over-cap episode starts, not every frame."""
        if rejected and self._rejected is not None:
            self._rejected.inc(rejected)
        if rejected and not self._over_cap:
            log.warning(
                "camera %s has %d live tracks, the maximum; new tracks get no events",
                self.camera,
                len(self._tracks),
                extra={"pipeline": self.pipeline, "camera": self.camera, "rejected": rejected},
            )
        self._over_cap = rejected > 0
