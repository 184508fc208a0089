"""Trackers on synthetic scenes: id continuity, life cycle, thresholds, and the Kalman filter.

Scenes are lists of frames, each a list of ``(object key, xyxy box, score)``. Every detection
also carries an embedding derived from its object key, so DeepSORT sees a perfect re-id model
and SORT/ByteTrack simply ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from filterpy.kalman import KalmanFilter  # type: ignore[import-untyped]

from kubevision.api.pipeline import TrackerStage
from kubevision.worker.detections import NO_TRACK, Detections, FloatArray
from kubevision.worker.trackers import ByteTrack, DeepSort, Sort, Tracker, create_tracker, kalman
from kubevision.worker.trackers.base import Image

Box = tuple[float, float, float, float]
Frame = list[tuple[str, Box, float]]
Factory = Callable[..., Tracker]

TRACKERS: dict[str, Factory] = {"sort": Sort, "bytetrack": ByteTrack, "deepsort": DeepSort}
ALL = pytest.mark.parametrize("factory", TRACKERS.values(), ids=TRACKERS.keys())


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
    """Per frame, object key -> track id for every object the tracker reported."""
    out = []
    for frame in frames:
        dets = detections(frame)
        tracked = tracker.update(dets)
        by_box = {tuple(np.round(b, 3)): key for key, b, _ in frame}
        out.append({by_box[tuple(np.round(b, 3))]: tid for b, _, _, tid in tracked})
    return out


def ids_of(result: list[dict[str, int]], key: str) -> set[int]:
    return {frame[key] for frame in result if key in frame}


@ALL
@pytest.mark.parametrize("min_hits", [1, 3])
def test_single_moving_box_keeps_its_id(factory: Factory, min_hits: int) -> None:
    frames: list[Frame] = [[("a", box(10 + 6 * t), 0.9)] for t in range(30)]
    result = run(factory(min_hits=min_hits), frames)
    assert [len(f) for f in result] == [0] * (min_hits - 1) + [1] * (31 - min_hits)
    assert ids_of(result, "a") == {1}


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
    assert all(len(f) == 2 for f in result)


@ALL
@pytest.mark.parametrize(("gap", "same_id"), [(1, True), (3, True), (4, False)])
def test_track_ends_after_max_age_frames_without_detections(
    factory: Factory, gap: int, same_id: bool
) -> None:
    seen: Frame = [("a", box(50), 0.9)]
    result = run(factory(max_age=3, min_hits=1), [seen] * 5 + [[]] * gap + [seen])
    assert result[-1] == {"a": 1 if same_id else 2}


@ALL
@pytest.mark.parametrize("min_hits", [1, 2, 4])
def test_tracks_are_confirmed_after_min_hits(factory: Factory, min_hits: int) -> None:
    result = run(factory(min_hits=min_hits), [[("a", box(50), 0.9)]] * 6)
    first = next(i for i, f in enumerate(result) if f)
    assert first == min_hits - 1
    assert result[first] == {"a": 1}


@ALL
def test_a_tentative_track_that_misses_a_frame_is_dropped(factory: Factory) -> None:
    seen: Frame = [("a", box(50), 0.9)]
    result = run(factory(min_hits=3), [seen, seen, [], seen, seen, seen])
    assert [bool(f) for f in result] == [False, False, False, False, False, True]


@ALL
def test_different_classes_never_share_a_track(factory: Factory) -> None:
    tracker = factory(min_hits=1)
    person = detections([("a", box(50), 0.9)])
    car = Detections(person.xyxy, person.scores, np.array([2]), embeddings=person.embeddings)
    assert list(tracker.update(person).track_ids) == [1]
    assert list(tracker.update(car).track_ids) == [2]


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


def test_sort_does_not_use_low_score_logic() -> None:
    """The contrast with ByteTrack: SORT tracks whatever it is given."""
    assert run(Sort(min_hits=1), [[("a", box(50), 0.3)]] * 3)[-1] == {"a": 1}


def test_deepsort_reidentifies_after_an_occlusion_where_sort_cannot() -> None:
    """Reappearing a box width away (no IoU with the coasting track): appearance decides."""
    before: Frame = [("a", box(100), 0.9)]
    after: Frame = [("a", box(145), 0.9)]
    frames = [before] * 5 + [[]] * 5 + [after]
    assert run(DeepSort(min_hits=1), frames)[-1] == {"a": 1}
    assert run(Sort(min_hits=1), frames)[-1] == {"a": 2}


def test_deepsort_does_not_give_an_id_to_a_different_looking_object() -> None:
    """Same place, other appearance, after a miss: not the lost track (no IoU fallback then)."""
    frames = [[("a", box(100), 0.9)]] * 5 + [[]] + [[("b", box(100), 0.9)]]
    assert run(DeepSort(min_hits=1), frames)[-1] == {"b": 2}


def test_deepsort_embeds_the_frame_when_detections_have_no_embeddings() -> None:
    calls: list[tuple[int, int]] = []

    def embedder(frame: Image, xyxy: FloatArray) -> FloatArray:
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
    assert calls == [(480, 2)]


def test_deepsort_without_appearance_says_what_it_needs() -> None:
    plain = Detections(
        np.array([box(10)], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64)
    )
    with pytest.raises(ValueError, match="pass the frame to update"):
        DeepSort().update(plain)


@ALL
def test_reset_clears_tracks_and_ids(factory: Factory) -> None:
    tracker = factory(min_hits=2)
    run(tracker, [[("a", box(50), 0.9), ("b", box(300), 0.9)]] * 3)
    tracker.reset()
    assert run(tracker, [[("b", box(300), 0.9)]] * 2) == [{}, {"b": 1}]


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
        (ByteTrack, {"min_hits": 2.5}, "min_hits must be an integer >= 1"),
        (ByteTrack, {"high_score": -0.1}, "high_score must be between 0 and 1"),
        (ByteTrack, {"low_score": 0.6, "high_score": 0.5}, "low_score .* must be below"),
        (ByteTrack, {"new_track_score": 0.5}, "new_track_score .* must be at least"),
        (ByteTrack, {"low_match_iou": 2}, "low_match_iou must be between 0 and 1"),
        (DeepSort, {"max_cosine_distance": 1.2}, "max_cosine_distance must be between"),
        (DeepSort, {"feature_momentum": -1}, "feature_momentum must be between 0 and 1"),
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
    result = run(tracker, [[("a", box(50), 0.9)]] * 2 + [[]] * 5 + [[("a", box(50), 0.9)]])
    assert result[1] == {"a": 1}
    assert result[-1] == {"a": 1}
    with pytest.raises(ValueError, match="only used by deepsort"):
        create_tracker(stage, embedder=lambda frame, xyxy: xyxy)


def test_factory_builds_deepsort_only_with_an_embedder() -> None:
    stage = TrackerStage.model_validate({"type": "deepsort", "reid": {"family": "person-reid"}})
    with pytest.raises(ValueError, match="needs an embedder"):
        create_tracker(stage)
    tracker = create_tracker(stage, embedder=lambda frame, xyxy: xyxy)
    assert isinstance(tracker, DeepSort)


def test_kalman_noise_scales_with_box_height() -> None:
    """DeepSORT's values: std 1/20 of the height for position, 1/160 for velocity."""
    mean = np.array([[0.0, 0.0, 0.5, 100.0, 0, 0, 0, 0]])
    q = np.diag(kalman.process_noise(mean)[0])
    np.testing.assert_allclose(q, np.array([5, 5, 1e-2, 5, 0.625, 0.625, 1e-5, 0.625]) ** 2)
    r = np.diag(kalman.measurement_noise(mean)[0])
    np.testing.assert_allclose(r, np.array([5, 5, 1e-1, 5]) ** 2)


def test_batched_kalman_matches_filterpy() -> None:
    """The vectorised filter equals one filterpy KalmanFilter per track, step by step."""
    rng = np.random.default_rng(0)
    z0 = np.column_stack(
        [rng.uniform(0, 600, (5, 2)), rng.uniform(0.3, 0.6, 5), rng.uniform(30, 300, 5)]
    )
    mean, cov = kalman.initiate(z0)
    filters = []
    for i in range(5):
        kf = KalmanFilter(dim_x=8, dim_z=4)
        kf.F, kf.H = kalman.F.copy(), kalman.H.copy()
        kf.x, kf.P = mean[i].reshape(8, 1).copy(), cov[i].copy()
        filters.append(kf)
    velocity = np.column_stack([rng.normal(0, 3, (5, 2)), np.zeros(5), rng.normal(0, 1, 5)])
    for step in range(1, 20):
        q = kalman.process_noise(mean)
        mean, cov = kalman.predict(mean, cov)
        z = z0 + step * velocity + rng.normal(0, 2, z0.shape)
        r = kalman.measurement_noise(mean)
        mean, cov = kalman.update(mean, cov, z)
        for i, kf in enumerate(filters):
            kf.predict(Q=q[i])
            kf.update(z[i].reshape(4, 1), R=r[i])
            np.testing.assert_allclose(mean[i], kf.x[:, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(cov[i], kf.P, rtol=1e-7, atol=1e-9)


def test_mahalanobis_gate_matches_the_definition() -> None:
    mean, cov = kalman.initiate(np.array([[100.0, 200.0, 0.5, 80.0], [300.0, 50.0, 0.4, 120.0]]))
    z = np.array([[104.0, 195.0, 0.52, 83.0], [10.0, 10.0, 0.5, 50.0], [300.0, 52.0, 0.4, 119.0]])
    got = kalman.mahalanobis_sq(mean, cov, z)
    z_mean, s = kalman.project(mean, cov)
    for t in range(2):
        for n in range(3):
            d = z[n] - z_mean[t]
            assert got[t, n] == pytest.approx(d @ np.linalg.inv(s[t]) @ d)
