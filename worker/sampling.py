"""Samplers: which decoded frames of a camera go to inference (``spec.sampling``).

Each sampler is a small stateful callable, one per camera: ``sampler(frame)`` says whether to
analyse the frame, ``reset()`` forgets history (after a reconnect the previous image means
nothing). The caller counts the frames a sampler skips (``kubevision_frames_skipped``).

The API server enforces the same rules through CEL, but a worker config can come from
elsewhere (tests, a hand-written ConfigMap), so :func:`build_sampler` checks them again and
says what is allowed.
"""

from __future__ import annotations

import math
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt
from cv2.typing import MatLike

from kubevision.api.camera import Sampling
from kubevision.worker.capture import Frame

MODES = ("all", "everyN", "motion", "adaptive", "keyframes")
DEFAULT_MOTION_THRESHOLD = 0.01
"""Fraction of changed pixels that counts as motion when spec.sampling leaves it out."""
DEFAULT_MIN_FPS = 1.0
DEFAULT_MAX_FPS = 30.0


class Sampler(Protocol):
    """What the worker loop calls per decoded frame of one camera."""

    def __call__(self, frame: Frame) -> bool:
        """Whether to analyse this frame."""
        ...

    def reset(self) -> None:
        """Forget history, e.g. after the stream reconnected."""
        ...


class AllSampler:
    """Analyse every frame."""

    def __call__(self, frame: Frame) -> bool:
        return True

    def reset(self) -> None:
        pass


class EveryNSampler:
    """Analyse the first frame and then one in ``n``; counts frames the sampler sees, not
    frame indexes, so frames the capture buffer dropped do not skew the ratio."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise ValueError(f"everyN must be an integer from 1 to 1000, got {n!r}")
        self.n = n
        self._seen = 0

    def __call__(self, frame: Frame) -> bool:
        take = self._seen % self.n == 0
        self._seen += 1
        return take

    def reset(self) -> None:
        self._seen = 0


class MotionDetector:
    """Fraction of pixels that changed since the previous frame, by differencing small
    blurred grayscale copies (cheap enough to run on every decoded frame)."""

    def __init__(self, width: int = 160, pixel_delta: int = 25) -> None:
        if width < 8:
            raise ValueError(f"motion width must be >= 8 pixels, got {width}")
        if not 0 < pixel_delta < 256:
            raise ValueError(f"pixel_delta must be in 1..255, got {pixel_delta}")
        self.width = width
        self.pixel_delta = pixel_delta
        self._previous: MatLike | None = None

    def score(self, image: npt.NDArray[np.uint8]) -> float | None:
        """Changed fraction in [0, 1] of a BGR image; None for the first frame (nothing to
        compare with) or after the resolution changed."""
        height, width = image.shape[:2]
        small_w = min(self.width, width)
        small_h = max(1, round(height * small_w / width))
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(gray, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (5, 5), 0)  # sensor noise is not motion
        previous, self._previous = self._previous, small
        if previous is None or previous.shape != small.shape:
            return None
        changed = cv2.absdiff(small, previous) > self.pixel_delta
        return float(np.count_nonzero(changed)) / changed.size

    def reset(self) -> None:
        self._previous = None


class MotionSampler:
    """Analyse a frame when at least ``threshold`` of its pixels changed since the previous
    frame (and the first frame, to have a result for the scene at all)."""

    def __init__(self, threshold: float, detector: MotionDetector | None = None) -> None:
        _check_threshold(threshold)
        self.threshold = threshold
        self.detector = detector or MotionDetector()
        self.last_score: float | None = None

    def __call__(self, frame: Frame) -> bool:
        self.last_score = self.detector.score(frame.image)
        return self.last_score is None or self.last_score >= self.threshold

    def reset(self) -> None:
        self.detector.reset()
        self.last_score = None


class AdaptiveSampler:
    """Analyse at a rate between ``min_fps`` (still scene) and ``max_fps`` (motion at or
    above ``threshold``), proportional to activity in between.

    Activity rises at once (an event is not sampled late) and decays with a half-life of
    ``decay_seconds`` (a pause in motion does not drop straight to the idle rate). Each frame
    earns ``elapsed * rate`` credit and a frame is taken per whole credit, so the analysed rate
    is exact whatever the camera's rate; a longer gap (reconnect, dropped frames) restarts the
    schedule instead of causing a burst. Times are the frames' monotonic capture times.
    """

    def __init__(
        self,
        min_fps: float,
        max_fps: float,
        threshold: float,
        *,
        decay_seconds: float = 1.0,
        detector: MotionDetector | None = None,
    ) -> None:
        for name, value in (("minFps", min_fps), ("maxFps", max_fps)):
            if not (math.isfinite(value) and 0 < value <= 240):
                raise ValueError(f"{name} must be > 0 and <= 240 frames per second, got {value}")
        if min_fps > max_fps:
            raise ValueError(f"minFps ({min_fps}) must not exceed maxFps ({max_fps})")
        _check_threshold(threshold)
        if decay_seconds <= 0:
            raise ValueError(f"decay_seconds must be > 0, got {decay_seconds}")
        self.min_fps = min_fps
        self.max_fps = max_fps
        self.threshold = threshold
        self.decay_seconds = decay_seconds
        self.detector = detector or MotionDetector()
        self.activity = 0.0
        """0 (still) .. 1 (motion at the threshold or more)."""
        self._last_seen: float | None = None
        self._credit = 0.0

    @property
    def rate(self) -> float:
        """Frames per second analysed at the current activity."""
        return self.min_fps + (self.max_fps - self.min_fps) * self.activity

    def __call__(self, frame: Frame) -> bool:
        now = frame.capture_mono
        score = self.detector.score(frame.image)
        if self._last_seen is None:  # the first frame: analyse it, start earning from here
            self._last_seen = now
            return True
        elapsed = max(0.0, now - self._last_seen)
        self._last_seen = now
        self.activity *= 0.5 ** (elapsed / self.decay_seconds)
        if score is not None:
            self.activity = max(self.activity, min(1.0, score / self.threshold))
        earned = elapsed * self.rate
        self._credit += min(earned, 1.0)
        take = self._credit >= 1.0 - 1e-9  # float sums of 1/fps land a hair below 1
        if take:
            self._credit -= 1.0
        if earned > 1.0:  # a gap, or a rate above the camera's: the schedule restarts here
            self._credit = 0.0
        return take

    def reset(self) -> None:
        self.detector.reset()
        self.activity = 0.0
        self._last_seen = None
        self._credit = 0.0


class KeyframeSampler:
    """Analyse only key frames (I/IDR): no decoding dependence on skipped frames, and the
    cheapest rate a camera offers, at its GOP length."""

    def __call__(self, frame: Frame) -> bool:
        return frame.key_frame

    def reset(self) -> None:
        pass


def build_sampler(sampling: Sampling) -> Sampler:
    """The sampler for a camera's ``spec.sampling``; ValueError says what is allowed."""
    mode = sampling.mode
    if mode not in MODES:
        raise ValueError(f"sampling mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    if sampling.every_n is not None and mode != "everyN":
        raise ValueError("sampling everyN is allowed with mode everyN only")
    if sampling.motion_threshold is not None and mode not in ("motion", "adaptive"):
        raise ValueError("sampling motionThreshold is allowed with modes motion and adaptive only")
    if (sampling.min_fps is not None or sampling.max_fps is not None) and mode != "adaptive":
        raise ValueError("sampling minFps/maxFps are allowed with mode adaptive only")
    threshold = sampling.motion_threshold
    if threshold is None:
        threshold = DEFAULT_MOTION_THRESHOLD
    if mode == "everyN":
        if sampling.every_n is None:
            raise ValueError("sampling mode everyN needs everyN (an integer from 1 to 1000)")
        return EveryNSampler(sampling.every_n)
    if mode == "motion":
        return MotionSampler(threshold)
    if mode == "adaptive":
        min_fps, max_fps = sampling.min_fps, sampling.max_fps
        if max_fps is None:
            max_fps = DEFAULT_MAX_FPS if min_fps is None else max(DEFAULT_MAX_FPS, min_fps)
        if min_fps is None:
            min_fps = min(DEFAULT_MIN_FPS, max_fps)
        return AdaptiveSampler(min_fps, max_fps, threshold)
    if mode == "keyframes":
        return KeyframeSampler()
    return AllSampler()


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0 < threshold <= 1):
        raise ValueError(
            f"motionThreshold is a fraction of changed pixels, > 0 and <= 1; got {threshold}"
        )
