"""Event sinks against real peers: a mosquitto broker, local HTTP servers, files.

The broker is the Debian ``mosquitto`` binary on a free port with its own config; webhooks
are ``ThreadingHTTPServer``s that answer from a script of statuses (:mod:`tests.envtest.sinks`).
Nothing is mocked. The outages that outlast the old retry budget, and a worker killed with its
spool on disk, are in ``tests/reliability/test_sinks_down.py``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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
from kubevision.worker.spool import Limits, MemorySpool
from tests.envtest.controlplane import REPO_ROOT, free_port
from tests.envtest.poll import wait_for
from tests.envtest.sinks import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Mosquitto,
    WebhookReceiver,
    sink_counts,
    subscriber,
    track_event,
    webhook,
)

PIPELINE = "shop"
TOPIC = "kubevision/shop"
SECRET = "hunter2-very-secret"


def event(camera: str, track_id: int, kind: str = "track.started") -> TrackEvent:
    return track_event(PIPELINE, camera, track_id, kind)


def counted(registry: CollectorRegistry, sink: str) -> dict[str, float]:
    """published, failed and dropped (all reasons) of ``sink``."""
    counts = sink_counts(registry, PIPELINE, sink)
    return {
        "published": counts["published"],
        "failed": counts["failed"],
        "dropped": sum(v for k, v in counts.items() if k.startswith("dropped_")),
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def counters(registry: CollectorRegistry, sink: str) -> SinkCounters:
    return SinkMetrics.on(registry).bind(PIPELINE, sink)


# -- MQTT -------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make system-packages)")
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


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
        with subscriber(broker.port, TOPIC) as sub:
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
        spool=MemorySpool(Limits(max_events=5, max_bytes=2**20)),
        reconnect_max_delay=1,
    )
    try:
        with subscriber(broker.port, TOPIC) as sub:
            wait_for(lambda: sink.connected, timeout=10, what="the sink to connect")
            broker.stop()
            wait_for(lambda: not sink.connected, timeout=10, what="the sink to notice")
            sink.publish([event("door", i) for i in range(8)])
            sink.publish([event("door", 8), event("door", 9)])
            assert sink.pending == 5
            assert sink_counts(registry, PIPELINE, "mqtt")["dropped_spool_full"] == 5
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
        with subscriber(broker.port, TOPIC, ("reader", "reader-pw")) as sub:
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


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """The URL of a port that takes connections and never answers (it never accepts: the
    kernel completes the handshakes), so a request to it hangs until its timeout."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/events"


def test_webhook_down_bounds_the_spool_and_never_blocks_the_caller(
    registry: CollectorRegistry, silent_listener: str
) -> None:
    """A destination that never answers: its requests hang for the whole 1 s timeout, yet no
    publish waits for them (none takes half of it, however loaded the machine), the spool
    stays at its bound and exactly the overflow is dropped."""
    sink = WebhookSink(
        silent_listener,
        counters(registry, "webhook"),
        spool=MemorySpool(Limits(max_events=50, max_bytes=2**20)),
        batch_max=10,
        backoff_base=0.01,
        backoff_cap=0.05,
        timeout=1.0,
        drain_timeout=2,
    )
    slowest = 0.0
    try:
        for i in range(500):
            started = time.perf_counter()
            sink.publish([event("door", i)])
            slowest = max(slowest, time.perf_counter() - started)
            assert sink.pending <= 50
        # retried without end: nothing given up on, exactly the overflow dropped
        counts = sink_counts(registry, PIPELINE, "webhook")
        assert counts["failed"] == 0
        assert counts["dropped_spool_full"] == 450
        assert counts["pending"] == sink.pending == 50
    finally:
        closing = time.monotonic()
        sink.close()
        # the drain time, then at most the request in flight
        assert time.monotonic() - closing < 2 + 1.0 + 0.5
    assert slowest < 0.5, f"publish waited {slowest:.2f} s: on the network"
    totals = sink_counts(registry, PIPELINE, "webhook")
    assert totals["published"] == totals["failed"] == 0
    assert totals["dropped_closed"] == 50, "a memory spool loses what it holds at close"
    assert totals["dropped_spool_full"] + totals["dropped_closed"] == 500
    assert totals["pending"] == 0, "a closed sink no longer counts as pending"


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
        with subscriber(broker.port, TOPIC) as sub:
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


FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from kubevision.worker.sinks import SinkMetrics, WebhookSink
from kubevision.worker.spool import Limits, SqliteSpool
from tests.envtest.poll import wait_for
from tests.envtest.sinks import sink_counts, track_event

url, folder = sys.argv[1], Path(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
registry = CollectorRegistry()
spool = SqliteSpool(folder / "spool.sqlite", Limits(100_000, 2**26))
sink = WebhookSink(url, SinkMetrics.on(registry).bind("shop", "webhook"), spool=spool,
                   backoff_base=0.05, backoff_cap=0.2)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # the disk fills up
n = 0
while sink_counts(registry, "shop", "webhook")["dropped_spool_error"] < 20:
    sink.publish([track_event("shop", "door", n)])
    n += 1
stored = sink.pending
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
for m in range(n, n + 10):
    sink.publish([track_event("shop", "door", m)])
print(json.dumps({"published": n + 10, "stored_when_full": stored, "pending": sink.pending}))
sys.stdout.flush()
sys.stdin.readline()  # the test starts the receiver, then says go
wait_for(lambda: sink.pending == 0, timeout=30, what="the spool to drain")
sink.close()
print(json.dumps(sink_counts(registry, "shop", "webhook")))
"""


def test_a_full_disk_drops_only_what_it_cannot_store_and_counts_it(tmp_path: Path) -> None:
    """A webhook sink in a process of its own whose disk spool cannot grow (RLIMIT_FSIZE, as on
    a full disk): the events it cannot store are counted as ``spool_error``, those stored
    before stay, storing resumes once there is room, and every stored event is delivered."""
    receiver = WebhookReceiver([(200, {})])  # not listening yet: everything stays spooled
    proc = subprocess.Popen(
        [sys.executable, "-c", FULL_DISK, receiver.url, str(tmp_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        spooled = json.loads(proc.stdout.readline())
        assert spooled["stored_when_full"] > 0
        assert spooled["pending"] == spooled["stored_when_full"] + 10, "storing resumed"
        receiver.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        counts = json.loads(proc.stdout.readline())
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        receiver.stop()
    delivered = [e.track_id for e in receiver.delivered()]
    assert counts["dropped_spool_error"] == 20
    assert counts["published"] == len(delivered) == spooled["published"] - 20
    assert delivered == sorted(delivered), "in order, the failed ones left out"
    assert counts["dropped_spool_full"] == counts["failed"] == 0
