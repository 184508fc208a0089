"""A real RTSP server on 127.0.0.1 for capture tests, fed by a real ``ffmpeg`` publisher.

The server is a small RTSP/1.0 relay (RFC 2326) that runs as its own process
(``python -m tests.envtest.rtsp CONFIG``), so a test can kill it mid-stream and start it again
on the same port the way a camera or a media server goes away in production. It speaks what
FFmpeg speaks on both sides: a publisher ANNOUNCEs an SDP, SETUPs its tracks and RECORDs; a
reader DESCRIBEs, SETUPs and PLAYs; RTP/RTCP travel interleaved on the RTSP TCP connection
(UDP is refused with 461, like a server configured for TCP only). Readers and publishers can
each be required to send Basic credentials. Media is relayed as-is, so the client under test
(PyAV/FFmpeg) decodes exactly what a camera would have sent.

Why not mediamtx: the Go module proxy answers 403 for github.com/bluenviron/* (mediamtx and
the gortsplib library it is built on) and for the other Go media servers, and Debian ships no
mediamtx, so it cannot be built or installed here; this relay needs nothing but Python.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit

from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import wait_for

log = logging.getLogger("envtest.rtsp")

_MAX_READER_BACKLOG = 4 << 20
"""Bytes queued for one reader before it counts as stalled and is disconnected."""
_METHODS = "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, PAUSE, TEARDOWN, GET_PARAMETER"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    455: "Method Not Valid in This State",
    461: "Unsupported Transport",
}


@dataclass(frozen=True)
class Credentials:
    """A user name and password that the server requires (and clients put in the URL)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"


# -- the server (runs in its own process) -----------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """What one publisher announced on a path, and who reads it."""

    sdp: bytes
    controls: list[str]
    readers: set[_Connection] = field(default_factory=set)


@dataclass(eq=False)
class _Connection:
    """One RTSP client connection: a publisher or a reader, never both."""

    writer: asyncio.StreamWriter
    path: str = ""
    role: str = ""  # "publish" or "read" once DESCRIBE/ANNOUNCE authorised it
    session: str = ""  # one RTSP session per connection, set by its first SETUP
    announced: _Stream | None = None
    playing: bool = False
    recording: bool = False
    in_channels: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Publisher: interleaved channel -> (track, 0 for RTP | 1 for RTCP)."""
    out_channels: dict[int, int] = field(default_factory=dict)
    """Reader: track -> its RTP channel (RTCP is the next one)."""


class _Relay:
    """The RTSP state machine: paths being published and the readers attached to them."""

    def __init__(self, read: Credentials | None, publish: Credentials | None) -> None:
        self.read = read
        self.publish = publish
        self.streams: dict[str, _Stream] = {}
        self._sessions = itertools.count(1)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer)
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # interleaved RTP/RTCP: 1 channel byte, 2 length bytes
                    head = await reader.readexactly(3)
                    payload = await reader.readexactly(int.from_bytes(head[1:3], "big"))
                    if conn.recording:
                        self._relay(conn, head[0], payload)
                    continue
                request = first + await reader.readuntil(b"\r\n\r\n")
                method, url, headers = _parse_request(request)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra, content = self._respond(conn, method, url, headers, body)
                _write_response(writer, status, headers.get("cseq", "0"), extra, content)
                await writer.drain()
                if method == "TEARDOWN":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._forget(conn)
            writer.close()

    def _respond(
        self, conn: _Connection, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER", "TEARDOWN"):
            return 200, {"Public": _METHODS} if method == "OPTIONS" else {}, b""
        if method in ("DESCRIBE", "ANNOUNCE"):
            role = "read" if method == "DESCRIBE" else "publish"
            wanted = self.read if role == "read" else self.publish
            if not _authorised(headers.get("authorization"), wanted, method):
                return 401, {"WWW-Authenticate": 'Basic realm="kubevision-test"'}, b""
            conn.role, conn.path = role, _path_of(url)
        if method == "DESCRIBE":
            stream = self.streams.get(conn.path)
            if stream is None:
                return 404, {}, b""
            base = url if url.endswith("/") else url + "/"
            return 200, {"Content-Base": base, "Content-Type": "application/sdp"}, stream.sdp
        if method == "ANNOUNCE":
            conn.announced = _Stream(body, _controls(body))
            return 200, {}, b""
        if method == "SETUP":
            return self._setup(conn, url, headers.get("transport", ""))
        if method == "RECORD" and conn.role == "publish" and conn.announced is not None:
            previous = self.streams.get(conn.path)
            if previous is not None:
                self._close_readers(previous)
            self.streams[conn.path] = conn.announced
            conn.recording = True
            log.info("publishing path=%s tracks=%d", conn.path, len(conn.announced.controls))
            return 200, {}, b""
        if method == "PLAY" and conn.role == "read" and conn.out_channels:
            stream = self.streams.get(conn.path)
            if stream is None:
                return 404, {}, b""
            stream.readers.add(conn)
            conn.playing = True
            log.info("reading path=%s", conn.path)
            return 200, {"Range": "npt=0.000-"}, b""
        if method == "PAUSE":
            self._forget_reader(conn)
            return 200, {}, b""
        if method in ("RECORD", "PLAY"):
            return 455, {}, b""
        return 405, {"Allow": _METHODS}, b""

    def _setup(
        self, conn: _Connection, url: str, transport: str
    ) -> tuple[int, dict[str, str], bytes]:
        if not conn.role:
            return 455, {}, b""
        stream = conn.announced if conn.role == "publish" else self.streams.get(conn.path)
        if stream is None:
            return 404, {}, b""
        track = next((i for i, c in enumerate(stream.controls) if url.endswith("/" + c)), None)
        if track is None:
            return 404, {}, b""
        params = dict(p.partition("=")[::2] for p in transport.split(";"))
        if not transport.startswith("RTP/AVP/TCP") or "interleaved" not in params:
            return 461, {}, b""
        rtp = int(params["interleaved"].split("-")[0])
        if conn.role == "publish":
            conn.in_channels[rtp], conn.in_channels[rtp + 1] = (track, 0), (track, 1)
        else:
            conn.out_channels[track] = rtp
        reply = f"RTP/AVP/TCP;unicast;interleaved={rtp}-{rtp + 1}"
        if conn.role == "publish":
            reply += ";mode=record"
        conn.session = conn.session or str(next(self._sessions))
        return 200, {"Transport": reply, "Session": f"{conn.session};timeout=60"}, b""

    def _relay(self, publisher: _Connection, channel: int, payload: bytes) -> None:
        stream = self.streams.get(publisher.path)
        if stream is None or channel not in publisher.in_channels:
            return
        track, rtcp = publisher.in_channels[channel]
        for reader in list(stream.readers):
            out = reader.out_channels.get(track)
            if out is None:
                continue
            if reader.writer.transport.get_write_buffer_size() > _MAX_READER_BACKLOG:
                log.warning("reader stalled, disconnecting path=%s", publisher.path)
                self._forget_reader(reader)
                reader.writer.close()
                continue
            head = bytes([out + rtcp]) + len(payload).to_bytes(2, "big")
            reader.writer.write(b"$" + head + payload)

    def _forget(self, conn: _Connection) -> None:
        self._forget_reader(conn)
        if conn.recording and self.streams.get(conn.path) is conn.announced:
            stream = self.streams.pop(conn.path)
            self._close_readers(stream)  # the source left: readers see the stream end
            log.info("publisher left path=%s", conn.path)

    def _forget_reader(self, conn: _Connection) -> None:
        stream = self.streams.get(conn.path)
        if conn.playing and stream is not None:
            stream.readers.discard(conn)
        conn.playing = False

    @staticmethod
    def _close_readers(stream: _Stream) -> None:
        for reader in stream.readers:
            reader.playing = False
            reader.writer.close()
        stream.readers.clear()


def _parse_request(raw: bytes) -> tuple[str, str, dict[str, str]]:
    lines = raw.decode("utf-8", "replace").split("\r\n")
    method, url, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method.upper(), url, headers


def _write_response(
    writer: asyncio.StreamWriter, status: int, cseq: str, headers: dict[str, str], body: bytes
) -> None:
    lines = [f"RTSP/1.0 {status} {_REASONS[status]}", f"CSeq: {cseq}", "Server: kubevision-test"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _path_of(url: str) -> str:
    return urlsplit(url).path.strip("/")


def _controls(sdp: bytes) -> list[str]:
    """The a=control attribute of each media section, in order (one per track)."""
    controls: list[str] = []
    for line in sdp.decode("utf-8", "replace").splitlines():
        if line.startswith("m="):
            controls.append("")
        elif line.startswith("a=control:") and controls:
            controls[-1] = line.removeprefix("a=control:").strip()
    return controls


def _authorised(header: str | None, wanted: Credentials | None, method: str) -> bool:
    if wanted is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, password = "", ""
    if scheme.lower() == "basic" and (user, password) == (wanted.user, wanted.password):
        return True
    log.warning("unauthorised method=%s user=%r", method, user)  # never the password
    return False


async def _serve(config: dict[str, object]) -> None:
    def creds(key: str) -> Credentials | None:
        value = config.get(key)
        return Credentials(**value) if isinstance(value, dict) else None

    relay = _Relay(read=creds("read"), publish=creds("publish"))
    port = config["port"]
    assert isinstance(port, int)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", port, reuse_address=True)
    log.info("listening address=127.0.0.1:%d", port)
    # SIGTERM's default action ends the process at once and the kernel closes every
    # connection: exactly the "server went away" that readers must survive.
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="RTSP relay for tests (TCP-interleaved only)")
    parser.add_argument("config", type=Path, help="JSON: {port, read?, publish?}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(json.loads(args.config.read_text())))


# -- the test-side helpers ---------------------------------------------------------------------


class _Child:
    """A child process with its output in a log file, stopped gently then firmly."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        with log_path.open("ab") as out:
            self._popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )

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


class Publisher:
    """``ffmpeg -re -stream_loop -1 -i VIDEO -c copy -f rtsp URL``: a camera that never ends."""

    def __init__(self, server: RtspServer, path: str, video: Path) -> None:
        self.server = server
        self.path = path
        self.video = video
        self._child: _Child | None = None

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning",
            "-re", "-stream_loop", "-1", "-i", str(self.video),
            "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp",
            self.server.url(self.path, self.server.publish_credentials),
        ]  # fmt: skip
        log_path = self.server.state_dir / f"publisher-{self.path}.log"
        self._child = _Child(argv, log_path)
        child = self._child

        def publishing() -> bool:
            if not child.alive():
                raise RuntimeError(f"ffmpeg publisher exited; see {log_path}:\n{child.log_text()}")
            return self.server.is_published(self.path)

        wait_for(publishing, timeout=timeout, what=f"ffmpeg publishing {self.video.name}")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None


class RtspServer:
    """The relay on a free 127.0.0.1 port that stays the same across restarts.

    ``stop()`` terminates the process (clients see their connections close), ``start()``
    brings it back on the same port, ``restart()`` also restarts every publisher, ``pause()``
    and ``resume()`` freeze and thaw it. Logs and the generated config stay in ``state_dir``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        read: Credentials | None = None,
        publish: Credentials | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.read_credentials = read
        self.publish_credentials = publish
        self.port = free_port()
        self.publishers: list[Publisher] = []
        self._child: _Child | None = None
        self._starts = 0

    def url(self, path: str, credentials: Credentials | None = None) -> str:
        auth = ""
        if credentials is not None:
            auth = f"{quote(credentials.user, safe='')}:{quote(credentials.password, safe='')}@"
        return f"rtsp://{auth}127.0.0.1:{self.port}/{path}"

    def start(self, timeout: float = 15.0) -> None:
        config: dict[str, object] = {"port": self.port}
        for key, value in (("read", self.read_credentials), ("publish", self.publish_credentials)):
            if value is not None:
                config[key] = {"user": value.user, "password": value.password}
        config_path = self.state_dir / "rtsp-server.json"
        config_path.write_text(json.dumps(config))
        self._starts += 1
        log_path = self.log_path
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._child = _Child([sys.executable, "-m", __name__, str(config_path)], log_path, env)
        child = self._child

        def accepting() -> bool:
            if not child.alive():
                raise RuntimeError(f"RTSP server exited; see {log_path}:\n{child.log_text()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(accepting, timeout=timeout, what=f"RTSP server on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing flows, like a camera
        that hangs; only read timeouts notice."""
        assert self._child is not None
        self._child.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._child is not None
        self._child.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop the server, start it again, and restart the publishers (they died with it)."""
        self.stop()
        for publisher in self.publishers:
            publisher.stop()
        self.start()
        for publisher in self.publishers:
            publisher.start()

    def publish(self, path: str, video: Path) -> Publisher:
        """Start an ffmpeg publisher on ``path`` and wait until the server relays it."""
        publisher = Publisher(self, path, video)
        publisher.start()
        self.publishers.append(publisher)
        return publisher

    @property
    def log_path(self) -> Path:
        """The log of the server process started last."""
        return self.state_dir / f"rtsp-server-{self._starts}.log"

    def is_published(self, path: str) -> bool:
        """Whether the running server has a publisher on ``path`` (from its log)."""
        child = self._child
        if child is None:
            return False
        text = child.log_text()
        started = text.count(f"publishing path={path} ")
        return started > text.count(f"publisher left path={path}\n")

    def close(self) -> None:
        for publisher in self.publishers:
            publisher.stop()
        self.stop()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    main()
