"""The Kafka output against a real Apache Kafka broker (KRaft mode, from Maven Central on the
machine's Java; :mod:`tests.envtest.kafka`): events keyed by camera and in order per camera,
nothing lost or duplicated across broker crashes, and a disk spool that carries events across
a worker restart while the broker is down.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kubevision.api.pipeline import Output
from kubevision.worker.kafka_sink import KafkaSink
from kubevision.worker.sinks import SinkConfigError, SinkMetrics, build_sinks
from kubevision.worker.spool import Limits, Spool, SqliteSpool
from tests.envtest.kafka import KafkaBroker, TopicReader
from tests.envtest.poll import wait_for
from tests.envtest.sinks import sink_counts, track_event

PIPELINE = "depot"
CAMERAS = ("dock-1", "dock-2", "gate")


def _sink(
    kafka_broker: KafkaBroker, topic: str, spool: Spool | None = None, drain_timeout: float = 5.0
) -> tuple[KafkaSink, CollectorRegistry]:
    registry = CollectorRegistry()
    counters = SinkMetrics.on(registry).bind(PIPELINE, "kafka")
    url = f"kafka://{kafka_broker.bootstrap}"
    return KafkaSink(url, topic, counters, spool=spool, drain_timeout=drain_timeout), registry


def _per_camera(messages: list[tuple[int, bytes, bytes]]) -> dict[str, list[int]]:
    """Track ids per camera in arrival order; checks each message's key is its camera and that
    one camera's events all came from one partition."""
    ids: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for partition, key, value in messages:
        event = json.loads(value)
        assert key.decode() == event["camera"]
        ids[event["camera"]].append(event["trackId"])
        partitions[event["camera"]].add(partition)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    return dict(ids)


def _publish(sink: KafkaSink, count: int, rate: float) -> threading.Thread:
    """Publish ``count`` events round robin over the cameras at ``rate`` per second."""

    def run() -> None:
        start = time.monotonic()
        for n in range(count):
            sink.publish([track_event(PIPELINE, CAMERAS[n % len(CAMERAS)], n)])
            time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))

    thread = threading.Thread(target=run, name="publisher")
    thread.start()
    return thread


def _wait_for_more(reader: TopicReader, seen: int) -> None:
    wait_for(lambda: len(reader.messages()) > seen, timeout=60, what="events flowing")


def _expected(count: int) -> dict[str, list[int]]:
    return {c: [n for n in range(count) if CAMERAS[n % len(CAMERAS)] == c] for c in CAMERAS}


def test_events_keyed_by_camera_arrive_in_order(kafka_broker: KafkaBroker) -> None:
    sink, registry = _sink(kafka_broker, "events-order")
    reader = TopicReader(kafka_broker.bootstrap, "events-order")
    try:
        for n in range(0, 300, 10):
            sink.publish([track_event(PIPELINE, CAMERAS[i % 3], i) for i in range(n, n + 10)])
        wait_for(lambda: len(reader.messages()) >= 300, timeout=60, what="300 events read")
        assert _per_camera(reader.messages()) == _expected(300)
        wait_for(
            lambda: sink_counts(registry, PIPELINE, "kafka")["published"] == 300,
            timeout=10,
            what="300 delivery reports",
        )
    finally:
        sink.close()
        reader.close()


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_broker_restarts_lose_nothing_and_keep_each_cameras_order(
    kafka_broker: KafkaBroker, kill: bool
) -> None:
    topic = f"events-restart-{'kill' if kill else 'term'}"
    count, rate = 600, 40.0
    sink, registry = _sink(kafka_broker, topic)
    reader = TopicReader(kafka_broker.bootstrap, topic)
    try:
        publisher = _publish(sink, count, rate)
        for _ in range(2):
            _wait_for_more(reader, len(reader.messages()))
            kafka_broker.restart(kill=kill)
        publisher.join()
        wait_for(lambda: len(reader.messages()) >= count, timeout=120, what=f"{count} events")
        # idempotent producer: exactly once per event, in publish order per camera
        assert _per_camera(reader.messages()) == _expected(count)
        counts = sink_counts(registry, PIPELINE, "kafka")
        assert counts["published"] == count
        assert counts["failed"] == counts["dropped_spool_full"] == counts["pending"] == 0
    finally:
        sink.close()
        reader.close()


def test_a_disk_spool_carries_events_across_a_worker_restart_while_the_broker_is_down(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic, path, limits = "events-spool", tmp_path / "output-0-kafka.sqlite", Limits(10_000, 2**24)
    reader = TopicReader(kafka_broker.bootstrap, topic)
    try:
        kafka_broker.stop()
        first, registry = _sink(
            kafka_broker, topic, spool=SqliteSpool(path, limits), drain_timeout=0.5
        )
        for n in range(0, 200, 20):
            first.publish([track_event(PIPELINE, CAMERAS[i % 3], i) for i in range(n, n + 20)])
        first.close()  # the worker stops with the broker still down: the file keeps them
        assert sink_counts(registry, PIPELINE, "kafka")["dropped_closed"] == 0

        kafka_broker.start()
        second, _ = _sink(kafka_broker, topic, spool=SqliteSpool(path, limits))
        try:
            wait_for(lambda: len(reader.messages()) >= 200, timeout=90, what="200 spooled events")
            assert _per_camera(reader.messages()) == _expected(200)
            wait_for(lambda: second.pending == 0, timeout=10, what="the spool emptied")
        finally:
            second.close()
    finally:
        reader.close()


def test_kafka_outputs_are_built_from_the_pipeline_spec(kafka_broker: KafkaBroker) -> None:
    output = Output.model_validate(
        {"type": "kafka", "url": f"kafka://{kafka_broker.bootstrap}", "topic": "events-built"}
    )
    fanout = build_sinks([output], PIPELINE, CollectorRegistry())
    reader = TopicReader(kafka_broker.bootstrap, "events-built")
    try:
        fanout.publish([track_event(PIPELINE, "gate", 1)])
        wait_for(lambda: reader.messages(), timeout=60, what="the event on the topic")
        assert json.loads(reader.messages()[0][2])["camera"] == "gate"
    finally:
        fanout.close()
        reader.close()


@pytest.mark.parametrize(
    ("url", "topic"),
    [
        ("http://broker:9092", "t"),
        ("kafka://broker", "t"),
        ("kafka://broker:9092/path", "t"),
        ("kafka://broker:9092", "bad/topic"),
    ],
)
def test_bad_kafka_urls_and_topics_are_refused(url: str, topic: str) -> None:
    counters = SinkMetrics.on(CollectorRegistry()).bind(PIPELINE, "kafka")
    with pytest.raises(SinkConfigError):
        KafkaSink(url, topic, counters)
