"""GStreamer's RTSP server (gst-rtsp-server, from Debian) serving H.264 RTP fed over UDP.

Run with the SYSTEM Python, which has Debian's GObject bindings (``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``); the project's virtualenv has none::

    /usr/bin/python3 tests/envtest/gst_rtsp_server.py CONFIG.json

CONFIG.json::

    {
      "port": 8554,                                  # RTSP over TCP on 127.0.0.1
      "read": {"user": "u", "password": "p"},        # optional: readers need Basic auth
      "mounts": {                                    # path -> where its RTP arrives
        "cam": {"udp_port": 40000, "sprop": "Z0LAFtk...,aMuMsg=="}
      }
    }

Each mount is a *shared* media factory whose pipeline is::

    ( udpsrc port=UDP address=127.0.0.1 do-timestamp=true
        caps="application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000
              [,sprop-parameter-sets=SPROP]"
      ! rtpjitterbuffer latency=100 ! rtph264depay ! h264parse config-interval=-1
      ! rtph264pay name=pay0 pt=96 config-interval=1 )

so every reader of a path gets the same live stream, with SPS/PPS repeated in-band for late
joiners. A feeder sends the RTP, e.g. ``ffmpeg -re -stream_loop -1 -i VIDEO -c copy -an
-f rtp -payload_type 96 -sdp_file F.sdp rtp://127.0.0.1:UDP``;
``sprop`` (the ``sprop-parameter-sets`` of its SDP) lets the pipeline negotiate from the
first packet instead of the next key frame. The jitter buffer times frames by their RTP
timestamps: timed by arrival (``do-timestamp``) alone, the 1/12.5 s steps of the sample
video (7200 ticks) reached readers as anything from ~6200 to ~7700. Only TCP-interleaved
transport is offered (a SETUP for UDP gets 461 Unsupported Transport).

Authentication is gst-rtsp-server's Basic scheme: it keeps base64(UTF-8 "USER:PASSWORD")
and compares the client's ``Authorization: Basic ...`` value with it as a whole, without
splitting it, so every character works in the password (``:``, ``@``, ``/``, ``%``, quotes,
spaces, non-ASCII; an empty one too) and in the user (even ``:``, which RFC 7617 forbids
there). Wrong or missing credentials get 401 with a Basic challenge; an authenticated reader
of an unknown path gets 404. (FFmpeg, the client, has a limit of its own: it keeps at most
127 bytes of the URL's percent-encoded ``user:password``.)

Signals: SIGHUP re-reads CONFIG and mounts the paths it added (nothing else changes);
SIGTERM ends the process at once, so connected readers see their connections close, like a
camera that went away. SIGSTOP/SIGCONT freeze and thaw it with every connection open. One
line per event goes to stdout, e.g. ``listening address=127.0.0.1:8554``,
``mounted path=cam udp_port=40000``, ``receiving path=cam`` (its RTP arrives) and
``reading path=cam`` (a client PLAYs it).
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this folder first on sys.path, where tests/envtest/operator.py
# would shadow the standard library's operator module (imported by enum, re, argparse...).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gi  # type: ignore[import-not-found]  # noqa: E402  # Debian's python3-gi: system Python

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402

RTP_CAPS = "application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000"
ROLE = "reader"
JITTER_MS = 100
"""rtpjitterbuffer's latency: it times frames by their RTP timestamps, not by arrival."""
PREPARE_TIMEOUT = 20.0
"""How long gst-rtsp-server waits for a live media's first data before it fails to prepare."""


_log_lock = threading.Lock()


def log(message: str) -> None:
    """One line on stdout (from any thread: GStreamer calls back from its own)."""
    line = f"{time.strftime('%H:%M:%S')} {message}\n"
    with _log_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def launch_line(udp_port: int, sprop: str | None) -> str:
    caps = RTP_CAPS
    if sprop:
        caps += f',sprop-parameter-sets=(string)\\"{sprop}\\"'
    return (
        f'( udpsrc port={udp_port} address=127.0.0.1 do-timestamp=true caps="{caps}"'
        f" ! rtpjitterbuffer latency={JITTER_MS} ! rtph264depay ! h264parse config-interval=-1"
        " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


class Mount:
    """One path: its shared media factory, and a thread that keeps its media prepared.

    gst-rtsp-server unprepares a shared media when its last client leaves, and a client that
    arrives while that is under way gets 503 Service Unavailable. Holding one preparation of
    the media for the server itself keeps it (and its udpsrc) up for good, like a media
    server that ingests a stream whether anyone reads it or not. Preparing returns once the
    first RTP packets arrived, so it runs in a thread while the main loop serves clients and
    dispatches the media's bus. GStreamer gives up after 20 s without RTP; then it is tried
    again, while any other failure (the UDP port is taken, say) is passed to ``fail``.
    """

    def __init__(
        self,
        server_port: int,
        path: str,
        udp_port: int,
        sprop: str | None,
        readers: Any,
        fail: Callable[[str], None],
    ) -> None:
        self.path = path
        self.fail = fail
        self.url = f"rtsp://127.0.0.1:{server_port}/{path}"
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(launch_line(udp_port, sprop))
        self.factory.set_shared(True)
        self.factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        if readers is not None:
            self.factory.set_permissions(readers)
        self.media: Any = None
        threading.Thread(target=self._keep_prepared, name=f"prepare-{path}", daemon=True).start()

    def _keep_prepared(self) -> None:
        ok, url = GstRtsp.RTSPUrl.parse(self.url)
        assert ok == GstRtsp.RTSPResult.OK, self.url
        while True:
            started = time.monotonic()
            media = self.factory.construct(url)  # the one the factory hands every reader
            if media is not None and media.prepare(None):
                self.media = media  # prepared for good: never unprepared
                log(f"receiving path={self.path}")
                return
            if time.monotonic() - started < PREPARE_TIMEOUT / 2:
                self.fail(f"cannot prepare path={self.path}; GST_DEBUG=3 tells why")
                return
            log(f"no RTP yet path={self.path}, preparing again")


class Server:
    """The RTSP server, its mounts and (optionally) Basic authentication for readers."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        config = self._read_config()
        self.port = int(config["port"])
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(self.port))
        self.readers: Any = None  # who may read: everyone unless credentials are configured
        read = config.get("read")
        if read is not None:
            auth = GstRtspServer.RTSPAuth()
            token = GstRtspServer.RTSPToken.new()
            token.set_string("media.factory.role", ROLE)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(read["user"], read["password"]), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.set_realm("kubevision-test")
            self.server.set_auth(auth)
            self.readers = GstRtspServer.RTSPPermissions()
            self.readers.add_role_from_structure(
                Gst.Structure.from_string(
                    f"{ROLE}, media.factory.access=(boolean)true,"
                    " media.factory.construct=(boolean)true"
                )[0]
            )
        self.mounts: dict[str, Mount] = {}
        self.loop = GLib.MainLoop()
        self.failure: str | None = None
        self.server.connect("client-connected", self._on_client)
        self.reload()

    def _read_config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self.config_path.read_text())
        return config

    def reload(self) -> bool:
        """Mount the config's paths that are not mounted yet (also the SIGHUP handler)."""
        points = self.server.get_mount_points()
        for path, spec in self._read_config().get("mounts", {}).items():
            if path not in self.mounts:
                udp_port = int(spec["udp_port"])
                sprop = spec.get("sprop")
                mount = Mount(self.port, path, udp_port, sprop, self.readers, self.fail)
                points.add_factory("/" + path, mount.factory)
                self.mounts[path] = mount
                log(f"mounted path={path} udp_port={udp_port}")
        return True  # GLib.SOURCE_CONTINUE: keep handling SIGHUP

    def fail(self, message: str) -> None:
        """End the server with ``message`` (from any thread)."""

        def stop() -> bool:
            self.failure = message
            self.loop.quit()
            return False  # GLib.SOURCE_REMOVE

        GLib.idle_add(stop)

    def _on_client(self, _server: Any, client: Any) -> None:
        peer = client.get_connection().get_ip()
        log(f"client connected peer={peer}")
        client.connect("play-request", self._on_play)
        client.connect("closed", lambda _client: log(f"client closed peer={peer}"))

    @staticmethod
    def _on_play(_client: Any, context: Any) -> None:
        log(f"reading path={context.uri.abspath.strip('/')}")

    def run(self) -> None:
        # before listening: once it answers, a SIGHUP must reload, not end the process
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGHUP, self.reload)
        if self.server.attach(None) == 0:
            raise SystemExit(f"cannot listen on 127.0.0.1:{self.server.get_service()}")
        log(f"listening address=127.0.0.1:{self.server.get_bound_port()}")
        self.loop.run()
        if self.failure is not None:
            raise SystemExit(self.failure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.partition("\n\n")[0] if __doc__ else None,
        epilog=__doc__.partition("\n\n")[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, help="JSON: {port, read?, mounts}")
    args = parser.parse_args(argv)
    Gst.init(None)
    log(f"{Gst.version_string()}, gst-rtsp-server via Python {sys.version.split()[0]}")
    Server(args.config).run()


if __name__ == "__main__":
    main()
