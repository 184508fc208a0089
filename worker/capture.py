"""Capture: one daemon thread per camera decodes its stream into a small latest-frame buffer.

The buffer never grows: when inference is slower than the camera, the oldest buffered frame
is replaced (counted in ``kubevision_frames_dropped``), so latency stays bounded by the buffer
(one frame by default) instead of building up. Each thread owns its connection and reconnects
on EOF, errors and timeouts with capped exponential backoff plus jitter; a camera that fails
shows it in ``state``, ``last_error`` and ``kubevision_camera_up`` without disturbing the
others.

Credentials are read from the environment variables the worker config names, put into the
URL only when opening it, and redacted from every log line, error message and repr.

PyAV demuxes every source; the packets are decoded by FFmpeg on the CPU or, where the machine
has it, by NVDEC on a GPU (:mod:`kubevision.worker.nvdec`): frames then stay in GPU memory
until a consumer asks for a host copy (:attr:`Frame.image`). Both decoders share the session,
reconnect and buffering logic above, so they behave the same apart from where pixels live.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from functools import cache, cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import av
import numpy as np
import numpy.typing as npt

from kubevision.api.camera import LAST_ERROR_MAX
from kubevision.api.worker_config import CameraAssignment
from kubevision.worker.metrics import CameraMetrics
from kubevision.worker.nvdec import (
    DECODER_CHOICES,
    DecoderChoice,
    DecoderDecision,
    DecoderName,
    NvdecDecoder,
    NvdecError,
    Picture,
    Pixels,
    VideoPacket,
    decide_decoder,
    order_after,
)

if TYPE_CHECKING:
    import torch

    from kubevision.worker.sampling import Sampler

log = logging.getLogger(__name__)

ThreadType = Literal["AUTO", "FRAME", "SLICE", "NONE"]
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"]*@")
_LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps")
_NETWORK_PROTOCOLS = {
    "rtsp": "tcp,udp,rtp",
    "rtsps": "tcp,udp,rtp,tls",
    "http": "http,tcp,crypto",
    "https": "http,https,tcp,tls,crypto",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmp,rtmps,tcp,tls",
}
"""FFmpeg protocols each camera scheme may open (``protocol_whitelist``): a stream can never
make FFmpeg read a local file or a pipe, e.g. through an HTTP redirect or an HLS playlist."""


class StreamState(StrEnum):
    """Where a camera's capture thread is."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    """The last attempt failed (see ``last_error``); waiting before the next one."""
    STOPPED = "stopped"
    FINISHED = "finished"
    """A file source reached its end and ``loop`` is off."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame, stamped when it came out of the decoder.

    ``capture_wall`` (``time.time()``) is for results and end-to-end latency across hosts;
    ``capture_mono`` (``time.monotonic()``) is for rates and intervals within this process.
    ``index`` counts decoded frames of this stream from 0 and keeps counting across
    reconnects and loops, so a gap means frames were dropped.
    """

    camera: str
    pixels: Pixels = field(repr=False)
    """(H, W, 3) uint8 BGR where the decoder left it: host memory (CPU) or GPU (NVDEC)."""
    index: int
    pts: int | None
    capture_wall: float
    capture_mono: float
    key_frame: bool = False
    ready: torch.cuda.Event | None = field(default=None, repr=False)
    """NVDEC's event for ``pixels`` (see :attr:`Picture.ready`); :meth:`CameraStream.get`
    orders the caller's CUDA stream after it."""

    @cached_property
    def image(self) -> npt.NDArray[np.uint8]:
        """(H, W, 3) uint8 BGR in host memory; a GPU frame is copied down on first use only,
        so frames that are dropped or consumed on the GPU never cost a copy."""
        if isinstance(self.pixels, np.ndarray):
            return self.pixels
        if self.ready is not None:
            self.ready.synchronize()  # any thread may ask, on any stream
        return cast("npt.NDArray[np.uint8]", self.pixels.cpu().numpy())

    @property
    def device_image(self) -> torch.Tensor | None:
        """The frame as a CUDA tensor when NVDEC decoded it (None for CPU-decoded frames),
        ready for work on the stream that was current where :meth:`CameraStream.get` was
        called (another stream must wait for :attr:`ready` first)."""
        return None if isinstance(self.pixels, np.ndarray) else self.pixels


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``min(cap, base * 2**n)``, then up to
    ``jitter`` times that added at random, so cameras that failed together spread out."""

    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter is a fraction in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        capped = min(self.cap, self.base * 2.0 ** min(attempt, 62))
        return capped * (1 + self.jitter * rng.random())


@dataclass(frozen=True)
class CaptureOptions:
    """How a camera is read; the defaults suit live cameras and the looping demo file."""

    buffer_size: int = 1
    """Frames kept for the consumer; 1 means it always gets the newest."""
    loop: bool = True
    """A file source starts again at its end (True) or finishes (False)."""
    realtime: bool | None = None
    """Pace decoding at the stream's frame rate; None: files yes (they act as a camera),
    live sources no (they arrive in real time anyway)."""
    backoff: Backoff = field(default_factory=Backoff)
    thread_type: ThreadType = "AUTO"
    """FFmpeg decoder threading; FRAME/AUTO add up to a frame per thread of latency."""
    fps_window: int = 25
    """Frames in the moving average behind ``kubevision_stream_fps``."""
    decoder: DecoderChoice = "auto"
    """Who decodes: ``auto`` picks NVDEC where the machine has it (see
    ``nvdec_unavailable_reason``), else the CPU; ``nvdec`` the same, but a fallback to the CPU
    is logged as a warning; ``cpu`` is FFmpeg only."""
    gpu: int = 0
    """CUDA device index NVDEC decodes on."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.fps_window < 2:
            raise ValueError(f"fps_window must be >= 2, got {self.fps_window}")
        if self.decoder not in DECODER_CHOICES:
            raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {self.decoder!r}")
        if self.gpu < 0:
            raise ValueError(f"gpu must be a device index >= 0, got {self.gpu}")


class CaptureError(Exception):
    """Why a camera stopped delivering frames; the message is already redacted."""


class PacketDecoder(Protocol):
    """Turns one stream's packets into BGR pictures (FFmpeg on the CPU, or NVDEC)."""

    def decode(self, packet: VideoPacket) -> list[Picture]:
        """Pictures this packet completes; the demuxer's final empty packet flushes."""
        ...

    def restart(self) -> None:
        """The container was sought back to the start: the next packet begins a new pass."""
        ...

    def streaming(self) -> AbstractContextManager[None]:
        """Held around a whole session on the capture thread (NVDEC: its CUDA stream)."""
        ...

    def close(self) -> None:
        """Release the decoder's resources."""
        ...


class CpuDecoder:
    """FFmpeg through PyAV, converting each frame to host BGR (swscale)."""

    def __init__(self, stream: av.VideoStream, thread_type: ThreadType) -> None:
        stream.codec_context.thread_type = thread_type

    def decode(self, packet: VideoPacket) -> list[Picture]:
        return [
            Picture(
                pixels=cast("npt.NDArray[np.uint8]", frame.to_ndarray(format="bgr24")),
                pts=frame.pts,
                time=frame.time,
                key_frame=bool(frame.key_frame),
            )
            for frame in packet.decode()
        ]

    def restart(self) -> None:
        """Nothing to do: seeking the container flushes FFmpeg's decoder."""

    def streaming(self) -> AbstractContextManager[None]:
        """Nothing to hold: FFmpeg keeps no per-thread state."""
        return nullcontext()

    def close(self) -> None:
        """Nothing to do: the codec context closes with its container."""


@cache
def _announce_fallback(requested: DecoderChoice, gpu: int, reason: str, level: int) -> None:
    """Log why cameras decode on the CPU once per process, not once per camera."""
    log.log(level, "decoding on CPU: NVDEC unavailable decoder=%s gpu=%d reason=%s",
            requested, gpu, reason)  # fmt: skip


@dataclass(frozen=True)
class _Target:
    """What ``av.open`` gets for one attempt (the url may hold credentials: never log it)."""

    url: str = field(repr=False)
    format: str | None
    options: dict[str, str]
    is_file: bool


class Redactor:
    """Removes credentials from text: URL userinfo and the secret values themselves."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for s in secrets if s for form in (s, quote(s, safe=""), quote(s))}
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _URL_USERINFO.sub(r"\1***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _PacketClock:
    """When a file's packets are due if a camera sent them: at their decode timestamps
    (presentation order would send a B-frame stream's packets out of order), from the first
    packet of a pass on. Packets without timestamps (the end-of-stream flush) are not paced."""

    def __init__(self, time_base: Fraction | None) -> None:
        self._tick = float(time_base) if time_base else None
        self._origin: tuple[float, float] | None = None  # (stream seconds, monotonic)

    def due(self, packet: VideoPacket) -> float | None:
        """The monotonic time ``packet`` is due, or None when it carries no timestamp."""
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None or self._tick is None:
            return None
        seconds = stamp * self._tick
        if self._origin is None:
            self._origin = (seconds, time.monotonic())
        return self._origin[1] + seconds - self._origin[0]


class CameraStream:
    """Decodes one camera in a daemon thread; the consumer calls :meth:`get`.

    Use as a context manager or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        camera: CameraAssignment,
        metrics: CameraMetrics,
        options: CaptureOptions | None = None,
        sampler: Sampler | None = None,
        *,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.camera = camera
        self.options = options or CaptureOptions()
        self._sampler = sampler
        """Chooses, on the capture thread, which decoded frames enter the latest-frame buffer:
        a frame the buffer then drops is one that was meant to be analysed."""
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._environ = os.environ if environ is None else environ
        scheme = urlsplit(camera.url).scheme.lower()
        if scheme not in (*_LIVE_SCHEMES, "file", "v4l2"):
            raise ValueError(f"camera {camera.name}: unsupported URL scheme {scheme!r}")
        if camera.credentials is not None and scheme not in _LIVE_SCHEMES:
            raise ValueError(f"camera {camera.name}: credentials apply to network sources only")
        self._scheme = scheme
        self._redact = Redactor()
        self._buffer: deque[Frame] = deque(maxlen=self.options.buffer_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = StreamState.STOPPED
        self._last_error: str | None = None
        self._next_index = 0
        self._last_wall = 0.0
        self._session_frames = 0
        self._arrivals: deque[float] = deque(maxlen=self.options.fps_window)
        self._decision = decide_decoder(self.options.decoder, self.options.gpu)
        if (level := self._decision.log_level) is not None:
            reason = str(self._decision.fallback_reason)
            _announce_fallback(self.options.decoder, self.options.gpu, reason, level)
        self._metrics.set_decoder(self._decision.decoder)

    # -- consumer side ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def last_error(self) -> str | None:
        """Why the camera is not streaming now (redacted); None while it streams."""
        return self._last_error

    @property
    def pending(self) -> int:
        """Frames buffered for the consumer right now (for ``kubevision_queue_depth``)."""
        return len(self._buffer)

    @property
    def decoder(self) -> DecoderName:
        """Which decoder this camera uses now: "nvdec" or "cpu"."""
        return self._decision.decoder

    @property
    def decoder_fallback_reason(self) -> str | None:
        """Why it decodes on the CPU although NVDEC was asked for ("auto" or "nvdec")."""
        return self._decision.fallback_reason

    @property
    def last_index(self) -> int:
        """Index of the newest frame decoded so far (-1 before the first)."""
        return self._next_index - 1

    def start(self) -> CameraStream:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.name} already started")
        self._state = StreamState.CONNECTING
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest buffered frame (the newest with buffer size 1), waiting up to ``timeout``
        seconds; None on timeout or once the stream is stopped/finished and drained.

        An NVDEC frame is handed over without waiting for the GPU: the caller's current CUDA
        stream is made to wait for its decoding, so work queued there afterwards sees it whole.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._done(), timeout)
            frame = self._buffer.popleft() if self._buffer else None
        if frame is not None and frame.ready is not None:
            order_after(cast("torch.Tensor", frame.pixels), frame.ready)
        return frame

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; returns within ``timeout`` (default: the read timeout + 1 s) even
        if FFmpeg is stuck in a read, leaving the daemon thread to end on its own."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.camera.timeout_seconds + 1.0 if timeout is None else timeout)
            if thread.is_alive() and timeout != 0:  # 0: the caller chose not to wait
                log.warning("capture thread still blocked in a read camera=%s", self.name)
        self._set_state(StreamState.STOPPED)
        self._mark_down()
        self._metrics.set_decoder(None)

    def __enter__(self) -> CameraStream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"CameraStream(camera={self.name!r}, url={self._redact(self.camera.url)!r}, "
            f"state={self._state.value!r})"
        )

    # -- capture thread ---------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # consecutive attempts that delivered no frame
        while not self._stop.is_set():
            if failures:
                self._metrics.reconnects.inc()
            self._set_state(StreamState.CONNECTING)
            self._session_frames = 0
            try:
                self._session()
            except CaptureError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one camera's failure must never end its thread
                error = f"unexpected {type(exc).__name__}: {self._redact(str(exc))}"
            else:  # only a stop or a file's end (loop off) ends a session without an error
                if not self._stop.is_set():
                    log.info("capture finished camera=%s frames=%d", self.name, self._next_index)
                    self._set_state(StreamState.FINISHED)
                break
            if self._stop.is_set():
                break
            failures = 0 if self._session_frames else failures
            delay = self.options.backoff.delay(failures, self._rng)
            failures += 1
            self._fail(error, delay)
            self._stop.wait(delay)
        self._mark_down()
        with self._cond:
            if self._state is not StreamState.FINISHED:
                self._state = StreamState.STOPPED
            self._cond.notify_all()

    def _session(self) -> None:
        """Open the source and deliver frames until stop or, for a file, its end (loop off);
        anything else that ends it is a :class:`CaptureError`."""
        target = self._target()
        timeout = float(self.camera.timeout_seconds)
        started = time.monotonic()
        try:
            container = av.open(
                target.url, format=target.format, options=target.options, timeout=(timeout, timeout)
            )
        except (av.FFmpegError, OSError) as exc:
            raise self._error("open", exc, time.monotonic() - started, timeout) from None
        with container:
            if not container.streams.video:
                raise CaptureError("the source has no video stream")
            stream = container.streams.video[0]
            decoder = self._open_decoder(stream)
            try:
                with decoder.streaming():
                    self._stream_session(container, stream, decoder, target, timeout)
            finally:
                decoder.close()

    def _open_decoder(self, stream: av.VideoStream) -> PacketDecoder:
        """NVDEC when chosen and it takes this stream; else, for good, FFmpeg on the CPU."""
        if self._decision.decoder == "nvdec":
            try:
                return NvdecDecoder(stream, self.options.gpu)
            except NvdecError as exc:
                self._use_cpu(str(exc))
        return CpuDecoder(stream, self.options.thread_type)

    def _use_cpu(self, reason: str) -> None:
        """NVDEC failed on this camera's stream (codec, profile, GPU): decode it on the CPU
        from now on rather than fail the same way at every reconnect."""
        reason = self._redact(reason)
        log.warning("nvdec cannot decode camera=%s, using the CPU: %s", self.name, reason)
        self._decision = DecoderDecision(self._decision.requested, "cpu", reason)
        self._metrics.set_decoder("cpu")

    def _stream_session(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        decoder: PacketDecoder,
        target: _Target,
        timeout: float,
    ) -> None:
        log.info(
            "capture connected camera=%s url=%s codec=%s size=%dx%d decoder=%s",
            self.name, self._redact(self.camera.url), stream.codec_context.name,
            stream.codec_context.width, stream.codec_context.height, self.decoder,
        )  # fmt: skip
        realtime = target.is_file if self.options.realtime is None else self.options.realtime
        while True:
            frames = self._read_until_eof(container, stream, decoder, realtime, timeout)
            if self._stop.is_set():
                return
            if not target.is_file:
                raise CaptureError("stream ended (EOF)")
            if frames == 0:
                raise CaptureError("the file has no decodable video frames")
            # Frame-threaded decoding swallows the error of a cut-off last packet, so a
            # truncated file would just look short: compare with what the container says.
            declared = stream.frames
            if declared and frames + max(2, declared // 100) < declared:
                raise CaptureError(
                    f"the file ended after {frames} of its {declared} frames: truncated or corrupt"
                )
            if not self.options.loop:
                return
            container.seek(0)  # cheaper than reopening
            try:
                decoder.restart()
            except NvdecError as exc:
                raise CaptureError(self._redact(str(exc))) from None

    def _read_until_eof(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        decoder: PacketDecoder,
        realtime: bool,
        timeout: float,
    ) -> int:
        """Demux and decode one pass; returns the frames delivered (early on stop).

        A frame is stamped with the moment its packet arrived, before decoding, so latency
        counts decode as a live camera's does. A paced file sends each packet at its decode
        timestamp (:class:`_PacketClock`) and stamps it with that moment even when the worker
        reads it late, so falling behind the camera shows as latency, not as a slower camera.
        ``kubevision_stage_latency_seconds{stage="decode"}`` times each packet to BGR frames
        (decode and colour conversion) on either decoder."""
        frames = 0
        clock = _PacketClock(stream.time_base) if realtime else None
        last_progress = time.monotonic()
        try:
            for packet in container.demux(stream):
                last_progress = time.monotonic()
                arrived = last_progress
                if clock is not None and (due := clock.due(packet)) is not None:
                    self._stop.wait(max(0.0, due - last_progress))
                    arrived = due
                if self._stop.is_set():
                    return frames
                started = time.perf_counter()
                pictures = decoder.decode(packet)
                self._metrics.decode.observe(time.perf_counter() - started)
                for decoded in pictures:
                    if self._stop.is_set():
                        return frames
                    self._deliver(decoded, arrived, first=self._session_frames == 0)
                    frames += 1
                    self._session_frames += 1
        except (av.FFmpegError, OSError, NvdecError) as exc:
            if isinstance(exc, NvdecError) and self._session_frames == 0:
                self._use_cpu(str(exc))  # the stream is one NVDEC cannot decode at all
            stalled = time.monotonic() - last_progress
            raise self._error(
                f"read after {self._session_frames} frames", exc, stalled, timeout
            ) from None
        return frames

    def _deliver(self, decoded: Picture, arrived: float, *, first: bool) -> None:
        """Hand a decoded frame to the consumer: sampled first (the sampler starts afresh on
        each connection), then into the latest-frame buffer, which drops the oldest.
        ``arrived`` is the monotonic time its packet came in. Its wall-clock time never goes
        back: the two clocks are read one after the other, so their difference jitters by
        however long the thread waits between the reads, and the frames of one packet (same
        ``arrived``) would otherwise get stamps that step back by that much."""
        wall = max(arrived + (time.time() - time.monotonic()), self._last_wall)
        self._last_wall = wall
        frame = Frame(
            camera=self.name,
            pixels=decoded.pixels,
            index=self._next_index,
            pts=decoded.pts,
            capture_wall=wall,
            capture_mono=arrived,
            key_frame=decoded.key_frame,
            ready=decoded.ready,
        )
        self._next_index += 1
        self._count_arrival(arrived, wall)
        sampled = self._sample(frame, first=first)
        with self._cond:
            if sampled:
                if len(self._buffer) == self._buffer.maxlen:
                    self._metrics.dropped("buffer_full")
                self._buffer.append(frame)
            if first:
                self._state = StreamState.STREAMING
                self._last_error = None
            self._cond.notify()
        if first:
            self._metrics.set_health(True, None)
            log.info("capture streaming camera=%s", self.name)

    def _sample(self, frame: Frame, *, first: bool) -> bool:
        """Whether the sampler wants the frame (counted as skipped if not); without a sampler
        the consumer gets every frame."""
        if self._sampler is None:
            return True
        if first:
            self._sampler.reset()  # the previous connection's image means nothing now
        if self._sampler(frame):
            return True
        self._metrics.skipped.inc()
        return False

    def _count_arrival(self, mono: float, wall: float) -> None:
        """``kubevision_stream_fps``: decoded frames per second, sampled or not; and the time of
        the newest frame."""
        self._metrics.last_frame.set(wall)
        self._arrivals.append(mono)
        if len(self._arrivals) >= 2 and mono > self._arrivals[0]:
            self._metrics.fps.set((len(self._arrivals) - 1) / (mono - self._arrivals[0]))

    def _target(self) -> _Target:
        """The URL, format and FFmpeg options for one attempt, credentials read now."""
        url, scheme = self.camera.url, self._scheme
        timeout_us = str(self.camera.timeout_seconds * 1_000_000)
        if scheme == "file":
            # "file:" pins FFmpeg's file protocol: a path such as "concat:a|b" or "pipe:0"
            # would otherwise name another protocol
            path = unquote(url.split("://", 1)[1])
            return _Target(f"file:{path}", None, {"protocol_whitelist": "file"}, is_file=True)
        if scheme == "v4l2":
            return _Target(unquote(url.split("://", 1)[1]), "v4l2", {}, is_file=False)
        if self.camera.credentials is not None:
            url = self._with_credentials(url)
        options: dict[str, str]
        if scheme in ("rtsp", "rtsps"):
            # FFmpeg >= 5: the RTSP "timeout" is the socket I/O timeout in microseconds.
            options = {"rtsp_transport": self.camera.transport or "tcp", "timeout": timeout_us}
        elif scheme in ("http", "https"):
            options = {"timeout": timeout_us, "rw_timeout": timeout_us}
        else:  # rtmp's own "timeout" means *listen* for a publisher; rw_timeout is the I/O one
            options = {"rw_timeout": timeout_us}
        options["protocol_whitelist"] = _NETWORK_PROTOCOLS[scheme]
        return _Target(url, None, options, is_file=False)

    def _with_credentials(self, url: str) -> str:
        creds = self.camera.credentials
        assert creds is not None
        values = []
        for var in (creds.username_env, creds.password_env):
            value = self._environ.get(var)
            if value is None:
                raise CaptureError(f"credentials env var {var} is not set")
            values.append(value)
        self._redact = Redactor(values)
        parts = urlsplit(url)
        userinfo = ":".join(quote(v, safe="") for v in values)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))

    def _error(self, phase: str, exc: BaseException, waited: float, timeout: float) -> CaptureError:
        """A redacted, self-explaining error; FFmpeg reports a timeout as "Invalid data"."""
        detail = self._redact(str(exc))
        if waited >= timeout * 0.9:
            return CaptureError(f"{phase} timed out: no data for {waited:.1f}s ({detail})")
        return CaptureError(f"{phase} failed: {detail}")

    def _fail(self, error: str, retry_in: float) -> None:
        error = error[:LAST_ERROR_MAX]  # a hostile stream's message must not fill the status
        with self._cond:
            self._last_error = error
            if self._state not in (StreamState.STOPPED, StreamState.FINISHED):
                self._state = StreamState.BACKOFF
        self._metrics.set_health(False, error)
        self._mark_down()
        log.warning("capture failed camera=%s error=%r retry_in=%.2fs", self.name, error, retry_in)

    def _set_state(self, state: StreamState) -> None:
        with self._cond:
            if self._state not in (StreamState.STOPPED, StreamState.FINISHED):
                self._state = state
            self._cond.notify_all()

    def _mark_down(self) -> None:
        self._arrivals.clear()
        if self._metrics.current:  # else a newer stream of the camera owns the series
            self._metrics.set_health(False, self._metrics.last_error)
            self._metrics.fps.set(0)

    def _done(self) -> bool:
        return self._stop.is_set() or self._state is StreamState.FINISHED
