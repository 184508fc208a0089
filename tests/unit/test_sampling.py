"""Samplers on synthetic frames: still vs moving scenes, exact everyN and adaptive rates."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kubevision.api.camera import Sampling
from kubevision.worker.capture import Frame
from kubevision.worker.sampling import (
    AdaptiveSampler,
    AllSampler,
    EveryNSampler,
    KeyframeSampler,
    MotionDetector,
    MotionSampler,
    Sampler,
    build_sampler,
)

HEIGHT, WIDTH = 120, 160
Image = npt.NDArray[np.uint8]


def frame(image: Image, index: int = 0, *, t: float = 0.0, key_frame: bool = False) -> Frame:
    return Frame("cam", image, index, pts=index, capture_wall=1e9 + t, capture_mono=t,
                 key_frame=key_frame)  # fmt: skip


def still(i: int) -> Image:
    return np.full((HEIGHT, WIDTH, 3), 100, np.uint8)


def moving_box(i: int) -> Image:
    """A 40x40 white box moving 20 px a frame: about 8% of the pixels change each frame."""
    image = still(i)
    x = (i * 20) % (WIDTH - 40)
    image[40:80, x : x + 40] = 255
    return image


def sensor_noise(i: int) -> Image:
    noise = np.random.default_rng(i).normal(0, 4, (HEIGHT, WIDTH, 3))
    return np.clip(still(i) + noise, 0, 255).astype(np.uint8)


def flicker(i: int) -> Image:
    """Global brightness wobbling by 10 levels: lighting, not motion."""
    return np.full((HEIGHT, WIDTH, 3), 100 + 10 * (i % 2), np.uint8)


def scene_cut(i: int) -> Image:
    return np.full((HEIGHT, WIDTH, 3), 20 if i < 3 else 230, np.uint8)


def run(sampler: Sampler, make: Callable[[int], Image], n: int, fps: float = 30.0) -> list[bool]:
    return [sampler(frame(make(i), i, t=i / fps)) for i in range(n)]


# -- building from spec.sampling ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (Sampling(), AllSampler),
        (Sampling(mode="everyN", every_n=5), EveryNSampler),
        (Sampling(mode="motion"), MotionSampler),
        (Sampling(mode="motion", motion_threshold=0.2), MotionSampler),
        (Sampling(mode="adaptive", min_fps=2, max_fps=10), AdaptiveSampler),
        (Sampling(mode="keyframes"), KeyframeSampler),
    ],
)
def test_build_sampler_picks_the_mode(spec: Sampling, kind: type) -> None:
    assert isinstance(build_sampler(spec), kind)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"min_fps": 5.0}, (5.0, 30.0)),
        ({"max_fps": 0.5}, (0.5, 0.5)),
        ({"min_fps": 40.0}, (40.0, 40.0)),
        ({}, (1.0, 30.0)),
    ],
)
def test_adaptive_defaults_fill_the_missing_bound(
    fields: dict[str, Any], expected: tuple[float, float]
) -> None:
    sampler = build_sampler(Sampling(mode="adaptive", **fields))
    assert isinstance(sampler, AdaptiveSampler)
    assert (sampler.min_fps, sampler.max_fps) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "sometimes"}, "unknown; use one of all, everyN, motion, adaptive, keyframes"),
        ({"mode": "everyN"}, "needs everyN"),
        ({"mode": "everyN", "every_n": 0}, "everyN must be an integer from 1 to 1000"),
        ({"mode": "everyN", "every_n": 2.5}, "everyN must be an integer from 1 to 1000"),
        ({"mode": "all", "every_n": 3}, "everyN is allowed with mode everyN only"),
        ({"mode": "keyframes", "motion_threshold": 0.1}, "motionThreshold is allowed with modes"),
        ({"mode": "motion", "min_fps": 1.0}, "minFps/maxFps are allowed with mode adaptive"),
        ({"mode": "motion", "motion_threshold": 1.5}, "fraction of changed pixels"),
        ({"mode": "motion", "motion_threshold": -0.1}, "fraction of changed pixels"),
        ({"mode": "adaptive", "motion_threshold": 0.0}, "fraction of changed pixels"),
        ({"mode": "adaptive", "min_fps": 0.0}, "minFps must be > 0 and <= 240"),
        ({"mode": "adaptive", "min_fps": 10.0, "max_fps": 5.0}, r"minFps \(10.0\) must not exceed"),
        ({"mode": "adaptive", "min_fps": -1.0, "max_fps": 5.0}, "minFps must be > 0 and <= 240"),
        ({"mode": "adaptive", "max_fps": math.inf}, "maxFps must be > 0 and <= 240"),
    ],
)
def test_invalid_parameters_say_what_is_allowed(fields: dict[str, Any], message: str) -> None:
    # model_construct skips pydantic's checks, like a hand-written worker config would
    with pytest.raises(ValueError, match=message):
        build_sampler(Sampling.model_construct(**fields))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MotionDetector(width=4), "width must be >= 8"),
        (lambda: MotionDetector(pixel_delta=0), "pixel_delta must be in 1..255"),
        (lambda: AdaptiveSampler(1, 5, 0.1, decay_seconds=0), "decay_seconds must be > 0"),
        (lambda: EveryNSampler(True), "everyN must be an integer"),
    ],
)
def test_invalid_constructor_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- each sampler --------------------------------------------------------------------------


def test_all_takes_everything() -> None:
    assert run(AllSampler(), still, 10) == [True] * 10


@pytest.mark.parametrize("n", [1, 2, 3, 7, 30])
def test_every_n_takes_the_first_and_then_one_in_n(n: int) -> None:
    sampler = EveryNSampler(n)
    taken = run(sampler, still, 60)
    assert sum(taken) == math.ceil(60 / n)
    assert [i for i, t in enumerate(taken) if t] == list(range(0, 60, n))
    sampler.reset()
    assert sampler(frame(still(0))) is True


def test_every_n_counts_frames_seen_not_indexes() -> None:
    """Indexes jump when the capture buffer dropped frames; the ratio must not depend on it."""
    sampler = EveryNSampler(3)
    taken = [sampler(frame(still(0), index)) for index in range(0, 90, 3)]
    assert sum(taken) == 10


@pytest.mark.parametrize(
    ("scene", "threshold", "expected_after_first"),
    [
        (still, 0.01, False),
        (sensor_noise, 0.01, False),
        (flicker, 0.01, False),
        (moving_box, 0.05, True),
        (moving_box, 0.2, False),  # the box covers ~8% of the frame: below a 20% threshold
    ],
)
def test_motion(
    scene: Callable[[int], Image], threshold: float, expected_after_first: bool
) -> None:
    sampler = MotionSampler(threshold)
    taken = run(sampler, scene, 12)
    assert taken[0] is True, "the first frame has no reference; it is analysed"
    assert taken[1:] == [expected_after_first] * 11
    assert sampler.last_score is not None
    assert 0 <= sampler.last_score <= 1


def test_motion_takes_a_scene_cut_once_and_reset_forgets() -> None:
    sampler = MotionSampler(0.05)
    assert run(sampler, scene_cut, 6) == [True, False, False, True, False, False]
    sampler.reset()
    assert sampler.last_score is None
    assert sampler(frame(still(0))) is True


def test_motion_restarts_on_a_resolution_change() -> None:
    sampler = MotionSampler(0.05)
    assert sampler(frame(still(0)))
    assert not sampler(frame(still(1)))
    assert sampler(frame(np.full((90, 160, 3), 100, np.uint8)))


ADAPTIVE_CASES = [  # (scene, source fps, min, max, expected analysed fps)
    pytest.param(still, 30.0, 2.0, 10.0, 2.0, id="still-30fps-idles-at-min"),
    pytest.param(moving_box, 30.0, 2.0, 10.0, 10.0, id="motion-30fps-runs-at-max"),
    pytest.param(moving_box, 30.0, 1.0, 60.0, 30.0, id="max-above-source-takes-all"),
    pytest.param(still, 12.5, 5.0, 5.0, 5.0, id="fractional-ratio-is-exact"),
    pytest.param(moving_box, 12.5, 0.5, 7.5, 7.5, id="motion-12.5fps"),
]


@pytest.mark.parametrize(("scene", "fps", "min_fps", "max_fps", "expected"), ADAPTIVE_CASES)
def test_adaptive_rate_stays_within_bounds(
    scene: Callable[[int], Image], fps: float, min_fps: float, max_fps: float, expected: float
) -> None:
    sampler = AdaptiveSampler(min_fps, max_fps, threshold=0.02)
    seconds = 10
    taken = run(sampler, scene, int(seconds * fps), fps)
    analysed_fps = (sum(taken) - 1) / seconds  # the first frame is free
    assert analysed_fps == pytest.approx(expected, abs=0.15)
    assert min_fps <= sampler.rate <= max_fps


def test_adaptive_slows_down_when_motion_stops() -> None:
    sampler = AdaptiveSampler(1.0, 15.0, threshold=0.02, decay_seconds=0.5)
    fps = 30.0
    busy = [sampler(frame(moving_box(i), i, t=i / fps)) for i in range(60)]
    assert sampler.rate == pytest.approx(15.0)
    quiet = [sampler(frame(still(0), i, t=i / fps)) for i in range(60, 240)]
    assert sum(busy[1:]) == pytest.approx(30, abs=1)  # 2 s at 15 fps
    assert sampler.rate == pytest.approx(1.0, abs=0.01)  # 6 s later: 12 half-lives
    assert sum(quiet[-90:]) <= 4  # the last 3 s run at about the idle rate
    sampler.reset()
    assert sampler.activity == 0.0
    assert sampler(frame(still(0), t=100.0)) is True


def test_adaptive_does_not_burst_after_a_gap() -> None:
    sampler = AdaptiveSampler(2.0, 10.0, threshold=0.02)
    run(sampler, still, 30)
    after_gap = [sampler(frame(still(0), i, t=60.0 + i / 30)) for i in range(5)]
    assert sum(after_gap) == 1


def test_keyframes_follow_the_decoder_flag() -> None:
    flags = [True, False, False, True, False, True]
    sampler = KeyframeSampler()
    assert [sampler(frame(still(0), i, key_frame=k)) for i, k in enumerate(flags)] == flags
