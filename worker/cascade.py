"""The cloud half of the edge→cloud cascade: ``kubevision-worker cascade`` consumes the track
events an edge Pipeline sends upstream (MQTT or Kafka, with their JPEG snapshots), runs a
heavier classifier on the crops and publishes the enriched events to its own outputs.

Why a worker mode and not a Pipeline of Cameras: the cloud stage has no video, no sampling and
no tracker; its unit of work is an event, and it scales the way consumers scale (Kafka
consumer-group partitions, MQTT shared subscriptions), not by sharding cameras over
StatefulSet replicas. A Pipeline with ``spec.source`` is rendered by the operator into one
StatefulSet running this mode, its config file (:class:`CascadeConfig`) a ConfigMap, like a
worker's.

Delivery, end to end: at least once. An event is acknowledged to its broker (MQTT PUBACK with
a persistent session, ``clean_session`` off; Kafka offset stored for the group's commit) only
after its enriched form was appended to every output's spool, so neither a cloud worker that
dies nor an output that is down loses events; the broker keeps them meanwhile (MQTT: the
session's queue; Kafka: the log). Events without a snapshot (``track.ended``, or a crop that
could not be read) go out unchanged, in the order they came, so consumers see every event.

A snapshot is read from its URI (``data:`` inline, ``s3://`` through the MinIO client,
``file://`` on a shared volume) and checked against the event's size and SHA-256 before it is
classified; one that does not match is not classified (counted ``snapshot_error``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from kubevision.api.pipeline import EventSource
from kubevision.api.worker_config import CascadeConfig, CredentialEnv
from kubevision.worker.backends.base import BackendChoice, create_backend
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.events import Classification, Snapshot, TrackEvent
from kubevision.worker.health import Health
from kubevision.worker.models import resolve_artifact, s3_client
from kubevision.worker.sinks import FanOut, safe_url

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger("kubevision.worker.cascade")

_MQTT_PORTS = {"mqtt": 1883, "tcp": 1883}
_POLL_SECONDS = 0.2
Result = Literal["enriched", "passed", "snapshot_error", "invalid"]
RESULTS: tuple[Result, ...] = ("enriched", "passed", "snapshot_error", "invalid")
DEFAULT_GROUP = "kubevision-cascade"
"""The Kafka group / MQTT session of a config without one (the operator always names one)."""


class CascadeError(RuntimeError):
    """The cascade's config cannot run (bad source URL, credentials not set)."""


def load_cascade_config(path: Path) -> CascadeConfig:
    try:
        return CascadeConfig.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise CascadeError(f"cascade config {path} does not exist") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CascadeError(
            f"cascade config {path} is invalid at {first['loc']}: {first['msg']}"
        ) from exc


# -- consumers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One message from the broker and how to acknowledge it (after it was handled)."""

    payload: bytes
    ack: Callable[[], None]


Deliver = Callable[[Delivery], None]


class Consumer(Protocol):
    @property
    def connected(self) -> bool: ...

    def close(self) -> None: ...


class MqttConsumer:
    """A persistent MQTT session (QoS 1, manual acknowledgement) on ``<topic>/+``: the broker
    keeps what is not acknowledged, across reconnections and restarts of this worker."""

    def __init__(self, source: EventSource, deliver: Deliver) -> None:
        parts = urlsplit(source.url)
        if parts.scheme not in _MQTT_PORTS or not parts.hostname:
            raise CascadeError(
                f"MQTT source must be mqtt://host[:port], got {safe_url(source.url)}"
            )
        self._topic = f"{source.topic.rstrip('/')}/+"
        self._deliver = deliver
        self._connected = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=source.group or DEFAULT_GROUP,
            clean_session=False,
            manual_ack=True,
        )
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        client.connect_async(parts.hostname, parts.port or _MQTT_PORTS[parts.scheme], 60)
        client.loop_start()

    @property
    def connected(self) -> bool:
        return self._connected

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT source refused the connection: %s", reason)
            return
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        self._connected = True  # the broker has the subscription: nothing published is missed
        log.info("cascade subscribed: topic=%s", self._topic, extra={"topic": self._topic})

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        mid = msg.mid

        def ack() -> None:
            client.ack(mid, 1)

        self._deliver(Delivery(bytes(msg.payload), ack))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class KafkaConsumer:
    """A member of a Kafka consumer group; an offset is stored only once its event was
    handled, and committed by librdkafka's auto-commit (so at least once).

    Every call into the consumer happens on its own poll thread: confluent-kafka serialises
    concurrent calls to one Consumer, and a poll loop holding it starved a ``store_offsets``
    from the cascade's thread for good (nothing was acknowledged past the first batch).
    Acknowledgements are queued here and stored by the poll thread before each poll, before
    a rebalance takes partitions away, and at close, before the final commit.
    """

    def __init__(self, source: EventSource, deliver: Deliver) -> None:
        from confluent_kafka import Consumer as RdConsumer

        from kubevision.worker.kafka_sink import bootstrap_servers

        hosts, protocol = bootstrap_servers(source.url)
        self._consumer = RdConsumer(
            {
                "bootstrap.servers": hosts,
                "security.protocol": protocol,
                "group.id": source.group or DEFAULT_GROUP,
                # a new group starts at the oldest event the edge left, not at the log's end
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                # a topic the edge creates after this worker subscribed is found within 10 s
                # (librdkafka's default looks again only every 5 minutes)
                "topic.metadata.refresh.interval.ms": 10_000,
            }
        )
        self._consumer.subscribe(
            [source.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self._deliver = deliver
        self._handled: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._assigned = False
        self._thread = threading.Thread(target=self._run, name="cascade-kafka", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._assigned

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        self._assigned = True

    def _on_revoke(self, consumer: Any, partitions: Any) -> None:
        self._store_handled()  # auto-commit commits them as the partitions go

    def _run(self) -> None:
        while not self._stop.is_set():
            self._store_handled()
            message = self._consumer.poll(_POLL_SECONDS)
            if message is None:
                continue
            if message.error():
                log.warning("Kafka source: %s", message.error())
                continue
            self._deliver(Delivery(message.value() or b"", self._acker(message)))

    def _acker(self, message: Message) -> Callable[[], None]:
        def ack() -> None:  # any thread: the poll thread stores it
            self._handled.put(message)

        return ack

    def _store_handled(self) -> None:
        """Store the offsets of the events handled since the last call (poll thread only)."""
        from confluent_kafka import KafkaException

        while True:
            try:
                message = self._handled.get_nowait()
            except queue.Empty:
                return
            try:
                self._consumer.store_offsets(message)
            except KafkaException as exc:  # its partition went to another member: it is
                log.info("Kafka offset not stored (redelivered): %s", exc)  # read again

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._thread.is_alive():
            log.warning("Kafka source: the poll thread did not stop; offsets not committed")
            return
        self._store_handled()
        self._consumer.close()  # commits the stored offsets


# -- snapshots --------------------------------------------------------------------------------


class SnapshotReader:
    """The JPEG bytes behind a snapshot URI, checked against the event's size and SHA-256."""

    def __init__(
        self,
        endpoint: str | None = None,
        credentials: CredentialEnv | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._endpoint = endpoint
        self._keys = None
        if credentials is not None:
            names = (credentials.username_env, credentials.password_env)
            if not all(environ.get(n) for n in names):
                raise CascadeError(f"snapshot store credentials not set: {', '.join(names)}")
            self._keys = (environ[names[0]], environ[names[1]])
        self._s3: Any = None

    def read(self, snapshot: Snapshot) -> bytes:
        data = self._fetch(snapshot.uri)
        if len(data) != snapshot.size or hashlib.sha256(data).hexdigest() != snapshot.sha256:
            raise ValueError(f"snapshot {_shown(snapshot.uri)} does not match its size/sha256")
        return data

    def _fetch(self, uri: str) -> bytes:
        scheme = uri.split(":", 1)[0]
        if scheme == "data":
            header, _, body = uri.partition(",")
            if not header.endswith(";base64"):
                raise ValueError("a data: snapshot must be base64")
            return base64.b64decode(body, validate=True)
        parts = urlsplit(uri)
        if scheme == "file":
            return Path(unquote(parts.path)).read_bytes()
        if scheme == "s3":
            if self._s3 is None:
                self._s3 = s3_client(self._endpoint, self._keys)
            response = self._s3.get_object(parts.netloc, parts.path.lstrip("/"))
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()
        raise ValueError(f"unsupported snapshot URI scheme {scheme!r}")


def _shown(uri: str) -> str:
    return uri[:40] + "..." if uri.startswith("data:") else uri


# -- the cascade ------------------------------------------------------------------------------


class CascadeMetrics:
    """``kubevision_cascade_events_total`` by result (enriched, passed: no snapshot,
    snapshot_error, invalid: not an event), ``kubevision_cascade_classify_seconds`` per
    classifier call and ``kubevision_cascade_lag_seconds``: edge publish to cloud publish."""

    def __init__(self, registry: CollectorRegistry, pipeline: str) -> None:
        self.pipeline = pipeline
        self.events = Counter(
            "kubevision_cascade_events",
            "Edge events the cascade handled, by result.",
            ["pipeline", "result"],
            registry=registry,
        )
        for result in RESULTS:
            self.events.labels(pipeline, result)
        self.classify = Histogram(
            "kubevision_cascade_classify_seconds",
            "Time of one classifier call on a batch of crops.",
            ["pipeline"],
            registry=registry,
        )
        self.lag = Histogram(
            "kubevision_cascade_lag_seconds",
            "From the edge worker publishing an event to the cascade publishing it enriched.",
            ["pipeline"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )

    def count(self, result: Result, n: int = 1) -> None:
        if n:
            self.events.labels(self.pipeline, result).inc(n)


class Cascade:
    """Consumes edge events, classifies their crops in batches, publishes them enriched."""

    def __init__(
        self,
        config: CascadeConfig,
        classifier: CropClassifier,
        sink: FanOut,
        metrics: CascadeMetrics,
        health: Health,
        *,
        reader: SnapshotReader | None = None,
        queue_size: int = 256,
    ) -> None:
        self._config = config
        self._classifier = classifier
        self._sink = sink
        self._metrics = metrics
        self._health = health
        self._reader = reader or SnapshotReader(
            config.snapshot_endpoint, config.snapshot_credentials
        )
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cascade", daemon=True)
        self._consumer: Consumer | None = None

    def start(self) -> None:
        source = self._config.source
        scheme = source.url.split("://", 1)[0]
        make = KafkaConsumer if scheme == "kafka" else MqttConsumer
        self._thread.start()
        self._consumer = make(source, self._enqueue)
        log.info(
            "cascade started pipeline=%s source=%s topic=%s classifier=%s",
            self._config.pipeline,
            safe_url(source.url),
            source.topic,
            self._config.classifier.variant,
        )

    def stop(self) -> None:
        """The batch in hand is published and acknowledged; what is only queued is not (the
        broker delivers it again); then the consumer closes (Kafka: commits what was
        acknowledged) and the outputs drain."""
        self._health.set_ready(False)
        self._stop.set()
        self._thread.join(30)
        if self._consumer is not None:
            self._consumer.close()
        self._sink.close()

    def _enqueue(self, delivery: Delivery) -> None:
        """Called by the consumer's thread: waits while the queue is full (the broker holds
        the rest: MQTT's in-flight window, Kafka's log), never forever."""
        while not self._stop.is_set():
            try:
                self._queue.put(delivery, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        batch: list[Delivery] = []
        while not self._stop.is_set():
            batch = batch or self._take()
            self._health.beat()
            # ready once subscribed (MQTT SUBACK, Kafka partitions assigned) and while connected
            self._health.set_ready(self._consumer is not None and self._consumer.connected)
            if not batch:
                continue
            try:
                events = self.enrich([d.payload for d in batch])
                self._sink.publish(events)
            except Exception:  # the worker goes on and tries the batch again (not skipped:
                # a Kafka offset acknowledged after it would commit past it)
                log.exception("cascade batch failed; trying it again")
                self._stop.wait(1.0)
                continue
            for delivery in batch:
                delivery.ack()
            batch = []

    def _take(self) -> list[Delivery]:
        try:
            batch = [self._queue.get(timeout=_POLL_SECONDS)]
        except queue.Empty:
            return []
        while len(batch) < self._config.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def enrich(self, payloads: Sequence[bytes]) -> list[TrackEvent]:
        """The enriched events of a batch, in order: each crop classified (one call), every
        event stamped with its publish time here; inline crops are not forwarded."""
        events: list[TrackEvent] = []
        crops: dict[int, np.ndarray] = {}
        for payload in payloads:
            try:
                event = TrackEvent.model_validate_json(payload)
            except ValidationError as exc:
                self._metrics.count("invalid")
                log.warning("cascade dropped a message that is not an event: %s", exc.errors()[0])
                continue
            if event.snapshot is not None:
                image = self._image(event.snapshot)
                if image is not None:
                    crops[len(events)] = image
            events.append(event)
        labels = self._classify(crops)
        now = dt.datetime.now(dt.UTC)
        out = []
        for i, event in enumerate(events):
            update: dict[str, Any] = {"published_time": now}
            if i in labels:
                update["classification"] = labels[i]
            if event.snapshot is not None and event.snapshot.uri.startswith("data:"):
                update["snapshot"] = None  # the crop stays here; the event says what it was
            self._metrics.lag.labels(self._metrics.pipeline).observe(
                (now - event.published_time).total_seconds()
            )
            out.append(event.model_copy(update=update))
        self._metrics.count("enriched", len(labels))
        self._metrics.count("passed", sum(1 for e in events if e.snapshot is None))
        return out

    def _image(self, snapshot: Snapshot) -> np.ndarray | None:
        try:
            data = self._reader.read(snapshot)
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError("not a decodable JPEG")
        except Exception as exc:  # noqa: BLE001 - any unreadable crop: the event goes on
            self._metrics.count("snapshot_error")
            log.warning("snapshot unreadable, event not classified: %s", exc)
            return None
        return image

    def _classify(self, crops: dict[int, np.ndarray]) -> dict[int, Classification]:
        if not crops:
            return {}
        started = time.perf_counter()
        requests = [
            (image, np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32))
            for image in crops.values()
        ]
        results = self._classifier.classify_many(requests)
        self._metrics.classify.labels(self._metrics.pipeline).observe(time.perf_counter() - started)
        labels = {}
        for index, (class_ids, scores) in zip(crops, results, strict=True):
            (name,) = self._classifier.names(class_ids[:, 0])
            labels[index] = Classification(label=name, score=min(1.0, float(scores[0, 0])))
        return labels


def build_classifier(
    config: CascadeConfig,
    *,
    model_search: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    backend: BackendChoice = "auto",
    labels_file: Path | None = None,
) -> CropClassifier:
    """The cascade's classifier, from its verified artifact."""
    model = config.classifier
    path = resolve_artifact(model.artifact, model_search, model.credentials)
    runtime = create_backend(model, path, device, intra_op_threads=threads, choice=backend)
    return CropClassifier(model, runtime, labels_file=labels_file)
