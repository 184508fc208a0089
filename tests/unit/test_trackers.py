"""Trackers on synthetic scenes: id continuity, life cycle, thresholds, and the Kalman filters.

Scenes are lists of frames, each a list of ``(object key, xyxy box, score)``. Every detection
also carries an embedding derived from its object key, so DeepSORT sees a perfect re-id model
and SORT/ByteTrack simply ignore it. Reported boxes are the filter's, so results are read back
by the nearest input box. The life-cycle rules tested are the reference implementations' (see
each tracker's module docstring); ``tests/quality/test_tracking_mot.py`` checks the trackers
reproduce the references' output on real sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from filterpy.kalman import KalmanFilter  # type: ignore[import-untyped]
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from kubevision.api.modelvariant import TrackingThresholds
from kubevision.api.pipeline import TrackerStage
from kubevision.worker.detections import NO_TRACK, Detections, FloatArray
from kubevision.worker.trackers import (
    ByteTrack,
    ByteTrackSettings,
    ByteTrackTable,
    DeepSort,
    Sort,
    Tracker,
    create_tracker,
    kalman,
    track_batch,
)
from kubevision.worker.trackers.base import IdCounter, Pixels, assign_capped, iou
from kubevision.worker.trackers.sort import match_iou

Box = tuple[float, float, float, float]
Frame = list[tuple[str, Box, float]]
Factory = Callable[..., Tracker]

TRACKERS: dict[str, Factory] = {"sort": Sort, "bytetrack": ByteTrack, "deepsort": DeepSort}
ALL = pytest.mark.parametrize("factory", TRACKERS.values(), ids=TRACKERS.keys())
WARM_UP = 10
"""Frames of an unrelated object first, so a test's object starts after any warm-up rule."""


def embedding(key: str, dim: int = 16) -> FloatArray:
    """A fixed unit vector per object key: a perfect appearance model."""
    vec = np.random.default_rng(sum(map(ord, key)) * 7919).normal(size=dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def box(x: float, y: float = 100.0, w: float = 40.0, h: float = 100.0) -> Box:
    return (x, y, x + w, y + h)


def detections(frame: Frame, class_id: int = 0) -> Detections:
    if not frame:
        return Detections.empty().with_embeddings(np.empty((0, 16), np.float32))
    keys, boxes, scores = zip(*frame, strict=True)
    return Detections(
        np.array(boxes, np.float32),
        np.array(scores, np.float32),
        np.full(len(frame), class_id),
        embeddings=np.stack([embedding(k) for k in keys]),
    )


def run(tracker: Tracker, frames: list[Frame]) -> list[dict[str, int]]:
    """Per frame, object key -> track id of every reported track, by its nearest input box."""
    out = []
    for frame in frames:
        tracked = tracker.update(detections(frame))
        found: dict[str, int] = {}
        if frame and len(tracked):
            boxes = np.array([b for _, b, _ in frame], np.float32)
            nearest = iou(tracked.xyxy, boxes).argmax(axis=1)
            found = {frame[j][0]: int(t) for j, t in zip(nearest, tracked.track_ids, strict=True)}
        out.append(found)
    return out


def ids_of(result: list[dict[str, int]], key: str) -> set[int]:
    return {frame[key] for frame in result if key in frame}


def after_warm_up(frames: list[Frame]) -> list[Frame]:
    """``frames`` preceded by WARM_UP frames of a far-away object "z"."""
    return [[("z", box(1000), 0.9)]] * WARM_UP + [[*f, ("z", box(1000), 0.9)] for f in frames]


@ALL
def test_single_moving_box_keeps_its_id(factory: Factory) -> None:
    result = run(factory(min_hits=3), [[("a", box(10 + 6 * t), 0.9)] for t in range(30)])
    assert ids_of(result, "a") == {1}
    assert all(result[5:])


@ALL
def test_two_crossing_boxes_keep_their_ids(factory: Factory) -> None:
    """Same row, opposite directions: near the crossing only predicted motion tells them apart
    (matching to last positions swaps them at frame 22)."""
    frames: list[Frame] = [
        [("right", box(0 + 8 * t), 0.9), ("left", box(300 - 6 * t), 0.9)] for t in range(45)
    ]
    result = run(factory(min_hits=1), frames)
    assert ids_of(result, "right") == {1}
    assert ids_of(result, "left") == {2}
    assert all(len(f) == 2 for f in result[1:])


@pytest.mark.parametrize(
    ("factory", "detections_needed"),
    [
        (Sort, lambda m: m + 1),  # hit_streak counts the matches after the first detection
        (ByteTrack, lambda m: m),
        (DeepSort, lambda m: m),  # n_init
    ],
    ids=["sort", "bytetrack", "deepsort"],
)
@pytest.mark.parametrize("min_hits", [1, 2, 4])
def test_a_new_track_is_reported_after_min_hits(
    factory: Factory, detections_needed: Callable[[int], int], min_hits: int
) -> None:
    result = run(factory(min_hits=min_hits), after_warm_up([[("a", box(50), 0.9)]] * 6))
    first = next(i for i, f in enumerate(result) if "a" in f) - WARM_UP
    assert first == max(detections_needed(min_hits), 1) - 1


@pytest.mark.parametrize(
    ("kind", "unset", "one"),
    [("sort", 4, 2), ("bytetrack", 2, 1), ("deepsort", 3, 1)],
)
def test_a_stage_without_min_hits_confirms_by_its_references_rule(
    kind: str, unset: int, one: int
) -> None:
    """Detections a new track needs with minHits unset (abewley/sort's 3 matches in a row after
    the first detection, ByteTrack's second match, deep_sort's n_init 3) and with minHits 1."""
    reid = {"reid": {"family": "person-reid"}} if kind == "deepsort" else {}
    embedder = (lambda frame, xyxy: xyxy) if kind == "deepsort" else None
    frames = after_warm_up([[("a", box(50), 0.9)]] * 6)
    for stage, needed in (({}, unset), ({"minHits": 1}, one)):
        spec = TrackerStage.model_validate({"type": kind, **reid, **stage})
        result = run(create_tracker(spec, embedder), frames)
        assert next(i for i, f in enumerate(result) if "a" in f) - WARM_UP == needed - 1


@pytest.mark.parametrize("factory", [Sort, ByteTrack], ids=["sort", "bytetrack"])
def test_tracks_of_a_streams_first_frames_are_reported_at_once(factory: Factory) -> None:
    """The references report every track from its first detection while the stream starts."""
    result = run(factory(min_hits=3), [[("a", box(50), 0.9)]] * 3)
    assert result[0] == {"a": 1}


@pytest.mark.parametrize(
    ("factory", "longest_gap"),
    [(Sort, 3), (ByteTrack, 4), (DeepSort, 2)],
    ids=["sort", "bytetrack", "deepsort"],
)
@pytest.mark.parametrize("gap", [1, 2, 3, 4, 5])
def test_track_ends_after_max_age_frames_without_detections(
    factory: Factory, longest_gap: int, gap: int
) -> None:
    """max_age 3: SORT keeps a track unmatched for 3 frames; ByteTrack's reference can still
    find a track on the frame after it expired; DeepSORT's cascade only reaches tracks missed
    for fewer than max_age frames."""
    seen: Frame = [("a", box(50), 0.9)]
    result = run(factory(max_age=3, min_hits=1), [seen] * 5 + [[]] * gap + [seen])
    assert (result[-1].get("a") == 1) == (gap <= longest_gap)


@pytest.mark.parametrize("factory", [ByteTrack, DeepSort], ids=["bytetrack", "deepsort"])
def test_a_tentative_track_that_misses_a_frame_is_dropped(factory: Factory) -> None:
    seen: Frame = [("a", box(50), 0.9)]
    result = run(factory(min_hits=3), after_warm_up([seen, seen, [], seen, seen, seen]))
    assert ["a" in f for f in result[WARM_UP:]] == [False] * 5 + [True]


def test_sort_reports_a_track_again_only_once_it_is_matched_min_hits_times_in_a_row() -> None:
    seen: Frame = [("a", box(50), 0.9)]
    result = run(Sort(max_age=2, min_hits=2), after_warm_up([seen] * 4 + [[]] + [seen] * 3))
    assert ["a" in f for f in result[WARM_UP:]] == [
        False,
        False,
        True,
        True,
        False,
        False,
        True,
        True,
    ]


def test_deepsort_reports_a_track_missed_for_one_frame_at_its_predicted_box() -> None:
    frames = [[("a", box(50 + 5 * t), 0.9)] for t in range(6)] + [[]]
    filtered = DeepSort(min_hits=1).update
    for frame in frames[:-1]:
        filtered(detections(frame))
    coasting = filtered(detections([]))
    assert list(coasting.track_ids) == [1]
    assert coasting.xyxy[0, 0] == pytest.approx(80, abs=2)  # moved on at 5 px per frame
    detector_boxes = DeepSort(min_hits=1, report_boxes="detection")
    assert len(run(detector_boxes, frames)[-1]) == 0


@ALL
def test_detection_boxes_are_the_matched_detectors_boxes(factory: Factory) -> None:
    tracker = factory(min_hits=1, report_boxes="detection")
    for t in range(5):
        dets = detections([("a", box(50 + 3 * t + (t % 2)), 0.9)])
        tracked = tracker.update(dets)
    np.testing.assert_array_equal(tracked.xyxy, dets.xyxy)


@ALL
def test_different_classes_never_share_a_track(factory: Factory) -> None:
    tracker = factory(min_hits=1, report_boxes="detection")
    person = detections([("a", box(50), 0.9)])
    car = Detections(person.xyxy, person.scores, np.array([2]), embeddings=person.embeddings)
    assert list(tracker.update(person).track_ids) == [1]
    car_ids = [list(tracker.update(car).track_ids) for _ in range(3)]
    assert car_ids[-1] == [2]
    assert all(1 not in ids for ids in car_ids)


@pytest.mark.parametrize(
    ("low_score", "output"), [(0.3, {"a": 1}), (0.05, {})], ids=["rescues", "below-low-score"]
)
def test_bytetrack_low_score_detections_rescue_a_track(
    low_score: float, output: dict[str, int]
) -> None:
    strong: Frame = [("a", box(50), 0.9)]
    weak: Frame = [("a", box(52), low_score)]
    result = run(ByteTrack(min_hits=1), [strong, strong, weak, weak, strong])
    assert result[2:4] == [output, output]
    assert result[4] == {"a": 1}


@pytest.mark.parametrize("score", [0.3, 0.65])
def test_bytetrack_low_score_detections_do_not_start_a_track(score: float) -> None:
    """Below new_track_score (0.7) no track starts, even above high_score (0.6)."""
    result = run(ByteTrack(min_hits=1), [[("a", box(50), score)]] * 10)
    assert result == [{}] * 10


def test_bytetrack_with_a_detectors_own_thresholds_tracks_its_low_scores() -> None:
    """A detector that scores people ~0.4: the reference thresholds never start a track."""
    frames: list[Frame] = [[("a", box(50 + 2 * t), 0.42)] for t in range(10)]
    assert run(ByteTrack(), frames)[-1] == {}
    fitted = ByteTrack(high_score=0.3, low_score=0.1, new_track_score=0.4)
    assert run(fitted, frames)[-1] == {"a": 1}


def test_sort_does_not_use_low_score_logic() -> None:
    """The contrast with ByteTrack: SORT tracks whatever it is given."""
    assert run(Sort(min_hits=1), [[("a", box(50), 0.3)]] * 3)[-1] == {"a": 1}


def test_deepsort_reidentifies_after_an_occlusion_where_sort_cannot() -> None:
    """Reappearing a box width away (no IoU with the coasting track): appearance decides."""
    before: Frame = [("a", box(100), 0.9)]
    after: Frame = [("a", box(145), 0.9)]
    frames = [before] * 5 + [[]] * 5 + [after]
    assert run(DeepSort(min_hits=1), frames)[-1] == {"a": 1}
    assert run(Sort(min_hits=1), frames)[-1].get("a") != 1


def test_deepsort_does_not_give_an_id_to_a_different_looking_object() -> None:
    """Same place, other appearance, after a miss: not the lost track (no IoU fallback then)."""
    frames = [[("a", box(100), 0.9)]] * 5 + [[]] + [[("b", box(100), 0.9)]]
    assert run(DeepSort(min_hits=1), frames)[-1] == {"b": 2}


def test_deepsort_gallery_remembers_older_looks() -> None:
    """The nearest of the last gallery_size embeddings counts, not only the latest one."""
    tracker = DeepSort(min_hits=1, gallery_size=100)
    for key in ["front"] * 3 + ["side"] * 3:
        dets = Detections(
            np.array([box(100)], np.float32),
            np.ones(1, np.float32),
            np.zeros(1, np.int64),
            embeddings=embedding(key)[None],
        )
        tracker.update(dets)
    for _ in range(3):
        tracker.update(Detections.empty().with_embeddings(np.empty((0, 16), np.float32)))
    back = Detections(
        np.array([box(110)], np.float32),
        np.ones(1, np.float32),
        np.zeros(1, np.int64),
        embeddings=embedding("front")[None],
    )
    assert list(tracker.update(back).track_ids) == [1]


def test_deepsort_embeds_the_frame_when_detections_have_no_embeddings() -> None:
    calls: list[tuple[int, int]] = []

    def embedder(frame: Pixels, xyxy: FloatArray) -> FloatArray:
        calls.append((frame.shape[0], len(xyxy)))
        return np.stack([embedding(str(int(x))) for x in xyxy[:, 0]])

    tracker = DeepSort(embedder=embedder, min_hits=1)
    plain = Detections(
        np.array([box(10), box(200)], np.float32), np.ones(2, np.float32), np.zeros(2, np.int64)
    )
    frame = np.zeros((480, 640, 3), np.uint8)
    tracked = tracker.update(plain, frame)
    assert list(tracked.track_ids) == [1, 2]
    assert tracked.embeddings is not None
    assert tracked.embeddings.shape == (2, 16)
    assert calls == [(480, 2)]  # one batched call per frame


def _embedding_calls(
    reid_every: int, frames: list[Frame]
) -> tuple[list[int], list[dict[str, int]]]:
    """Boxes embedded per frame, and the ids, of a DeepSORT whose embedder looks up keys."""
    calls: list[int] = []
    keys: dict[float, str] = {}  # object key by its box's left edge (unique per frame here)

    def embedder(frame: Pixels, xyxy: FloatArray) -> FloatArray:
        calls[-1] += len(xyxy)
        return np.stack([embedding(keys[round(float(b[0]), 2)]) for b in xyxy])

    tracker = DeepSort(embedder=embedder, min_hits=1, reid_every=reid_every)
    image = np.zeros((480, 1280, 3), np.uint8)
    ids = []
    for frame in frames:
        calls.append(0)
        keys.update({round(b[0], 2): k for k, b, _ in frame})
        dets = detections(frame)
        tracked = tracker.update(Detections(dets.xyxy, dets.scores, dets.class_ids), image)
        nearest = iou(tracked.xyxy, dets.xyxy).argmax(axis=1)
        ids.append({frame[j][0]: int(t) for j, t in zip(nearest, tracked.track_ids, strict=True)})
    return calls, ids


def test_deepsort_reuses_the_embedding_of_a_track_nothing_else_is_near() -> None:
    """Two people far apart: after their first frame each is embedded once every
    ``reid_every`` frames, with the same ids as when every detection is embedded."""
    frames: list[Frame] = [
        [("a", box(10 + 4 * t), 0.9), ("b", box(900 - 4 * t), 0.9)] for t in range(20)
    ]
    every, ids_every = _embedding_calls(1, frames)
    reused, ids_reused = _embedding_calls(5, frames)
    assert sum(every) == 40
    assert reused == [2 if t % 5 == 0 else 0 for t in range(20)]  # refreshed every 5 frames
    assert ids_reused == ids_every


def test_deepsort_embeds_people_who_come_close() -> None:
    """Crossing people overlap: every detection near another is embedded, ids kept."""
    frames: list[Frame] = [
        [("right", box(0 + 8 * t), 0.9), ("left", box(300 - 6 * t), 0.9)] for t in range(45)
    ]
    calls, ids = _embedding_calls(1000, frames)
    near = [
        t
        for t in range(45)
        if iou(np.array([box(8 * t)]), np.array([box(300 - 6 * t)]))[0, 0] > 0.3
    ]
    assert near
    assert all(calls[t] == 2 for t in near)
    assert ids_of(ids, "right") == {1}
    assert ids_of(ids, "left") == {2}


def test_deepsort_without_appearance_says_what_it_needs() -> None:
    plain = Detections(
        np.array([box(10)], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64)
    )
    with pytest.raises(ValueError, match="pass the frame to update"):
        DeepSort().update(plain)


@ALL
def test_reset_clears_tracks_and_ids(factory: Factory) -> None:
    tracker = factory(min_hits=1)
    run(tracker, [[("a", box(50), 0.9), ("b", box(300), 0.9)]] * 3)
    tracker.reset()
    assert run(tracker, [[("b", box(300), 0.9)]] * 2) == [{"b": 1}, {"b": 1}]


@ALL
def test_instances_have_independent_id_counters(factory: Factory) -> None:
    first, second = factory(min_hits=1), factory(min_hits=1)
    assert run(first, [[("a", box(50), 0.9), ("b", box(300), 0.9)]]) == [{"a": 1, "b": 2}]
    assert run(second, [[("c", box(50), 0.9)]]) == [{"c": 1}]


@ALL
def test_input_detections_are_not_mutated(factory: Factory) -> None:
    tracker = factory(min_hits=1)
    for t in range(3):
        dets = detections([("a", box(50 + t), 0.9), ("b", box(300), 0.9)])
        assert dets.embeddings is not None
        inputs: list[npt.NDArray[Any]] = [
            dets.xyxy,
            dets.scores,
            dets.class_ids,
            dets.track_ids,
            dets.embeddings,
        ]
        copies = [a.copy() for a in inputs]
        tracked = tracker.update(dets)
        assert list(tracked.track_ids) == [1, 2]
        assert all(np.array_equal(a, b) for a, b in zip(inputs, copies, strict=True))
        assert (dets.track_ids == NO_TRACK).all()


@ALL
def test_empty_frames_give_empty_output(factory: Factory) -> None:
    tracker = factory()
    assert len(tracker.update(detections([]))) == 0
    assert len(tracker.update(Detections.empty())) == 0


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (Sort, {"iou_threshold": 1.5}, "iou_threshold must be between 0 and 1"),
        (Sort, {"max_age": 0}, "max_age must be an integer >= 1"),
        (Sort, {"min_hits": 0}, "min_hits must be an integer >= 1"),
        (Sort, {"report_boxes": "kalman"}, "report_boxes must be 'filter' or 'detection'"),
        (ByteTrack, {"min_hits": 2.5}, "min_hits must be an integer >= 1"),
        (ByteTrack, {"high_score": -0.1}, "high_score must be between 0 and 1"),
        (ByteTrack, {"low_score": 0.6, "high_score": 0.5}, "low_score .* must be below"),
        (ByteTrack, {"new_track_score": 0.5}, "new_track_score .* must be at least"),
        (ByteTrack, {"low_match_iou": 2}, "low_match_iou must be between 0 and 1"),
        (DeepSort, {"max_cosine_distance": 1.2}, "max_cosine_distance must be between"),
        (DeepSort, {"gallery_size": 0}, "gallery_size must be an integer >= 1"),
        (DeepSort, {"min_iou": float("nan")}, "min_iou must be between 0 and 1"),
    ],
)
def test_invalid_thresholds_raise(factory: Factory, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


@pytest.mark.parametrize(("kind", "cls"), [("sort", Sort), ("bytetrack", ByteTrack)])
def test_factory_builds_motion_trackers_from_the_stage(kind: str, cls: type) -> None:
    stage = TrackerStage.model_validate({"type": kind, "maxAgeFrames": 5, "minHits": 2})
    tracker = create_tracker(stage)
    assert isinstance(tracker, cls)
    settings = tracker.settings if isinstance(tracker, ByteTrack) else tracker
    assert isinstance(settings, Sort | ByteTrackSettings)
    assert (settings.max_age, settings.min_hits) == (5, 2)
    with pytest.raises(ValueError, match="only used by deepsort"):
        create_tracker(stage, embedder=lambda frame, xyxy: xyxy)


@pytest.mark.parametrize("refresh", [1, 10])
def test_factory_gives_deepsort_the_stages_reid_refresh(refresh: int) -> None:
    stage = TrackerStage.model_validate(
        {"type": "deepsort", "reid": {"family": "person-reid"}, "reidRefreshFrames": refresh}
    )
    tracker = create_tracker(stage, embedder=lambda frame, xyxy: xyxy)
    assert isinstance(tracker, DeepSort)
    assert tracker.reid_every == refresh


def test_factory_applies_the_detectors_thresholds() -> None:
    """The ModelVariant's spec.tracking reaches each tracker's own thresholds."""
    fitted = TrackingThresholds(high_score=0.34, low_score=0.1, new_track_score=0.44, match_iou=0.4)
    byte = create_tracker(TrackerStage(type="bytetrack"), thresholds=fitted)
    assert isinstance(byte, ByteTrack)
    assert (byte.settings.high_score, byte.settings.low_score) == (0.34, 0.1)
    assert byte.settings.new_track_score == 0.44
    sort = create_tracker(TrackerStage(type="sort"), thresholds=fitted)
    assert isinstance(sort, Sort)
    assert sort.iou_threshold == 0.4
    stage = TrackerStage.model_validate({"type": "deepsort", "reid": {"family": "person-reid"}})
    deep = create_tracker(stage, lambda frame, xyxy: xyxy, fitted)
    assert isinstance(deep, DeepSort)
    assert deep.min_iou == 0.4
    default = create_tracker(TrackerStage(type="bytetrack"))
    assert isinstance(default, ByteTrack)
    assert (default.settings.high_score, default.settings.new_track_score) == (0.6, 0.7)


def test_factory_builds_deepsort_only_with_an_embedder() -> None:
    stage = TrackerStage.model_validate({"type": "deepsort", "reid": {"family": "person-reid"}})
    with pytest.raises(ValueError, match="needs an embedder"):
        create_tracker(stage)
    tracker = create_tracker(stage, embedder=lambda frame, xyxy: xyxy)
    assert isinstance(tracker, DeepSort)


@pytest.mark.parametrize(
    ("offset", "expected"), [(0.0, 36 / 126), (1.0, 50 / 150)], ids=["exclusive", "inclusive"]
)
def test_iou_of_pixel_ranges(offset: float, expected: float) -> None:
    """ByteTrack's cython_bbox counts a box from 0 to 9 as 10 pixels wide."""
    a, b = np.array([[0.0, 0, 9, 9]]), np.array([[5.0, 0, 14, 9]])
    assert iou(a, b, offset)[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_capped_assignment_maximises_the_summed_margin(seed: int) -> None:
    """Against brute force: the matching maximising sum(max_cost - cost) over allowed pairs."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 1, (4, 5))
    rows, cols = assign_capped(cost, 0.5)
    assert (cost[rows, cols] <= 0.5).all()
    gain = np.maximum(0.5 - cost, 0)
    best_r, best_c = linear_sum_assignment(-gain)
    assert (0.5 - cost[rows, cols]).sum() == pytest.approx(gain[best_r, best_c].sum())


def test_sort_takes_one_to_one_pairs_above_the_threshold_as_they_are() -> None:
    """The reference skips the assignment when pairs above the IoU threshold are one-to-one,
    even where maximising the summed IoU would pair differently."""
    overlap = np.array([[0.35, 0.29], [0.29, 0.0]])
    dets, tracks = match_iou(overlap, 0.3)
    assert (list(dets), list(tracks)) == ([0], [0])
    crowded = np.array([[0.35, 0.34], [0.33, 0.0]])
    dets, tracks = match_iou(crowded, 0.3)
    assert sorted(zip(dets.tolist(), tracks.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_ids_are_given_on_first_report() -> None:
    counter, ids = IdCounter(), np.full(4, NO_TRACK, np.int64)
    counter.give(ids, np.array([2, 0]))
    counter.give(ids, np.array([0, 3]))
    assert list(ids) == [2, NO_TRACK, 1, 3]


def test_kalman_noise_scales_with_box_height() -> None:
    """DeepSORT's values: std 1/20 of the height for position, 1/160 for velocity."""
    mean = np.array([[0.0, 0.0, 0.5, 100.0, 0, 0, 0, 0]])
    f = kalman.HeightScaled()
    q = np.diag(f.process_noise(mean)[0])
    np.testing.assert_allclose(q, np.array([5, 5, 1e-2, 5, 0.625, 0.625, 1e-5, 0.625]) ** 2)
    r = np.diag(f.measurement_noise(mean)[0])
    np.testing.assert_allclose(r, np.array([5, 5, 1e-1, 5]) ** 2)


def random_boxes(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    xy = rng.uniform(0, 600, (n, 2))
    wh = np.column_stack([rng.uniform(15, 60, n), rng.uniform(30, 300, n)])
    return np.hstack([xy, xy + wh])


def filterpy_filters(
    mean: npt.NDArray[np.float64], cov: npt.NDArray[np.float64], f: Any, h: Any
) -> list[KalmanFilter]:
    out = []
    for i in range(len(mean)):
        kf = KalmanFilter(dim_x=mean.shape[1], dim_z=4)
        kf.F, kf.H = f.copy(), h.copy()
        kf.x, kf.P = mean[i].reshape(-1, 1).copy(), cov[i].copy()
        out.append(kf)
    return out


def test_height_scaled_kalman_matches_filterpy() -> None:
    """The vectorised DeepSORT/ByteTrack filter equals one filterpy KalmanFilter per track."""
    rng = np.random.default_rng(0)
    box0 = random_boxes(rng, 5)
    f = kalman.HeightScaled()
    mean, cov = f.initiate(box0)
    filters = filterpy_filters(mean, cov, f.F, f.H)
    velocity = rng.normal(0, 3, (5, 4))
    for step in range(1, 20):
        q = f.process_noise(mean)
        mean, cov = f.predict(mean, cov)
        z = box0 + step * velocity + rng.normal(0, 2, box0.shape)
        r = f.measurement_noise(mean)
        mean, cov = f.update(mean, cov, z)
        for i, kf in enumerate(filters):
            kf.predict(Q=q[i])
            kf.update(kalman.xyxy_to_xyah(z[i : i + 1]).reshape(4, 1), R=r[i])
            np.testing.assert_allclose(mean[i], kf.x[:, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(cov[i], kf.P, rtol=1e-7, atol=1e-9)


def test_area_ratio_kalman_matches_sorts_filterpy_setup() -> None:
    """SORT's filter as abewley/sort builds it with filterpy (P, Q, R scaled as it does)."""
    rng = np.random.default_rng(1)
    box0 = random_boxes(rng, 4)
    f = kalman.AreaRatio()
    mean, cov = f.initiate(box0)
    filters = filterpy_filters(mean, cov, f.F, f.H)
    for kf in filters:
        kf.R[2:, 2:] *= 10.0
        kf.Q[-1, -1] *= 0.01
        kf.Q[4:, 4:] *= 0.01
    shift = rng.normal(0, 3, (4, 2))
    velocity = np.hstack([shift, shift])  # boxes move and keep their size: areas stay positive
    for step in range(1, 20):
        mean, cov = f.predict(mean, cov)
        z = box0 + step * velocity + rng.normal(0, 1, box0.shape)
        mean, cov = f.update(mean, cov, z)
        for i, kf in enumerate(filters):
            kf.predict()
            kf.update(kalman.AreaRatio.measure(z[i : i + 1]).reshape(4, 1))
            np.testing.assert_allclose(mean[i], kf.x[:, 0], rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(cov[i], kf.P, rtol=1e-6, atol=1e-7)


def test_area_ratio_boxes_round_trip_and_flag_impossible_states() -> None:
    f = kalman.AreaRatio()
    boxes = random_boxes(np.random.default_rng(2), 3)
    mean, _ = f.initiate(boxes)
    np.testing.assert_allclose(f.boxes(mean), boxes, atol=1e-9)
    mean[0, 2] = -5.0  # negative area: not a box any more, SORT drops such a track
    assert not np.isfinite(f.boxes(mean)[0]).all()


def test_mahalanobis_gate_matches_the_definition() -> None:
    f = kalman.HeightScaled()
    mean, cov = f.initiate(np.array([[80.0, 160.0, 120.0, 240.0], [276.0, -10.0, 324.0, 110.0]]))
    z = np.array([[86.0, 155.0, 128.0, 238.0], [0.0, 0.0, 25.0, 50.0], [280.0, -8.0, 328.0, 111.0]])
    got = f.mahalanobis_sq(mean, cov, z)
    z_mean, s = f.project(mean, cov)
    xyah = kalman.xyxy_to_xyah(z)
    for t in range(2):
        for n in range(3):
            d = xyah[n] - z_mean[t]
            assert got[t, n] == pytest.approx(d @ np.linalg.inv(s[t]) @ d)


# -- ByteTrack cameras sharing one table (a worker's batch in one update) ------------------------


def _same(a: Detections, b: Detections) -> bool:
    return bool(
        np.array_equal(a.xyxy, b.xyxy)
        and np.array_equal(a.track_ids, b.track_ids)
        and np.array_equal(a.scores, b.scores)
    )


def _random_scene(rng: np.random.Generator, frames: int) -> list[Detections]:
    """People walking with jittery, sometimes missing, sometimes low-scoring boxes."""
    start = rng.uniform(0, 600, (6, 2))
    velocity = rng.normal(0, 4, (6, 2))
    scenes = []
    for k in range(frames):
        centre = start + k * velocity + rng.normal(0, 2, start.shape)
        seen = rng.random(6) < 0.85
        half = np.array([20.0, 50.0])
        xyxy = np.column_stack([centre - half, centre + half])[seen].astype(np.float32)
        scores = rng.uniform(0.05, 1.0, len(xyxy)).astype(np.float32)
        scenes.append(Detections(xyxy, scores, np.zeros(len(xyxy), np.int64)))
    return scenes


def test_cameras_sharing_a_table_track_as_one_tracker_each() -> None:
    """Batches of any subset of cameras, in any order, give each camera exactly what its own
    ByteTrack gives (boxes, scores, ids numbered per camera)."""
    rng = np.random.default_rng(7)
    settings = ByteTrackSettings(high_score=0.34, low_score=0.1, new_track_score=0.34, min_hits=3)
    scenes = [_random_scene(rng, 60) for _ in range(6)]
    table = ByteTrackTable(settings)
    shared = [ByteTrack(table) for _ in scenes]
    alone = [ByteTrack(ByteTrackTable(settings)) for _ in scenes]
    position = [0] * len(scenes)
    while any(p < 60 for p in position):
        cams = [c for c in rng.permutation(len(scenes)).tolist() if position[c] < 60]
        cams = cams[: rng.integers(1, len(cams) + 1)]
        batch = [(shared[c].key, scenes[c][position[c]]) for c in cams]
        for c, tracked in zip(cams, table.update(batch), strict=True):
            assert _same(tracked, alone[c].update(scenes[c][position[c]])), (c, position[c])
            position[c] += 1
    assert table.cameras == 6


def test_track_batch_runs_shared_cameras_in_one_update() -> None:
    table = ByteTrackTable(ByteTrackSettings(min_hits=1))
    cams = [ByteTrack(table) for _ in range(3)]
    sort = Sort(min_hits=1)
    found = detections([("a", box(50), 0.9)])
    tracked = track_batch([(cams[0], found, None), (sort, found, None), (cams[2], found, None)])
    assert [t.track_ids.tolist() for t in tracked] == [[1], [1], [1]]
    assert table.tracks == 2  # the camera that sent no frame holds none


def test_a_closed_camera_frees_its_tracks_and_a_late_frame_of_it_is_ignored() -> None:
    table = ByteTrackTable(ByteTrackSettings(min_hits=1))
    kept, gone = ByteTrack(table), ByteTrack(table)
    found = detections([("a", box(50), 0.9), ("b", box(300), 0.9)])
    table.update([(kept.key, found), (gone.key, found)])
    assert table.tracks == 4
    gone.close()
    assert (table.tracks, table.cameras) == (2, 1)
    late = table.update([(gone.key, found), (kept.key, found)])
    assert len(late[0]) == 0
    assert late[1].track_ids.tolist() == [1, 2]
    kept.reset()
    assert table.tracks == 0
    assert kept.update(found).track_ids.tolist() == [1, 2]  # ids restart after a reset


def test_a_camera_twice_in_one_batch_is_refused() -> None:
    cam = ByteTrack()
    with pytest.raises(ValueError, match="twice in one batch"):
        cam.table.update([(cam.key, Detections.empty()), (cam.key, Detections.empty())])


def test_the_factory_puts_cameras_of_equal_settings_on_one_table() -> None:
    tables: dict[ByteTrackSettings, ByteTrackTable] = {}
    stage = TrackerStage(type="bytetrack")
    a, b = create_tracker(stage, tables=tables), create_tracker(stage, tables=tables)
    other = create_tracker(
        TrackerStage.model_validate({"type": "bytetrack", "minHits": 1}), tables=tables
    )
    assert isinstance(a, ByteTrack)
    assert isinstance(b, ByteTrack)
    assert isinstance(other, ByteTrack)
    assert a.table is b.table is not other.table
    assert len(tables) == 2
