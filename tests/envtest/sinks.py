"""The real peers of the event sinks: a mosquitto broker and an HTTP webhook receiver, both
of which can be stopped and started again on the same port (an outage, then recovery).

The broker is the Debian ``mosquitto`` binary on a free port with its own config; the
receiver is a ``ThreadingHTTPServer`` answering from a script of statuses. Used by
``tests/integration/test_sinks.py``, ``tests/reliability/test_sinks_down.py`` and the
``sinks_down`` reliability benchmark.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from kubevision.worker.events import TrackEvent
from kubevision.worker.sinks import DROP_REASONS
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for

MOSQUITTO = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path="/usr/bin:/usr/local/bin")
CAPTURED = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def track_event(pipeline: str, camera: str, n: int, kind: str = "track.started") -> TrackEvent:
    """A distinct event per (camera, n): its track id and times are ``n``'s."""
    return TrackEvent.model_validate(
        {
            "kind": kind,
            "pipeline": pipeline,
            "camera": camera,
            "trackId": n,
            "className": "person",
            "confidence": 0.9,
            "box": (n, 1.5, n + 10, 20.25),
            "captureTime": CAPTURED + dt.timedelta(milliseconds=n),
            "publishedTime": CAPTURED + dt.timedelta(seconds=1),
        }
    )


def sink_counts(registry: CollectorRegistry, pipeline: str, sink: str) -> dict[str, float]:
    """A sink type's metrics: published, failed, dropped_<reason> and pending."""
    labels = {"pipeline": pipeline, "sink": sink}

    def value(name: str, **extra: str) -> float:
        return registry.get_sample_value(name, {**labels, **extra}) or 0.0

    counts = {
        "published": value("kubevision_sink_events_published_total"),
        "failed": value("kubevision_sink_events_failed_total"),
        "pending": value("kubevision_sink_events_pending"),
    }
    for reason in DROP_REASONS:
        counts[f"dropped_{reason}"] = value("kubevision_sink_events_dropped_total", reason=reason)
    return counts


class Mosquitto:
    """A real broker on 127.0.0.1 that can be stopped and started again on the same port.

    Persistence is on so a persistent subscriber's session (its subscription and the messages
    queued for it) survives a restart, as it would in production.
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        assert MOSQUITTO is not None
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {workdir}/",
            # as root, mosquitto would switch to the `mosquitto` user, which cannot read tmp_path
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stderr",
            # hold everything for a subscriber that reconnects after the sink (default: 1000)
            "max_queued_messages 100000",
        ]
        if users:
            assert MOSQUITTO_PASSWD is not None
            password_file = workdir / "passwords"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            password_file.chmod(0o600)
            lines.append(f"password_file {password_file}")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._accepting, timeout=10, what=f"mosquitto on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: the broker saves its persistent sessions and exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker dies as in a crash; what it had not saved is gone."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        self._proc.wait(10)

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True


class Subscriber:
    """A paho client recording every message under ``<topic>/#`` in arrival order.

    Its session is persistent (clean_session=False), so messages published while it is
    reconnecting after a broker restart wait for it instead of being lost. A message the
    broker itself re-sends (DUP flag) after one already recorded is left out: that is the
    broker-to-subscriber leg, not the sink's; a repeat the sink sent stays in.
    """

    def __init__(self, port: int, topic: str, credentials: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, TrackEvent]] = []
        self.arrived: list[float] = []
        """Monotonic arrival time of each of ``messages``."""
        self.subscribed = threading.Event()
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-subscriber-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        if credentials:
            client.username_pw_set(*credentials)
        client.reconnect_delay_set(1, 1)
        client.on_connect = lambda c, *_: c.subscribe(f"{topic}/#", qos=1)
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._on_message
        client.connect_async("127.0.0.1", port)
        client.loop_start()
        self._client = client

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.dup and msg.payload in self._seen:
                return  # QoS 1 is at least once: the broker re-sent what we had already
            self._seen.add(bytes(msg.payload))
            self.messages.append((msg.topic, TrackEvent.model_validate_json(msg.payload)))
            self.arrived.append(time.monotonic())

    def received(self) -> list[tuple[str, TrackEvent]]:
        with self._lock:
            return list(self.messages)

    def arrivals(self) -> list[tuple[float, TrackEvent]]:
        """(monotonic arrival time, event) of every message kept, in arrival order."""
        with self._lock:
            return [(t, e) for t, (_, e) in zip(self.arrived, self.messages, strict=True)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def subscriber(
    port: int, topic: str, credentials: tuple[str, str] | None = None
) -> Iterator[Subscriber]:
    sub = Subscriber(port, topic, credentials)
    try:
        wait_for(sub.subscribed.is_set, timeout=10, what="the test subscriber's SUBACK")
        yield sub
    finally:
        sub.close()


class WebhookReceiver:
    """An HTTP receiver answering POSTs from a script of (status, headers), the last entry
    repeating; it records every request as (status answered, body, Authorization header,
    monotonic arrival time), across :meth:`stop` and :meth:`start` on the same port."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], port: int = 0) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes, str | None, float]] = []
        self.lock = threading.Lock()
        self.port = port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events?token=query-token"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _WebhookHandler)
        server.receiver = self  # type: ignore[attr-defined]
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: from now on a connection is refused."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def answer(self) -> tuple[int, dict[str, str]]:
        n = len(self.requests)
        return self.script[min(n, len(self.script) - 1)]

    def delivered(self) -> list[TrackEvent]:
        """Events of the requests answered 2xx, in order."""
        return [e for _, e in self.arrivals()]

    def arrivals(self) -> list[tuple[float, TrackEvent]]:
        """(monotonic arrival time, event) of each event of a request answered 2xx, in order."""
        with self.lock:
            answered = [(t, body) for status, body, _, t in self.requests if status < 300]
        return [(t, TrackEvent.model_validate(e)) for t, body in answered for e in json.loads(body)]


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver: WebhookReceiver = self.server.receiver  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with receiver.lock:
            status, headers = receiver.answer()
            auth = self.headers.get("Authorization")
            receiver.requests.append((status, body, auth, time.monotonic()))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on what was recorded."""


@contextmanager
def webhook(*script: tuple[int, dict[str, str]]) -> Iterator[WebhookReceiver]:
    """A receiver listening from entry to exit (``(200, {})`` when no script is given)."""
    receiver = WebhookReceiver(list(script) or [(200, {})])
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
