"""Track events: the wire model, and how EventBuilder turns tracked frames into events."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from kubevision.worker.detections import NO_TRACK, Detections
from kubevision.worker.events import (
    Classification,
    EventBuilder,
    TrackEvent,
    rejected_tracks_counter,
)

T0 = 1_750_000_000.0
"""Capture time of frame 1 (Unix seconds); frame n is captured n-1 tenths of a second later."""
LABELS = ("person", "car")


def frame(*track_ids: int, class_ids: tuple[int, ...] | None = None) -> Detections:
    """One tracked frame; each object's box is derived from its track id."""
    n = len(track_ids)
    boxes = [[10.0 * t, 10.0 * t, 10.0 * t + 5.123456, 10.0 * t + 8.0] for t in track_ids]
    return Detections(
        np.array(boxes, np.float32).reshape(n, 4),
        np.full(n, 0.876543, np.float32),
        np.array(class_ids if class_ids is not None else [0] * n, np.int64),
        np.array(track_ids, np.int64),
    )


def builder(**kwargs: Any) -> EventBuilder:
    return EventBuilder("shop", "door", LABELS, clock=lambda: T0 + 100, **kwargs)


def run(b: EventBuilder, frames: list[list[int]]) -> list[list[str]]:
    """Feed the frames; per frame, its events as "<kind suffix> <track id>"."""
    out = []
    for i, ids in enumerate(frames):
        events = b.update(frame(*ids), T0 + i / 10)
        out.append([f"{e.kind.removeprefix('track.')} {e.track_id}" for e in events])
    return out


@pytest.mark.parametrize(
    ("kwargs", "frames", "expected"),
    [
        pytest.param(
            {"update_every": None},
            [[1], [1], []],
            [["started 1"], [], ["ended 1"]],
            id="starts-when-first-seen-ends-when-gone",
        ),
        pytest.param(
            {"update_every": None},
            [[1], [1, 2], [2], []],
            [["started 1"], ["started 2"], ["ended 1"], ["ended 2"]],
            id="overlapping-tracks",
        ),
        pytest.param(
            {"update_every": None},
            [[NO_TRACK], [NO_TRACK, 3], []],
            [[], ["started 3"], ["ended 3"]],
            id="untracked-rows-ignored",
        ),
        pytest.param(
            {"update_every": None},
            [[1], [2]],
            [["started 1"], ["ended 1", "started 2"]],
            id="ended-before-started-in-one-frame",
        ),
        pytest.param(
            {"update_every": None},
            [[1], [], [1]],
            [["started 1"], ["ended 1"], ["started 1"]],
            id="reused-id-is-a-new-track",
        ),
        pytest.param(
            {"update_every": None},
            [[4, 4], []],
            [["started 4"], ["ended 4"]],
            id="duplicate-id-in-a-frame-counts-once",
        ),
        pytest.param(
            {"update_every": 2},
            [[1]] * 5,
            [["started 1"], [], ["updated 1"], [], ["updated 1"]],
            id="updates-at-most-every-n-frames",
        ),
        pytest.param(
            {"update_every": 3},
            [[1], [1, 2], [1, 2], [1, 2], [2]],
            [["started 1"], ["started 2"], [], ["updated 1"], ["ended 1", "updated 2"]],
            id="update-throttle-is-per-track",
        ),
        pytest.param(
            {"update_every": 1},
            [[1], [1], [1]],
            [["started 1"], ["updated 1"], ["updated 1"]],
            id="update-every-frame",
        ),
        pytest.param(
            {"update_every": None, "grace_frames": 2},
            [[1], [], [], [1], [], [], []],
            [["started 1"], [], [], [], [], [], ["ended 1"]],
            id="grace-keeps-a-briefly-lost-track",
        ),
        pytest.param(
            {"update_every": 2, "grace_frames": 1},
            [[1], [], [1]],
            [["started 1"], [], ["updated 1"]],
            id="frames-missed-within-grace-count-towards-updates",
        ),
    ],
)
def test_event_kinds(
    kwargs: dict[str, Any], frames: list[list[int]], expected: list[list[str]]
) -> None:
    assert run(builder(**kwargs), frames) == expected


def test_events_carry_the_latest_sighting_and_ended_the_last_one() -> None:
    b = builder(update_every=None)
    (started,) = b.update(frame(2, class_ids=(1,)), T0)
    assert started.model_dump() == {
        "kind": "track.started",
        "pipeline": "shop",
        "camera": "door",
        "track_id": 2,
        "class_name": "car",
        "confidence": 0.8765,
        "box": (20.0, 20.0, 25.12, 28.0),
        "classification": None,
        "keypoints": None,
        "snapshot": None,
        "zone": None,
        "line": None,
        "capture_time": dt.datetime.fromtimestamp(T0, dt.UTC),
        "published_time": dt.datetime.fromtimestamp(T0 + 100, dt.UTC),
    }
    moved = Detections(
        np.array([[1, 2, 3, 4]], np.float32),
        np.array([0.5], np.float32),
        np.array([7]),
        np.array([2]),
    )
    assert b.update(moved, T0 + 1) == []
    (ended,) = b.update(Detections.empty(), T0 + 2)
    assert ended.kind == "track.ended"
    assert ended.box == (1.0, 2.0, 3.0, 4.0)
    assert ended.class_name == "7", "a class id the labels do not cover is reported as text"
    assert ended.capture_time == dt.datetime.fromtimestamp(T0 + 1, dt.UTC), "last seen"


def test_classification_is_remembered_until_the_track_ends() -> None:
    b = builder(update_every=2)
    person = Classification(label="staff", score=0.9)
    (started,) = b.update(frame(1), T0)
    assert started.classification is None
    assert b.update(frame(1), T0 + 0.1, {1: person, 99: person}) == []
    (updated,) = b.update(frame(1), T0 + 0.2)
    assert updated.classification == person
    (ended,) = b.update(frame(), T0 + 0.3)
    assert ended.classification == person


def test_classification_of_the_first_frame_is_in_started() -> None:
    label = Classification(label="van", score=0.7)
    (started,) = builder().update(frame(5), T0, {5: label})
    assert started.classification == label


def test_end_all_ends_every_live_track_and_forgets_them() -> None:
    b = builder()
    b.update(frame(1, 2), T0)
    assert [(e.kind, e.track_id) for e in b.end_all()] == [
        ("track.ended", 1),
        ("track.ended", 2),
    ]
    assert b.live_tracks == 0
    assert [e.kind for e in b.update(frame(1), T0 + 1)] == ["track.started"]


def test_live_tracks_are_capped_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    b = builder(update_every=None, max_tracks=2, rejected=rejected_tracks_counter(registry))

    def rejected() -> float | None:
        labels = {"pipeline": "shop", "camera": "door"}
        return registry.get_sample_value("kubevision_event_tracks_rejected_total", labels)

    with caplog.at_level(logging.WARNING, "kubevision.worker.events"):
        assert run(b, [[1, 2, 3], [1, 2, 3, 4]]) == [["started 1", "started 2"], []]
    assert b.live_tracks == 2
    assert rejected() == 3, "track 3 in two frames, track 4 in one"
    assert len(caplog.records) == 1, "one warning per over-cap episode, not per frame"
    assert "door" in caplog.text
    assert run(b, [[2, 3]]) == [["ended 1", "started 3"]], "an ended track frees its slot"


def test_state_stays_bounded_as_tracks_come_and_go() -> None:
    b = builder(update_every=None, max_tracks=4)
    for i in range(10_000):
        events = b.update(frame(i, i + 1), T0 + i / 30)
        assert len(events) <= 3
        assert b.live_tracks <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"update_every": 0}, "update_every"),
        ({"grace_frames": -1}, "grace_frames"),
        ({"max_tracks": 0}, "max_tracks"),
    ],
)
def test_builder_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


def event(**overrides: Any) -> TrackEvent:
    fields: dict[str, Any] = {
        "kind": "track.started",
        "pipeline": "shop",
        "camera": "door",
        "track_id": 1,
        "class_name": "person",
        "confidence": 0.5,
        "box": (1.0, 2.0, 3.0, 4.0),
        "capture_time": dt.datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC),
        "published_time": dt.datetime(2025, 6, 1, 12, 0, 1, tzinfo=dt.UTC),
    }
    return TrackEvent(**(fields | overrides))


def test_wire_form_is_camel_case_json_without_unset_keys_and_round_trips() -> None:
    e = event(classification=Classification(label="staff", score=0.75))
    wire = json.loads(e.to_json())
    assert wire == {
        "kind": "track.started",
        "pipeline": "shop",
        "camera": "door",
        "trackId": 1,
        "className": "person",
        "confidence": 0.5,
        "box": [1.0, 2.0, 3.0, 4.0],
        "classification": {"label": "staff", "score": 0.75},
        "captureTime": "2025-06-01T12:00:00.250000Z",
        "publishedTime": "2025-06-01T12:00:01Z",
    }
    assert TrackEvent.model_validate_json(e.to_json()) == e


def test_times_are_normalised_to_utc_and_must_carry_a_zone() -> None:
    cest = dt.timezone(dt.timedelta(hours=2))
    e = event(capture_time=dt.datetime(2025, 6, 1, 14, 0, tzinfo=cest))
    assert e.capture_time == dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
    assert e.capture_time.tzinfo == dt.UTC
    with pytest.raises(ValidationError, match="timezone"):
        event(capture_time=dt.datetime(2025, 6, 1, 12, 0))


@pytest.mark.parametrize(
    ("overrides", "valid"),
    [
        ({"kind": "zone.entered", "zone": "till"}, True),
        ({"kind": "zone.left", "zone": "till"}, True),
        ({"kind": "line.crossed", "line": "entrance"}, True),
        ({"kind": "zone.entered"}, False),
        ({"kind": "line.crossed"}, False),
        ({"kind": "track.updated", "zone": "till"}, False),
        ({"kind": "zone.left", "zone": "till", "line": "entrance"}, False),
        ({"kind": "track.gone"}, False),
        ({"confidence": 1.5}, False),
        ({"track_id": -1}, False),
    ],
)
def test_zone_and_line_names_match_the_kind(overrides: dict[str, Any], valid: bool) -> None:
    if valid:
        assert json.loads(event(**overrides).to_json())["kind"] == overrides["kind"]
    else:
        with pytest.raises(ValidationError):
            event(**overrides)
