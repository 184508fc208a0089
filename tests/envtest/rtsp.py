"""A real RTSP server on 127.0.0.1 for capture tests: GStreamer's, fed by a real ``ffmpeg``.

The server is gst-rtsp-server from Debian, run by :mod:`tests.envtest.gst_rtsp_server` in the
system Python (which has the ``gi`` bindings; the project's virtualenv has none) as its own
process, so a test can kill it mid-stream, freeze it, or start it again on the same port the
way a camera or a media server goes away in production. Each path is fed by an ``ffmpeg``
that loops a video in real time and sends its H.264 as RTP over UDP to the server, which
serves it to readers over RTSP with TCP-interleaved transport only; readers can be required
to send Basic credentials. The client under test (PyAV/FFmpeg) decodes what a camera sends.

Needs ``ffmpeg`` and the Debian packages ``python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good
gstreamer1.0-plugins-bad`` (``.ci/run`` installs them).

Why not mediamtx: the Go module proxy answers 403 for github.com/bluenviron/* and Debian
ships no mediamtx, so it cannot be built or installed here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import WaitTimeout, wait_for
from tests.envtest.processes import spawn

log = logging.getLogger(__name__)
START_ATTEMPT_SECONDS = 15.0
"""How long one start of the server may take to answer (it answers within a second when well)."""

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's Python, where ``python3-gi`` puts the GStreamer bindings."""
SERVER_SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
GST_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base"
    " gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)


@dataclass(frozen=True)
class Credentials:
    """A user name and password that the server requires (and clients put in the URL)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"

    def basic(self) -> str:
        """The ``Authorization`` header value (RFC 7617, UTF-8)."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


def rtsp_request(
    port: int,
    method: str,
    path: str = "",
    credentials: Credentials | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """One RTSP request on its own connection to 127.0.0.1: the status code and the body."""
    head = [f"{method} rtsp://127.0.0.1:{port}/{path} RTSP/1.0", "CSeq: 1"]
    head.append("User-Agent: kubevision-envtest")
    if method == "DESCRIBE":
        head.append("Accept: application/sdp")
    if credentials is not None:
        head.append(f"Authorization: {credentials.basic()}")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        with sock.makefile("rb") as reply:
            status = reply.readline().decode("latin-1").split()
            if len(status) < 2 or not status[0].startswith("RTSP/"):
                raise ConnectionError(f"not an RTSP reply: {' '.join(status)!r}")
            length = 0
            while line := reply.readline().strip():
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            return int(status[1]), reply.read(length)


def _free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Child:
    """A child process with its output in a log file, stopped gently then firmly."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._popen = spawn(argv, log_path, env=env, cwd=REPO_ROOT)

    def alive(self) -> bool:
        return self._popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        self._popen.send_signal(sig)

    def stop(self, grace: float = 5.0) -> None:
        if self._popen.poll() is not None:
            return
        self._popen.send_signal(signal.SIGCONT)  # a paused process would not end on SIGTERM
        self._popen.terminate()
        try:
            self._popen.wait(grace)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(grace)


class Feeder:
    """``ffmpeg -re -stream_loop -1 -i VIDEO -c copy -an -f rtp rtp://127.0.0.1:UDP``: a camera
    that never ends, sending its H.264 as RTP (payload type 96) to the server's UDP port.

    The SDP that ffmpeg writes gives the SPS/PPS (``sprop-parameter-sets``) to the server,
    which can then describe the stream from the first packet, and its ``h264parse`` repeats
    them in-band before every key frame. (No ``-bsf:v h264_mp4toannexb``: with
    ``-stream_loop`` ffmpeg 5.1's filter hits EOF at the end of the first pass and every later
    packet fails, so the camera went silent after one pass of the video, 30 s for the car.)"""

    def __init__(self, state_dir: Path, path: str, video: Path) -> None:
        self.path = path
        self.video = video
        self.udp_port = _free_udp_port()
        self.sdp_path = state_dir / f"feeder-{path}.sdp"
        self.log_path = state_dir / f"feeder-{path}.log"
        self._child: _Child | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start ffmpeg; returns the ``sprop-parameter-sets`` of the SDP it wrote."""
        self.sdp_path.unlink(missing_ok=True)
        argv = [
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-re", "-stream_loop", "-1", "-i", str(self.video),
            "-map", "0:v:0", "-c", "copy", "-an",
            "-f", "rtp", "-payload_type", "96", "-rtpflags", "skip_rtcp",
            "-sdp_file", str(self.sdp_path), f"rtp://127.0.0.1:{self.udp_port}",
        ]  # fmt: skip
        self._child = child = _Child(argv, self.log_path)

        def sprop() -> str | None:
            if not child.alive():
                raise RuntimeError(f"ffmpeg exited; see {self.log_path}:\n{child.log_text()}")
            found = re.search(r"sprop-parameter-sets=([^;\s]+)", self.sdp_path.read_text())
            return found.group(1) if found else None

        return wait_for(sprop, timeout=timeout, what=f"ffmpeg's SDP for {self.video.name}")

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None


class RtspServer:
    """GStreamer's RTSP server on a free 127.0.0.1 port that stays the same across restarts.

    ``publish(path, video)`` starts a :class:`Feeder` and mounts ``path`` (a shared media that
    every reader of the path joins). ``stop()`` terminates the server process (clients see
    their connections close), ``start()`` brings it back on the same port, ``restart()`` also
    restarts every feeder, ``pause()`` and ``resume()`` freeze and thaw it (SIGSTOP/SIGCONT).
    Logs, the generated config and the feeders' SDPs stay in ``state_dir``.
    """

    def __init__(self, state_dir: Path, *, read: Credentials | None = None) -> None:
        self.state_dir = state_dir
        self.read_credentials = read
        self.port = free_port()
        self.feeders: list[Feeder] = []
        self._mounts: dict[str, dict[str, object]] = {}
        self._child: _Child | None = None
        self._starts = 0

    @property
    def config_path(self) -> Path:
        return self.state_dir / "rtsp-server.json"

    def url(self, path: str, credentials: Credentials | None = None) -> str:
        auth = ""
        if credentials is not None:
            auth = f"{quote(credentials.user, safe='')}:{quote(credentials.password, safe='')}@"
        return f"rtsp://{auth}127.0.0.1:{self.port}/{path}"

    def _write_config(self) -> None:
        config: dict[str, object] = {"port": self.port, "mounts": self._mounts}
        if self.read_credentials is not None:
            read = self.read_credentials
            config["read"] = {"user": read.user, "password": read.password}
        staged = self.config_path.with_suffix(".tmp")
        staged.write_text(json.dumps(config, indent=2))
        staged.replace(self.config_path)  # the server may re-read it at any time (SIGHUP)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server process and wait until it answers RTSP requests. A process that
        has not answered after :data:`START_ATTEMPT_SECONDS` is stopped and started again:
        now and then (about one start in a few dozen, on a loaded machine) the GStreamer
        server logs its mounts and then never listens."""
        deadline = time.monotonic() + timeout
        while True:
            attempt = min(START_ATTEMPT_SECONDS, max(deadline - time.monotonic(), 1.0))
            try:
                self._start_once(attempt)
                return
            except WaitTimeout:
                if time.monotonic() >= deadline:
                    raise
                log.warning(
                    "RTSP server %s did not answer in %.0f s; starting it again",
                    self.log_path,
                    attempt,
                )
                self.stop()

    def _start_once(self, timeout: float) -> None:
        self._write_config()
        self._starts += 1
        log_path = self.log_path
        env = {
            **os.environ,
            "GST_DEBUG": os.environ.get("GST_DEBUG", "1"),
            "GST_DEBUG_NO_COLOR": "1",
        }
        argv = [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.config_path)]
        self._child = child = _Child(argv, log_path, env)

        def answering() -> bool:
            if not child.alive():
                raise RuntimeError(
                    f"the GStreamer RTSP server exited (needs apt packages {GST_PACKAGES});"
                    f" see {log_path}:\n{child.log_text()}"
                )
            rtsp_request(self.port, "OPTIONS")  # any RTSP reply will do (401 included)
            return True

        wait_for(answering, timeout=timeout, what=f"RTSP server on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def kill(self) -> None:
        """SIGKILL the server (no cleanup at all, like a host that dies), then reap it."""
        if self._child is not None:
            self._child.send_signal(signal.SIGKILL)
            self.stop()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing flows, like a camera
        that hangs; only read timeouts notice."""
        assert self._child is not None
        self._child.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._child is not None
        self._child.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the server and its feeders, then start them again (same ports, same paths).

        The feeders start first: the server prepares each path as it starts and gives up on
        one whose RTP does not arrive within its prepare timeout (a feeder's ffmpeg can take
        that long to start on a busy machine)."""
        self.stop()
        for feeder in self.feeders:
            feeder.stop()
        for feeder in self.feeders:
            feeder.start()
        self.start()
        for feeder in self.feeders:
            self.wait_streaming(feeder.path)

    def publish(self, path: str, video: Path) -> Feeder:
        """Feed ``video`` to ``path`` with ffmpeg, mount it, and wait until it can be read."""
        assert self._child is not None, "start the server first"
        feeder = Feeder(self.state_dir, path, video)
        self.feeders.append(feeder)  # close() stops it whatever happens next
        self.mount(path, feeder.udp_port, feeder.start())
        self.wait_streaming(path)
        return feeder

    def mount(self, path: str, udp_port: int, sprop: str | None) -> None:
        """Serve ``path`` from the H.264 RTP arriving on ``udp_port`` (whoever sends it)."""
        child = self._child
        assert child is not None, "start the server first"
        self._mounts[path] = {"udp_port": udp_port, "sprop": sprop}
        self._write_config()
        child.send_signal(signal.SIGHUP)  # the server re-reads its mounts

    def wait_streaming(self, path: str, timeout: float = 60.0) -> None:
        """Wait until a DESCRIBE of ``path`` returns an H.264 SDP, i.e. the server receives the
        feeder's RTP (GStreamer describes a live stream only once its first packets arrived)."""
        child = self._child
        assert child is not None

        def described() -> bool:
            if not child.alive():
                raise RuntimeError(f"RTSP server exited; see {self.log_path}")
            status, sdp = rtsp_request(self.port, "DESCRIBE", path, self.read_credentials)
            if status != 200:
                raise ConnectionError(f"DESCRIBE {path}: {status}")
            return b"H264/90000" in sdp

        wait_for(described, timeout=timeout, what=f"the RTSP server to describe {path}")

    @property
    def log_path(self) -> Path:
        """The log of the server process started last."""
        return self.state_dir / f"rtsp-server-{self._starts}.log"

    def close(self) -> None:
        """Stop every feeder and the server (idempotent)."""
        for feeder in self.feeders:
            feeder.stop()
        self.stop()

    def __enter__(self) -> RtspServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
