"""CameraStream against real sources: the sample video as a file, a corrupt file, a closed
port, a socket that never answers, and a real RTSP server fed by ffmpeg that is frozen,
killed and restarted under the reader. Metrics are read from the worker's registry."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import torch

from kubevision.api.camera import Sampling
from kubevision.api.worker_config import CameraAssignment, CredentialEnv
from kubevision.worker import capture as capture_module
from kubevision.worker.capture import (
    Backoff,
    CameraStream,
    CaptureOptions,
    Frame,
    Redactor,
    StreamState,
)
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.nvdec import nvdec_unavailable_reason
from kubevision.worker.sampling import EveryNSampler, Sampler
from tests import hardware
from tests.assets import require
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for
from tests.envtest.rtsp import Credentials, RtspServer

PIPELINE = "capture-test"
CAR_FRAMES = 377  # car-detection.mp4: 768x432, 12.5 fps, a key frame every 60 frames
CAR_SHAPE = (432, 768, 3)
CAR_PTS_STEP = 2000  # 1/12.5 s in its 1/25000 time base
FAST_RETRY = Backoff(base=0.05, cap=0.2, jitter=0.5)
SLOW_RETRY = Backoff(base=30.0, cap=30.0, jitter=0.0)  # holds a failed camera in backoff


@pytest.fixture
def car_video() -> Path:
    return require("videos/car-detection.mp4")


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(PIPELINE)


@pytest.fixture
def streams() -> Iterator[list[CameraStream]]:
    """Streams a test starts; all stopped afterwards, whatever happened."""
    started: list[CameraStream] = []
    yield started
    for stream in started:
        stream.stop()


@pytest.fixture
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("ffmpeg is not installed (make system-packages)")
    return path


def open_stream(
    streams: list[CameraStream],
    metrics: WorkerMetrics,
    name: str,
    url: str,
    *,
    timeout_seconds: int = 5,
    credentials: CredentialEnv | None = None,
    sampler: Sampler | None = None,
    **options: Any,
) -> CameraStream:
    camera = CameraAssignment(
        name=name,
        url=url,
        timeout_seconds=timeout_seconds,
        fps=12.5,
        sampling=Sampling(),
        priority=100,
        credentials=credentials,
    )
    options.setdefault("backoff", FAST_RETRY)
    stream = CameraStream(
        camera, metrics.camera(name), CaptureOptions(**options), sampler, rng=random.Random(7)
    )
    streams.append(stream)
    return stream.start()


def sample(metrics: WorkerMetrics, name: str, camera: str) -> float:
    value = metrics.registry.get_sample_value(name, {"pipeline": PIPELINE, "camera": camera})
    return 0.0 if value is None else value


def up(metrics: WorkerMetrics, camera: str) -> float:
    return sample(metrics, "kubevision_camera_up", camera)


def reconnects(metrics: WorkerMetrics, camera: str) -> float:
    return sample(metrics, "kubevision_camera_reconnects_total", camera)


def dropped(metrics: WorkerMetrics, camera: str) -> float:
    return metrics.frames_dropped_total(camera)


def next_frame(stream: CameraStream, after: int = -1, timeout: float = 20.0) -> Frame:
    """The first frame with an index above ``after`` (what a consumer sees next)."""

    def newer() -> Frame | None:
        frame = stream.get(timeout=0.5)
        return frame if frame is not None and frame.index > after else None

    return wait_for(newer, timeout=timeout, what=f"a frame of {stream.name} after #{after}")


# -- policy pieces -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    policy = Backoff(base=0.5, cap=4.0, jitter=0.25)
    rng = random.Random(1)
    for attempt, expected in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert expected <= min(delays)
        assert max(delays) <= expected * 1.25
        assert max(delays) - min(delays) > expected * 0.1, "jitter spreads retries"
    assert policy.delay(10_000, rng) <= 5.0
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=2, cap=1)
    with pytest.raises(ValueError, match="jitter is a fraction"):
        Backoff(jitter=2)


def test_redactor_hides_userinfo_and_secret_values() -> None:
    redact = Redactor(["kv-user", "p@ss:w/rd"])
    text = f"failed: 'rtsp://kv-user:{quote('p@ss:w/rd', safe='')}@cam:554/x' p@ss:w/rd"
    assert redact(text) == "failed: 'rtsp://***@cam:554/x' ***"


# -- file sources ------------------------------------------------------------------------------


def test_file_decodes_every_frame_then_finishes(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    stream = open_stream(
        streams, metrics, "car", f"file://{car_video}",
        buffer_size=CAR_FRAMES + 10, loop=False, realtime=False,
    )  # fmt: skip
    wait_for(lambda: stream.state is StreamState.FINISHED, timeout=30, what="the file's end")
    frames = []
    while (frame := stream.get(timeout=0)) is not None:
        frames.append(frame)

    assert [f.index for f in frames] == list(range(CAR_FRAMES))
    assert {f.image.shape for f in frames} == {CAR_SHAPE}
    assert all(f.camera == "car" and f.image.dtype.name == "uint8" for f in frames)
    assert [f.pts for f in frames] == [i * CAR_PTS_STEP for i in range(CAR_FRAMES)]
    assert [f.index for f in frames if f.key_frame] == list(range(0, CAR_FRAMES, 60))
    monos = [f.capture_mono for f in frames]
    walls = [f.capture_wall for f in frames]
    assert monos == sorted(monos)
    assert monos[0] < monos[-1]
    assert walls == sorted(walls)
    assert abs(walls[0] - time.time()) < 60
    assert stream.get(timeout=5) is None, "a finished stream returns None at once"
    assert up(metrics, "car") == 0
    assert dropped(metrics, "car") == 0
    assert stream.last_error is None


def test_file_loops_with_continuing_indexes(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    stream = open_stream(streams, metrics, "car", f"file://{car_video}", realtime=False)
    seen: list[Frame] = []

    def third_pass() -> bool:
        frame = stream.get(timeout=1)
        if frame is not None:
            seen.append(frame)
        return bool(seen) and seen[-1].index >= 2 * CAR_FRAMES

    wait_for(third_pass, timeout=30, what="the third pass over the file")
    # the index keeps counting while pts start again at each pass
    assert all(f.pts == (f.index % CAR_FRAMES) * CAR_PTS_STEP for f in seen)
    assert stream.state is StreamState.STREAMING
    assert up(metrics, "car") == 1
    assert reconnects(metrics, "car") == 0, "a loop is not a reconnect"


def test_a_paced_file_sends_packets_on_the_stream_clock_and_stamps_their_arrival(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    """A file read in real time acts as a camera: packet k is sent k / fps after the first,
    and its frame carries that moment (before decode), so latency includes decoding."""
    count = 20
    started = time.monotonic()
    stream = open_stream(
        streams, metrics, "car", f"file://{car_video}", buffer_size=count + 5, loop=False,
        realtime=True,
    )  # fmt: skip
    wait_for(lambda: stream.pending >= count, timeout=30, what=f"{count} paced frames")
    frames = [stream.get(timeout=0) for _ in range(count)]

    stamps = [f.capture_mono for f in frames if f is not None]
    steps = np.diff(stamps)
    period = CAR_PTS_STEP / 25000  # 12.5 fps
    assert np.allclose(steps, period, atol=1e-6), "stamps follow the stream clock exactly"
    assert time.monotonic() - started >= (count - 1) * period, "not sent faster than real time"
    assert stamps[0] >= started


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    """A file plays at its own 12.5 fps (like a camera); the consumer takes a frame only after
    at least three newer ones were decoded, so each one it gets replaced older ones."""
    stream = open_stream(streams, metrics, "car", f"file://{car_video}", buffer_size=1)

    def drops_reach(count: float) -> Callable[[], bool]:
        return lambda: dropped(metrics, "car") >= count

    consumed = [next_frame(stream)]
    for _ in range(4):
        wait_for(drops_reach(dropped(metrics, "car") + 3), timeout=10, what="3 more drops")
        newest_decoded = stream.last_index
        frame = stream.get(timeout=1)
        assert frame is not None
        assert frame.index >= newest_decoded, "buffer size 1 always holds the newest frame"
        assert frame.index >= consumed[-1].index + 4, "the frames in between were dropped"
        consumed.append(frame)

    fps = wait_for(
        lambda: (v := sample(metrics, "kubevision_stream_fps", "car")) > 11 and v,
        timeout=10,
        what="the fps moving average to settle",
    )
    assert fps == pytest.approx(12.5, abs=1.0)
    stream.stop()
    leftover = stream.pending
    assert leftover <= 1
    # every decoded frame was either consumed, dropped, or is still in the buffer
    assert stream.last_index + 1 == len(consumed) + dropped(metrics, "car") + leftover


def test_sampling_happens_before_the_buffer_so_only_wanted_frames_count_as_dropped(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    """With every third frame wanted and a consumer slower than that, the buffer holds only
    sampled frames: the others are counted as skipped, never as dropped, so the drop rate the
    autoscaler reads says how many *wanted* frames were lost (frame skipping lowers it)."""
    stream = open_stream(
        streams, metrics, "car", f"file://{car_video}", buffer_size=1, sampler=EveryNSampler(3)
    )
    consumed = [next_frame(stream)]
    for _ in range(3):
        wait_for(
            lambda: dropped(metrics, "car") >= len(consumed) + 1,
            timeout=20,
            what="a wanted frame to be dropped",
        )
        frame = stream.get(timeout=1)
        assert frame is not None
        consumed.append(frame)
    stream.stop()

    assert all(f.index % 3 == 0 for f in consumed), "only sampled frames reach the consumer"
    decoded = stream.last_index + 1
    skipped = sample(metrics, "kubevision_frames_skipped_total", "car")
    assert skipped == decoded - (decoded + 2) // 3, "every unwanted frame counts as skipped"
    wanted = decoded - skipped
    assert wanted == len(consumed) + dropped(metrics, "car") + stream.pending


def test_a_replaced_stream_leaves_its_successor_up(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    """A changed assignment starts the camera's new stream before the old one stops (make
    before break); stopping the old one must not mark the camera down under the new one."""
    old = open_stream(streams, metrics, "car", f"file://{car_video}")
    next_frame(old)
    new = open_stream(streams, metrics, "car", f"file://{car_video}")
    next_frame(new)
    old.stop()
    assert up(metrics, "car") == 1
    new.stop()
    assert up(metrics, "car") == 0


def test_corrupt_files_fail_alone_with_a_clear_error(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(random.Random(0).randbytes(200_000))
    truncated = tmp_path / "truncated.mp4"
    data = car_video.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    expected = {
        "garbage": "open failed: [Errno 1094995529] Invalid data found when processing input",
        "truncated": "the file ended after 136 of its 377 frames: truncated or corrupt",
        "missing": "open failed: [Errno 2] No such file or directory",
    }
    bad = {
        name: open_stream(
            streams, metrics, name, f"file://{path}", realtime=False, backoff=SLOW_RETRY
        )
        for name, path in [
            ("garbage", garbage),
            ("truncated", truncated),
            ("missing", tmp_path / "missing.mp4"),
        ]
    }
    good = open_stream(streams, metrics, "good", f"file://{car_video}")

    wait_for(
        lambda: all(s.state is StreamState.BACKOFF for s in bad.values()),
        timeout=15,
        what="the bad files to fail",
    )
    for name, stream in bad.items():
        assert expected[name] in str(stream.last_error)
        assert up(metrics, name) == 0

    frame = next_frame(good)
    for _ in range(5):
        frame = next_frame(good, after=frame.index)
    assert frame.image.shape == CAR_SHAPE
    assert good.state is StreamState.STREAMING
    assert good.last_error is None
    assert up(metrics, "good") == 1


# -- network sources ---------------------------------------------------------------------------


def test_unreachable_url_backs_off_and_counts_reconnects(
    streams: list[CameraStream], metrics: WorkerMetrics
) -> None:
    stream = open_stream(streams, metrics, "gone", f"rtsp://127.0.0.1:{free_port()}/x")
    wait_for(lambda: reconnects(metrics, "gone") >= 4, timeout=15, what="4 reconnect attempts")
    assert stream.state.value in ("backoff", "connecting")  # retrying
    assert "Connection refused" in str(stream.last_error)
    assert up(metrics, "gone") == 0
    assert stream.get(timeout=0.1) is None
    started = time.monotonic()
    stream.stop()
    assert time.monotonic() - started < 1.0
    assert stream.state is StreamState.STOPPED


def test_silent_server_times_out_and_stop_does_not_hang(
    streams: list[CameraStream], metrics: WorkerMetrics
) -> None:
    """A socket that accepts but never answers: only the timeout ends the open."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        stream = open_stream(
            streams, metrics, "silent", f"rtsp://127.0.0.1:{port}/x", timeout_seconds=1
        )
        wait_for(lambda: stream.last_error, timeout=10, what="the open to time out")
        assert stream.last_error is not None
        assert stream.last_error.startswith("open timed out: no data for 1.")
        wait_for(lambda: stream.state is StreamState.CONNECTING, timeout=5, what="a retry")
        started = time.monotonic()
        stream.stop()  # blocked inside av.open right now
        assert time.monotonic() - started < 2.5
        assert up(metrics, "silent") == 0


@pytest.fixture
def rtsp(tmp_path: Path, ffmpeg: str, car_video: Path) -> Iterator[RtspServer]:
    """The RTSP server with ffmpeg publishing the car video on path ``cam``."""
    with RtspServer(tmp_path) as server:
        server.publish("cam", car_video)
        yield server


def test_rtsp_stream_survives_server_stop_and_restart(
    rtsp: RtspServer, streams: list[CameraStream], metrics: WorkerMetrics
) -> None:
    stream = open_stream(streams, metrics, "rtsp", rtsp.url("cam"), timeout_seconds=3)
    first = next_frame(stream)
    assert first.image.shape == CAR_SHAPE
    assert stream.state is StreamState.STREAMING
    assert up(metrics, "rtsp") == 1

    rtsp.stop()  # the server dies mid-stream
    wait_for(lambda: up(metrics, "rtsp") == 0, timeout=10, what="camera_up to drop")
    wait_for(lambda: reconnects(metrics, "rtsp") >= 2, timeout=10, what="reconnect attempts")
    assert stream.last_error is not None
    last_before = stream.last_index

    rtsp.restart()  # server and publisher come back
    again = next_frame(stream, after=last_before, timeout=30)
    assert again.image.shape == CAR_SHAPE
    wait_for(lambda: up(metrics, "rtsp") == 1, timeout=5, what="camera_up back to 1")
    assert stream.state is StreamState.STREAMING
    assert stream.last_error is None


def test_rtsp_read_timeout_when_the_server_hangs(
    rtsp: RtspServer, streams: list[CameraStream], metrics: WorkerMetrics
) -> None:
    stream = open_stream(streams, metrics, "rtsp", rtsp.url("cam"), timeout_seconds=2)
    next_frame(stream)
    rtsp.pause()  # the TCP connection stays open; no more data
    try:
        error = wait_for(lambda: stream.last_error, timeout=10, what="a read timeout")
        assert "timed out: no data for 2." in error
        assert up(metrics, "rtsp") == 0
        last_before = stream.last_index
    finally:
        rtsp.resume()
    next_frame(stream, after=last_before, timeout=30)
    wait_for(lambda: up(metrics, "rtsp") == 1, timeout=5, what="camera_up back to 1")


def test_rtsp_credentials_come_from_env_and_never_leak(
    streams: list[CameraStream],
    metrics: WorkerMetrics,
    tmp_path: Path,
    ffmpeg: str,
    car_video: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = "kv-reader", "s3cr3t:P@ss/wörd"
    reader = Credentials(user, password)
    with RtspServer(tmp_path, read=reader) as server:
        server.publish("cam", car_video)
        monkeypatch.setenv("CAM_USER", user)
        monkeypatch.setenv("CAM_PASS", password)
        monkeypatch.setenv("CAM_WRONG_PASS", "not-it")
        creds = CredentialEnv(username_env="CAM_USER", password_env="CAM_PASS")
        wrong = CredentialEnv(username_env="CAM_USER", password_env="CAM_WRONG_PASS")
        unset = CredentialEnv(username_env="CAM_USER", password_env="CAM_UNSET")
        good = open_stream(streams, metrics, "good", server.url("cam"), credentials=creds)
        no_path = open_stream(streams, metrics, "no-path", server.url("x"), credentials=creds)
        denied = open_stream(streams, metrics, "denied", server.url("cam"), credentials=wrong)
        no_env = open_stream(streams, metrics, "no-env", server.url("cam"), credentials=unset)

        assert next_frame(good).image.shape == CAR_SHAPE
        errors = {
            no_path: "404 Not Found",
            denied: "401 Unauthorized",
            no_env: "credentials env var CAM_UNSET is not set",
        }
        wait_for(lambda: all(s.last_error for s in errors), timeout=15, what="the errors")
        for stream, message in errors.items():
            assert message in str(stream.last_error)
        assert "rtsp://***@127.0.0.1" in (no_path.last_error or "")
        assert "reading path=cam" in server.log_path.read_text()  # the server accepted them
        for stream in streams:
            stream.stop()

    secrets = [password, quote(password, safe=""), quote(password), user]
    exposed = [repr(s) + str(s.last_error) for s in streams] + [caplog.text]
    assert "capture connected camera=good" in caplog.text
    for text in exposed:
        for secret in secrets:
            assert secret not in text


# -- decoders ----------------------------------------------------------------------------------


def decoder_series(metrics: WorkerMetrics, camera: str) -> dict[str, float]:
    """kubevision_camera_decoder's series of one camera: {decoder: value}."""
    return {
        sample.labels["decoder"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "kubevision_camera_decoder"
        for sample in family.samples
        if sample.labels["camera"] == camera
    }


def test_auto_decoder_without_nvdec_decodes_on_cpu_and_says_so(
    streams: list[CameraStream],
    metrics: WorkerMetrics,
    car_video: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reason = nvdec_unavailable_reason(0)
    if reason is None:
        hardware.skip_without("nvdec", "this machine has NVDEC: auto picks it (see the test below)")
    caplog.set_level(logging.INFO, logger="kubevision.worker.capture")
    capture_module._announce_fallback.cache_clear()
    auto = [
        open_stream(streams, metrics, name, f"file://{car_video}", realtime=False)
        for name in ("car-a", "car-b")
    ]
    explicit = open_stream(streams, metrics, "car-nvdec", f"file://{car_video}", decoder="nvdec")

    for stream in [*auto, explicit]:
        frame = next_frame(stream)
        assert stream.decoder == "cpu"
        assert stream.decoder_fallback_reason == reason
        assert isinstance(frame.pixels, np.ndarray)
        assert frame.device_image is None
        assert frame.image is frame.pixels
        assert frame.image.shape == CAR_SHAPE
        assert decoder_series(metrics, stream.name) == {"cpu": 1.0}
    fallbacks = [r for r in caplog.records if r.getMessage().startswith("decoding on CPU")]
    assert [(r.levelno, reason in r.getMessage()) for r in fallbacks] == [
        (logging.INFO, True),  # once for both "auto" cameras
        (logging.WARNING, True),  # "nvdec" was asked for explicitly
    ]
    auto[0].stop()
    assert decoder_series(metrics, "car-a") == {}, "a stopped camera leaves no decoder series"


def test_cpu_decoder_is_taken_as_asked(
    streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    stream = open_stream(streams, metrics, "car", f"file://{car_video}", decoder="cpu")
    assert next_frame(stream).image.shape == CAR_SHAPE
    assert (stream.decoder, stream.decoder_fallback_reason) == ("cpu", None)
    assert decoder_series(metrics, "car") == {"cpu": 1.0}


def test_a_frame_copies_gpu_pixels_to_the_host_once_on_demand() -> None:
    """``Frame.image`` is the host copy of a tensor frame, made on first use and kept."""
    pixels = torch.arange(2 * 3 * 3, dtype=torch.uint8).reshape(2, 3, 3)
    frame = Frame("cam", pixels, 0, pts=0, capture_wall=0.0, capture_mono=0.0)
    assert frame.device_image is pixels
    image = frame.image
    assert isinstance(image, np.ndarray)
    assert np.array_equal(image, pixels.numpy())
    assert frame.image is image


class CountingEvent:
    """Stands in for NVDEC's CUDA event (``Frame.ready``): counts the host waits on it."""

    def __init__(self) -> None:
        self.waits = 0

    def synchronize(self) -> None:
        self.waits += 1


def test_a_gpu_frame_waits_for_its_decoding_before_the_host_copy() -> None:
    """NVDEC frames are delivered before the GPU has finished them (no per-packet host
    synchronisation), so the host copy must wait for the decoder's event first, once."""
    pixels = torch.arange(2 * 3 * 3, dtype=torch.uint8).reshape(2, 3, 3)
    event = CountingEvent()
    frame = Frame("cam", pixels, 0, pts=0, capture_wall=0.0, capture_mono=0.0, ready=event)  # type: ignore[arg-type]
    assert np.array_equal(frame.image, pixels.numpy())
    assert frame.image is frame.image
    assert event.waits == 1


@pytest.fixture
def gpu() -> int:
    reason = nvdec_unavailable_reason(0)
    if reason is not None:
        hardware.skip_without("nvdec", f"NVDEC unavailable: {reason}")
    return 0


def test_nvdec_camera_loops_a_file_with_frames_in_gpu_memory(
    gpu: int, streams: list[CameraStream], metrics: WorkerMetrics, car_video: Path
) -> None:
    """The CPU tests' semantics (every frame, pts, key frames, loops with continuing
    indexes, no reconnects) with frames staying on the GPU until a host copy is asked for."""
    passes = 2 * CAR_FRAMES
    stream = open_stream(
        streams, metrics, "car", f"file://{car_video}",
        buffer_size=4 * passes, realtime=False, decoder="nvdec", gpu=gpu,
    )  # fmt: skip
    wait_for(lambda: stream.last_index >= passes, timeout=60, what="two passes over the file")
    assert stream.decoder == "nvdec"
    assert decoder_series(metrics, "car") == {"nvdec": 1.0}
    stream.stop()
    frames: list[Frame] = []
    while len(frames) < passes and (frame := stream.get(timeout=0)) is not None:
        frames.append(frame)

    assert [f.index for f in frames] == list(range(passes))
    assert [f.pts for f in frames] == [(i % CAR_FRAMES) * CAR_PTS_STEP for i in range(passes)]
    assert [f.index for f in frames if f.key_frame] == [
        i for i in range(passes) if i % CAR_FRAMES % 60 == 0
    ]
    device_image = frames[0].device_image
    assert device_image is not None
    assert device_image.device == torch.device("cuda", gpu)
    assert device_image.shape == CAR_SHAPE
    assert frames[0].image.shape == CAR_SHAPE
    assert reconnects(metrics, "car") == 0
