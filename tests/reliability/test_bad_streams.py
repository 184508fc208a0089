"""Cameras that misbehave, read by the real capture (PyAV/FFmpeg) beside a good camera.

A camera that sends garbage over TCP, an RTSP path whose RTP carries garbage (valid RTP
headers, random H.264 payloads: the media server then answers 503), a camera that
accepts TCP and never answers, and a stream whose resolution changes mid-way. What a user
relies on: the bad camera says what is wrong (``last_error``, ``kubevision_camera_up`` 0),
keeps retrying with backoff (not in a hot loop), and the other cameras keep flowing. (A
truncated file is covered in tests/integration/test_capture.py.)
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevision.api.camera import Sampling
from kubevision.api.worker_config import CameraAssignment
from kubevision.worker.capture import Backoff, CameraStream, CaptureOptions, Frame, StreamState
from kubevision.worker.metrics import WorkerMetrics
from tests.assets import require
from tests.envtest.poll import wait_for
from tests.envtest.rtsp import RtspServer

PIPELINE = "bad-streams"
RETRY = Backoff(base=0.2, cap=1.0, jitter=0.2)
TIMEOUT_SECONDS = 2
CAR_SPROP = "Z0KAFpZUBgG9NQYGBkAAAAMAQAAABmE=,aM41IA=="
"""The car video's SPS/PPS: the server negotiates H.264 and then relays the garbage."""
"""The bad cameras' ``timeoutSeconds``: how long a silent source is waited for."""


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(PIPELINE)


@pytest.fixture
def opened(metrics: WorkerMetrics) -> Iterator[dict[str, CameraStream]]:
    """name -> stream, for ``open_camera``; every one stopped afterwards."""
    streams: dict[str, CameraStream] = {}
    yield streams
    for stream in streams.values():
        stream.stop()


def open_camera(
    opened: dict[str, CameraStream], metrics: WorkerMetrics, name: str, url: str, **options: Any
) -> CameraStream:
    camera = CameraAssignment(
        name=name, url=url, timeout_seconds=TIMEOUT_SECONDS, fps=12.5, sampling=Sampling(),
        priority=100,
    )  # fmt: skip
    stream = CameraStream(
        camera, metrics.camera(name), CaptureOptions(backoff=RETRY, **options),
        rng=random.Random(3),
    )  # fmt: skip
    opened[name] = stream
    return stream.start()


def value(metrics: WorkerMetrics, name: str, camera: str) -> float:
    found = metrics.registry.get_sample_value(name, {"pipeline": PIPELINE, "camera": camera})
    return 0.0 if found is None else found


def frames_after(stream: CameraStream, after: int, count: int = 10) -> Frame:
    """Wait until ``count`` frames newer than index ``after`` were decoded; the newest."""
    wait_for(lambda: stream.last_index >= after + count, timeout=30, what=f"{stream.name} frames")
    frame = stream.get(timeout=5)
    assert frame is not None
    return frame


class _Listener:
    """A TCP server on 127.0.0.1 that does ``serve(conn)`` for every connection, in threads."""

    def __init__(self, serve: type[_Garbage] | type[_Silent]) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve(conn, self._stop).run, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


class _Garbage:
    """Answers a connection with random bytes until the client hangs up."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self._conn, self._stop, self._rng = conn, stop, random.Random(1)

    def run(self) -> None:
        with self._conn:
            while not self._stop.wait(0.01):
                try:
                    self._conn.sendall(self._rng.randbytes(4096))
                except OSError:
                    return


class _Silent:
    """Accepts a connection and never answers (a hung camera firmware)."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self._conn, self._stop = conn, stop

    def run(self) -> None:
        with self._conn:
            self._stop.wait()


def _send_garbage_rtp(port: int, stop: threading.Event) -> None:
    """Valid RTP headers (H.264 payload type 96, 25 packets/s) around random payloads."""
    rng = random.Random(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        seq = 0
        while not stop.wait(0.04):
            header = struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, seq * 3600, 0x4B56)
            udp.sendto(header + rng.randbytes(rng.randint(20, 1200)), ("127.0.0.1", port))
            seq += 1


@pytest.fixture
def good(opened: dict[str, CameraStream], metrics: WorkerMetrics) -> CameraStream:
    """A camera that works: the car video as a looping file at its own frame rate."""
    return open_camera(opened, metrics, "good", f"file://{require('videos/car-detection.mp4')}")


def assert_fails_alone_and_retries(
    bad: CameraStream, good: CameraStream, metrics: WorkerMetrics, error: str
) -> None:
    """The bad camera reports ``error``, stays down, retries with backoff; good flows."""
    wait_for(lambda: value(metrics, "kubevision_camera_reconnects_total", bad.name) >= 3,
             timeout=60, what=f"{bad.name} to retry 3 times")  # fmt: skip
    assert error in str(bad.last_error), bad.last_error
    assert bad.state in (StreamState.BACKOFF, StreamState.CONNECTING)
    assert value(metrics, "kubevision_camera_up", bad.name) == 0
    # backoff: after 3 retries the delays are >= 0.2 + 0.4 + 0.8 s, never a hot loop
    retries = value(metrics, "kubevision_camera_reconnects_total", bad.name)
    frame = frames_after(good, good.last_index)
    assert value(metrics, "kubevision_camera_reconnects_total", bad.name) <= retries + 10
    assert good.state is StreamState.STREAMING
    assert good.last_error is None
    assert frame.image.shape == (432, 768, 3)
    assert value(metrics, "kubevision_camera_up", "good") == 1


@pytest.mark.parametrize(
    ("scheme", "error"),
    [
        ("rtsp", "Invalid data found when processing input"),
        ("http", "Invalid data found when processing input"),
    ],
)
def test_a_camera_sending_garbage_over_tcp_fails_alone(
    opened: dict[str, CameraStream],
    metrics: WorkerMetrics,
    good: CameraStream,
    scheme: str,
    error: str,
) -> None:
    server = _Listener(_Garbage)
    try:
        bad = open_camera(opened, metrics, "garbage", f"{scheme}://127.0.0.1:{server.port}/x")
        assert_fails_alone_and_retries(bad, good, metrics, error)
        assert server.connections >= 3
    finally:
        server.close()


def test_a_camera_that_accepts_tcp_and_never_answers_times_out_alone(
    opened: dict[str, CameraStream], metrics: WorkerMetrics, good: CameraStream
) -> None:
    server = _Listener(_Silent)
    try:
        bad = open_camera(opened, metrics, "silent", f"rtsp://127.0.0.1:{server.port}/x")
        assert_fails_alone_and_retries(bad, good, metrics, f"no data for {TIMEOUT_SECONDS}.")
    finally:
        server.close()


def test_an_rtsp_path_whose_rtp_is_garbage_fails_alone(
    opened: dict[str, CameraStream], metrics: WorkerMetrics, good: CameraStream, tmp_path: Path
) -> None:
    stop = threading.Event()
    with RtspServer(tmp_path) as server:
        udp_port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]
        threading.Thread(target=_send_garbage_rtp, args=(udp_port, stop), daemon=True).start()
        try:
            server.mount("junk", udp_port, sprop=CAR_SPROP)
            bad = open_camera(opened, metrics, "junk", server.url("junk"))
            # GStreamer cannot parse the relayed H.264, so the path is never ready: 503
            assert_fails_alone_and_retries(bad, good, metrics, "Server returned 5XX")
            assert "can't prepare media" in server.log_path.read_text()
        finally:
            stop.set()


def test_a_stream_that_changes_resolution_mid_way_keeps_decoding(
    opened: dict[str, CameraStream], metrics: WorkerMetrics, tmp_path: Path
) -> None:
    """Two H.264 segments (320x240 then 640x360) in one MPEG-TS file, as a camera whose
    operator changes its resolution: every frame comes out, each at its own size."""
    parts = []
    for i, size in enumerate(("320x240", "640x360")):
        part = tmp_path / f"part{i}.ts"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
             "-i", f"testsrc=size={size}:rate=10:duration=2", "-c:v", "libx264", "-g", "10",
             "-pix_fmt", "yuv420p", "-f", "mpegts", str(part)],
            check=True,
        )  # fmt: skip
        parts.append(part.read_bytes())
    video = tmp_path / "two-sizes.ts"
    video.write_bytes(b"".join(parts))
    stream = open_camera(
        opened, metrics, "resize", f"file://{video}", buffer_size=100, loop=False, realtime=False
    )
    wait_for(lambda: stream.state is StreamState.FINISHED, timeout=30, what="the file's end")
    shapes = []
    while (frame := stream.get(timeout=0)) is not None:
        shapes.append(frame.image.shape)
    assert shapes == [(240, 320, 3)] * 20 + [(360, 640, 3)] * 20
    assert stream.last_error is None
