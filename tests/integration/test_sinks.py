"""Event sinks against real peers: a mosquitto broker, local HTTP servers, files.

The broker is the Debian ``mosquitto`` binary on a free port with its own config; webhooks
are ``ThreadingHTTPServer``s that answer from a script of statuses. Nothing is mocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
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
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from kubevision.api.common import SecretKeyNames
from kubevision.api.pipeline import Output
from kubevision.worker.events import TrackEvent
from kubevision.worker.sinks import (
    Credentials,
    FanOut,
    FileSink,
    JsonLinesSink,
    MqttSink,
    SinkConfigError,
    SinkCounters,
    SinkMetrics,
    WebhookSink,
    build_sinks,
)
from tests.envtest.controlplane import free_port
from tests.envtest.poll import wait_for

PIPELINE = "shop"
TOPIC = "kubevision/shop"
SECRET = "hunter2-very-secret"
MOSQUITTO = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path="/usr/bin:/usr/local/bin")
CAPTURED = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def event(camera: str, track_id: int, kind: str = "track.started") -> TrackEvent:
    return TrackEvent.model_validate(
        {
            "kind": kind,
            "pipeline": PIPELINE,
            "camera": camera,
            "trackId": track_id,
            "className": "person",
            "confidence": 0.9,
            "box": (track_id, 1.5, track_id + 10, 20.25),
            "captureTime": CAPTURED + dt.timedelta(milliseconds=track_id),
            "publishedTime": CAPTURED + dt.timedelta(seconds=1),
        }
    )


def counted(registry: CollectorRegistry, sink: str) -> dict[str, float]:
    labels = {"pipeline": PIPELINE, "sink": sink}
    return {
        what: registry.get_sample_value(f"kubevision_sink_events_{what}_total", labels) or 0.0
        for what in ("published", "failed", "dropped")
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def counters(registry: CollectorRegistry, sink: str) -> SinkCounters:
    return SinkMetrics.on(registry).bind(PIPELINE, sink)


# -- MQTT -------------------------------------------------------------------------------------


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
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        self._proc.wait(10)

    def _accepting(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho client recording every message under ``TOPIC/#`` in arrival order.

    Its session is persistent (clean_session=False), so messages published while it is
    reconnecting after a broker restart wait for it instead of being lost.
    """

    def __init__(self, port: int, credentials: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, TrackEvent]] = []
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
        client.on_connect = lambda c, *_: c.subscribe(f"{TOPIC}/#", qos=1)
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

    def received(self) -> list[tuple[str, TrackEvent]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def subscriber(port: int, credentials: tuple[str, str] | None = None) -> Iterator[Subscriber]:
    sub = Subscriber(port, credentials)
    try:
        wait_for(sub.subscribed.is_set, timeout=10, what="the test subscriber's SUBACK")
        yield sub
    finally:
        sub.close()


def by_camera(messages: list[tuple[str, TrackEvent]]) -> dict[str, list[TrackEvent]]:
    out: dict[str, list[TrackEvent]] = {}
    for topic, e in messages:
        assert topic == f"{TOPIC}/{e.camera}", "one topic per camera, named in the payload too"
        out.setdefault(e.camera, []).append(e)
    return out


def test_mqtt_delivers_in_order_per_camera_and_queues_across_a_broker_restart(
    broker: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = MqttSink(
        f"mqtt://127.0.0.1:{broker.port}", TOPIC, counters(registry, "mqtt"), reconnect_max_delay=1
    )
    sent: dict[str, list[TrackEvent]] = {"door": [], "yard": []}
    try:
        with subscriber(broker.port) as sub:
            wait_for(lambda: sink.connected, timeout=10, what="the sink to connect")
            for track_id in range(20):  # one "frame" per track id, both cameras in each
                frame = [event("door", track_id), event("yard", track_id, "track.updated")]
                sink.publish(frame)
                for e in frame:
                    sent[e.camera].append(e)
            wait_for(lambda: len(sub.received()) == 40, timeout=10, what="40 messages")
            assert by_camera(sub.received()) == sent, "intact and in publish order per camera"
            wait_for(
                lambda: counted(registry, "mqtt")["published"] == 40,
                timeout=10,
                what="40 PUBACKs counted",
            )

            broker.stop()
            wait_for(lambda: not sink.connected, timeout=10, what="the sink to notice")
            later = [event("door", 100 + i, "track.ended") for i in range(10)]
            sink.publish(later)
            assert sink.pending == 10, "held by the sink while the broker is down"
            assert counted(registry, "mqtt")["published"] == 40

            broker.start()
            wait_for(
                lambda: len(sub.received()) == 50,
                timeout=30,
                what="the queued events after reconnection",
            )
            assert by_camera(sub.received())["door"] == sent["door"] + later
            wait_for(lambda: sink.pending == 0, timeout=10, what="all acknowledged")
    finally:
        sink.close()
    assert counted(registry, "mqtt") == {"published": 50.0, "failed": 0.0, "dropped": 0.0}


def test_mqtt_queue_is_bounded_and_drops_the_oldest_while_the_broker_is_down(
    broker: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = MqttSink(
        f"mqtt://127.0.0.1:{broker.port}",
        TOPIC,
        counters(registry, "mqtt"),
        queue_size=5,
        reconnect_max_delay=1,
    )
    try:
        with subscriber(broker.port) as sub:
            wait_for(lambda: sink.connected, timeout=10, what="the sink to connect")
            broker.stop()
            wait_for(lambda: not sink.connected, timeout=10, what="the sink to notice")
            sink.publish([event("door", i) for i in range(8)])
            sink.publish([event("door", 8), event("door", 9)])
            assert sink.pending == 5
            assert counted(registry, "mqtt")["dropped"] == 5
            broker.start()
            wait_for(lambda: len(sub.received()) == 5, timeout=30, what="the 5 kept events")
            assert [e.track_id for _, e in sub.received()] == [5, 6, 7, 8, 9]
    finally:
        sink.close()
    assert counted(registry, "mqtt") == {"published": 5.0, "failed": 0.0, "dropped": 5.0}


@pytest.mark.skipif(
    MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed (make system-packages)"
)
def test_mqtt_authenticates_from_env_and_never_shows_the_password(
    tmp_path: Path, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    broker = Mosquitto(tmp_path, users={"worker": SECRET, "reader": "reader-pw"})
    broker.start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    output = Output(
        type="mqtt", url=url, topic=TOPIC, credentials_secret_ref=SecretKeyNames(name="mqtt")
    )
    good = {"KUBEVISION_OUTPUT_0_USERNAME": "worker", "KUBEVISION_OUTPUT_0_PASSWORD": SECRET}
    bad = good | {"KUBEVISION_OUTPUT_0_PASSWORD": SECRET + "-wrong"}
    caplog.set_level(logging.DEBUG, "kubevision.worker.sinks")
    try:
        with subscriber(broker.port, ("reader", "reader-pw")) as sub:
            fan_out = build_sinks([output], PIPELINE, registry, environ=good)
            rejected = build_sinks([output], PIPELINE, registry, environ=bad)
            try:
                (sink,), (refused,) = fan_out.sinks, rejected.sinks
                assert isinstance(sink, MqttSink)
                assert isinstance(refused, MqttSink)
                wait_for(lambda: sink.connected, timeout=10, what="an authenticated connection")
                fan_out.publish([event("door", 1)])
                rejected.publish([event("door", 2)])
                wait_for(lambda: len(sub.received()) == 1, timeout=10, what="the message")
                wait_for(lambda: "refused" in caplog.text, timeout=10, what="the refusal log")
                assert not refused.connected
                shown = [caplog.text, repr(fan_out), repr(rejected), repr(sink), repr(refused)]
            finally:
                fan_out.close()
                rejected.close()
    finally:
        broker.stop()
    assert sub.received() == [(f"{TOPIC}/door", event("door", 1))], "the refused one never came"
    assert counted(registry, "mqtt")["published"] == 1
    assert counted(registry, "mqtt")["dropped"] == 1, "the refused sink's event, left at close"
    assert all(SECRET not in text for text in [*shown, caplog.text])


# -- webhook ----------------------------------------------------------------------------------


class Webhook(ThreadingHTTPServer):
    """Answers POSTs from a script of (status, headers), the last entry repeating, and records
    every request as (status answered, body, Authorization header, monotonic arrival time)."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes, str | None, float]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/events?token=query-token"

    def delivered(self) -> list[TrackEvent]:
        """Events of the requests answered 2xx, in order."""
        with self.lock:
            bodies = [body for status, body, _, _ in self.requests if status < 300]
        return [TrackEvent.model_validate(e) for body in bodies for e in json.loads(body)]


class _WebhookHandler(BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            n = len(self.server.requests)
            status, headers = self.server.script[min(n, len(self.server.script) - 1)]
            auth = self.headers.get("Authorization")
            self.server.requests.append((status, body, auth, time.monotonic()))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on what was recorded."""


@contextmanager
def webhook(*script: tuple[int, dict[str, str]]) -> Iterator[Webhook]:
    server = Webhook(list(script))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhook_retries_5xx_and_delivers_exactly_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    events = [event("door", i) for i in range(5)]
    caplog.set_level(logging.DEBUG, "kubevision.worker.sinks")
    with webhook((503, {}), (503, {}), (200, {})) as server:
        sink = WebhookSink(
            server.url,
            counters(registry, "webhook"),
            credentials=Credentials("hook", SecretStr(SECRET)),
            backoff_base=0.01,
        )
        try:
            sink.publish(events)
            wait_for(
                lambda: counted(registry, "webhook")["published"] == 5,
                timeout=10,
                what="delivery after two 503s",
            )
        finally:
            sink.close()
        assert [status for status, *_ in server.requests] == [503, 503, 200]
        assert server.delivered() == events, "exactly once, in order"
        expected_auth = "Basic " + base64.b64encode(f"hook:{SECRET}".encode()).decode()
        assert {auth for _, _, auth, _ in server.requests} == {expected_auth}
    assert counted(registry, "webhook") == {"published": 5.0, "failed": 0.0, "dropped": 0.0}
    assert SECRET not in caplog.text + repr(sink)
    assert "query-token" not in caplog.text + repr(sink), "URLs are logged without the query"


def test_webhook_waits_as_long_as_retry_after_says(registry: CollectorRegistry) -> None:
    with webhook((429, {"Retry-After": "1"}), (200, {})) as server:
        sink = WebhookSink(server.url, counters(registry, "webhook"), backoff_base=0.001)
        try:
            sink.publish([event("door", 1)])
            wait_for(lambda: server.delivered(), timeout=10, what="delivery after the 429")
        finally:
            sink.close()
        first, second = (arrived for *_, arrived in server.requests)
    assert second - first >= 0.95


def test_webhook_does_not_retry_a_client_error(registry: CollectorRegistry) -> None:
    with webhook((400, {}), (200, {})) as server:
        sink = WebhookSink(server.url, counters(registry, "webhook"), backoff_base=0.001)
        try:
            sink.publish([event("door", 1), event("door", 2)])
            wait_for(
                lambda: counted(registry, "webhook")["failed"] == 2,
                timeout=10,
                what="the batch counted as failed",
            )
        finally:
            sink.close()
        assert len(server.requests) == 1


def test_webhook_down_bounds_the_queue_and_never_blocks_the_caller(
    registry: CollectorRegistry,
) -> None:
    sink = WebhookSink(
        f"http://127.0.0.1:{free_port()}/events",  # nothing listens: connection refused
        counters(registry, "webhook"),
        queue_size=50,
        batch_max=10,
        max_attempts=3,
        backoff_base=0.01,
        backoff_cap=0.05,
        drain_timeout=2,
    )
    slowest = 0.0
    try:
        for i in range(500):
            started = time.perf_counter()
            sink.publish([event("door", i)])
            slowest = max(slowest, time.perf_counter() - started)
            assert sink.pending <= 50
        wait_for(
            lambda: counted(registry, "webhook")["failed"] > 0,
            timeout=10,
            what="a batch to exhaust its retries",
        )
        assert counted(registry, "webhook")["dropped"] >= 500 - 50 - 2 * 10
    finally:
        closing = time.monotonic()
        sink.close()
        assert time.monotonic() - closing < 2.5
    # the interpreter may switch threads mid-call (every 5 ms by default); a few ms is the bound
    assert slowest < 0.01, f"publish blocked for {slowest * 1000:.1f} ms"
    totals = counted(registry, "webhook")
    assert totals["published"] == 0
    assert totals["failed"] + totals["dropped"] == 500, "every event accounted for"


# -- files, stdout, fan-out, building ---------------------------------------------------------


def test_file_sink_writes_json_lines_visible_at_once(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    path = tmp_path / "events" / "out.jsonl"
    sink = FileSink(path, counters(registry, "file"))
    sink.publish([event("door", 1), event("yard", 2)])
    assert len(path.read_text().splitlines()) == 2, "line-buffered: readable before close"
    sink.publish([event("door", 1, "track.ended")])
    sink.close()
    lines = path.read_text().splitlines()
    assert [TrackEvent.model_validate_json(line) for line in lines] == [
        event("door", 1),
        event("yard", 2),
        event("door", 1, "track.ended"),
    ]
    assert all(json.loads(line)["pipeline"] == PIPELINE for line in lines)
    assert counted(registry, "file")["published"] == 3


def test_stdout_sink_writes_json_lines(
    capsys: pytest.CaptureFixture[str], registry: CollectorRegistry
) -> None:
    sink = JsonLinesSink(counters(registry, "stdout"))
    sink.publish([event("door", 1)])
    sink.close()
    assert TrackEvent.model_validate_json(capsys.readouterr().out) == event("door", 1)


class Exploding:
    """A sink whose destination is broken."""

    kind = "exploding"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = counters(registry, self.kind)

    def publish(self, events: list[TrackEvent]) -> None:
        raise OSError("disk on fire")

    def close(self) -> None:
        raise OSError("still on fire")


def test_fan_out_isolates_a_failing_sink(
    tmp_path: Path, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    path = tmp_path / "out.jsonl"
    fan_out = FanOut(
        [
            Exploding(registry),
            FileSink(path, counters(registry, "file")),
            JsonLinesSink(counters(registry, "stdout"), stream),
        ],
        PIPELINE,
    )
    with caplog.at_level(logging.ERROR, "kubevision.worker.sinks"):
        fan_out.publish([event("door", 1)])
        fan_out.publish([event("door", 2), event("door", 3)])
        fan_out.publish([])
        fan_out.close()
    assert len(path.read_text().splitlines()) == 3
    assert len(stream.getvalue().splitlines()) == 3
    assert counted(registry, "exploding")["failed"] == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == [
        "event sink publish failed",  # once per run of failures, not per batch
        "event sink close failed",
    ]
    assert "sink=exploding" in errors[0].getMessage()


def test_build_sinks_reads_credentials_from_env_and_shares_counters(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    outputs = [
        Output(type="stdout"),
        Output(type="file", path=str(tmp_path / "events.jsonl")),
        Output(
            type="webhook",
            url=f"http://127.0.0.1:{free_port()}/hook",
            credentials_secret_ref=SecretKeyNames(name="hook"),
        ),
    ]
    with pytest.raises(SinkConfigError, match="KUBEVISION_OUTPUT_2_PASSWORD is not set") as err:
        build_sinks(outputs, PIPELINE, registry, environ={"KUBEVISION_OUTPUT_2_USERNAME": "u"})
    assert SECRET not in str(err.value)
    env = {"KUBEVISION_OUTPUT_2_USERNAME": "u", "KUBEVISION_OUTPUT_2_PASSWORD": SECRET}
    for _ in range(2):  # a new worker config rebuilds the sinks on the same registry
        fan_out = build_sinks(outputs, PIPELINE, registry, environ=env)
        assert [s.kind for s in fan_out.sinks] == ["stdout", "file", "webhook"]
        fan_out.publish([event("door", 1)])
        fan_out.close()
        assert SECRET not in repr(fan_out)
    assert counted(registry, "file")["published"] == 2


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (Output(type="file"), "needs a path"),
        (Output(type="mqtt", url="mqtt://broker:1883"), "needs a topic"),
        (Output(type="mqtt", url="https://broker", topic="t"), "MQTT URL must be"),
        (Output(type="mqtt", url="mqtt://broker", topic="events/#"), "without wildcards"),
        (Output(type="webhook", url="mqtt://broker"), "webhook URL must be http"),
    ],
)
def test_build_sinks_rejects_incomplete_outputs(
    output: Output, message: str, registry: CollectorRegistry
) -> None:
    with pytest.raises(SinkConfigError, match=message):
        build_sinks([output], PIPELINE, registry, environ={})


def test_mqtt_loses_nothing_and_keeps_order_when_the_broker_dies_mid_stream(
    broker: Mosquitto, registry: CollectorRegistry
) -> None:
    """The broker stops with ~100 messages unacknowledged in paho and ~850 in the sink's queue:
    paho re-sends the former after reconnecting and the sink holds the latter back until then.
    QoS 1 may deliver twice; every event must arrive, first arrivals in publish order."""
    sink = MqttSink(
        f"mqtt://127.0.0.1:{broker.port}", TOPIC, counters(registry, "mqtt"), reconnect_max_delay=1
    )
    sent = [event("door", i) for i in range(3000)]
    try:
        with subscriber(broker.port) as sub:
            wait_for(lambda: sink.connected, timeout=10, what="the sink to connect")
            for i in range(0, 1000, 10):
                sink.publish(sent[i : i + 10])
            wait_for(
                lambda: counted(registry, "mqtt")["published"] >= 50,
                timeout=10,
                interval=0.001,
                what="the first acknowledgements",
            )
            broker.stop()
            for i in range(1000, 3000, 10):
                sink.publish(sent[i : i + 10])
            broker.start()
            wait_for(
                lambda: len({e.track_id for _, e in sub.received()}) == len(sent),
                timeout=30,
                what="every event",
            )
            first_arrivals: dict[int, TrackEvent] = {}
            for _, e in sub.received():
                first_arrivals.setdefault(e.track_id, e)
            assert list(first_arrivals.values()) == sent
            wait_for(lambda: sink.pending == 0, timeout=10, what="all acknowledged")
    finally:
        sink.close()
    assert counted(registry, "mqtt") == {"published": 3000.0, "failed": 0.0, "dropped": 0.0}
