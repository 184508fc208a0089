"""Where events go: stdout, a file, a webhook or an MQTT broker, several side by side.

The pipeline calls :meth:`FanOut.publish` with each frame's events and must never wait on the
network, so the webhook and MQTT sinks only enqueue and a background thread delivers. Their
queues are bounded: while a destination is down the oldest events are dropped and counted,
rather than memory growing until the pod is killed. One failing sink never stops the others.

Counters, one set per registry, labelled ``pipeline`` and ``sink`` (the output type):
``kubevision_sink_events_published_total`` (written; webhook answered 2xx; MQTT PUBACK),
``kubevision_sink_events_failed_total`` (an error, or retries exhausted) and
``kubevision_sink_events_dropped_total`` (discarded unsent: queue full, or left at close).

Credentials: an output with ``credentialsSecretRef`` gets its username and password from the
env vars ``KUBEVISION_OUTPUT_<index>_USERNAME`` and ``KUBEVISION_OUTPUT_<index>_PASSWORD``,
``<index>`` being its position in ``WorkerConfig.outputs`` (:func:`output_credential_env`; the
pod renders them with ``secretKeyRef``). Webhooks send them as HTTP Basic auth, MQTT in
CONNECT. They never appear in logs, reprs or exception messages, and URLs are logged as
``scheme://host:port`` only (a path or query may carry a token).

MQTT: one QoS 1 message per event on ``<topic>/<camera>``, so a consumer subscribes to one
camera or to ``<topic>/+`` and a broker can grant ACLs per camera; the payload names the camera
as well. Messages of one camera (of the whole sink, in fact) arrive in publish order, also
across reconnections.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import random
import ssl
import sys
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TextIO
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from kubevision.api.pipeline import Output
from kubevision.api.worker_config import output_credential_env
from kubevision.worker.events import TrackEvent

log = logging.getLogger("kubevision.worker.sinks")

_WEBHOOK_SCHEMES = ("http", "https")
_MQTT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 80, "wss": 443}
_MQTT_TLS = ("mqtts", "ssl", "wss")
_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
_RETRY_STATUSES = frozenset({408, 429})
"""Besides 5xx: statuses after which the same request may succeed later."""


class SinkConfigError(ValueError):
    """An output cannot be built (missing URL, unknown scheme, unset credentials env var)."""


@dataclass(frozen=True)
class Credentials:
    """A username and a password that reprs show as ``**********``."""

    username: str
    password: SecretStr


def credentials_from_env(index: int, environ: Mapping[str, str]) -> Credentials:
    names = output_credential_env(index)
    missing = [n for n in (names.username_env, names.password_env) if n not in environ]
    if missing:
        raise SinkConfigError(
            f"outputs[{index}] names a credentials Secret but {', '.join(missing)} is not set"
        )
    return Credentials(environ[names.username_env], SecretStr(environ[names.password_env]))


def safe_url(url: str) -> str:
    """``scheme://host:port`` of ``url``: what logs and reprs may show of it."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


# -- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkCounters:
    """The counters of one sink type of one pipeline, labels bound."""

    published: Counter
    failed: Counter
    dropped: Counter


class SinkMetrics:
    """The three event counters on one registry; :meth:`on` creates them once per registry.

    Sinks are rebuilt when a new worker config arrives, without a restart; registering the
    counters again on the same registry would fail, and they must keep counting anyway.
    """

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, SinkMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["pipeline", "sink"]
        self.published = Counter(
            "kubevision_sink_events_published",
            "Events a sink delivered (written, answered 2xx or acknowledged by the broker).",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            "kubevision_sink_events_failed",
            "Events a sink gave up on after an error or exhausted retries.",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            "kubevision_sink_events_dropped",
            "Events discarded unsent: the sink's queue was full, or they were left at close.",
            labels,
            registry=registry,
        )

    @classmethod
    def on(cls, registry: CollectorRegistry) -> SinkMetrics:
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics

    def bind(self, pipeline: str, sink: str) -> SinkCounters:
        return SinkCounters(
            self.published.labels(pipeline, sink),
            self.failed.labels(pipeline, sink),
            self.dropped.labels(pipeline, sink),
        )


# -- sinks ------------------------------------------------------------------------------------


class Sink(Protocol):
    """A destination for events. ``publish`` must return quickly; ``close`` flushes."""

    @property
    def kind(self) -> str:
        """The output type (stdout, file, webhook, mqtt): the ``sink`` label and log field."""
        ...

    @property
    def counters(self) -> SinkCounters: ...

    def publish(self, events: list[TrackEvent]) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line on a text stream (stdout by default), flushed per batch."""

    kind = "stdout"

    def __init__(self, counters: SinkCounters, stream: TextIO | None = None) -> None:
        self.counters = counters
        self._stream = sys.stdout if stream is None else stream
        self._lock = threading.Lock()  # cameras publish from their own threads

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"

    def publish(self, events: list[TrackEvent]) -> None:
        text = "".join(event.to_json() + "\n" for event in events)
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
        self.counters.published.inc(len(events))

    def close(self) -> None:
        with self._lock:
            self._stream.flush()


class FileSink(JsonLinesSink):
    """JSON Lines appended to a file on the worker (line-buffered; no rotation)."""

    kind = "file"

    def __init__(self, path: Path, counters: SinkCounters) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = path.open("a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise SinkConfigError(f"cannot open event file {path}: {exc.strerror}") from exc
        super().__init__(counters, stream)

    def __repr__(self) -> str:
        return f"FileSink(path={str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._stream.close()


class _QueuedSink:
    """What the sinks that send from a background thread share: ``publish`` only enqueues, and
    a full queue drops its oldest events (counted, warned once per episode) rather than block
    the pipeline."""

    kind: str
    counters: SinkCounters
    _queue: deque[TrackEvent]
    _cond: threading.Condition
    _dropping: bool
    _safe_url: str

    def _is_closing(self) -> bool:
        raise NotImplementedError

    def publish(self, events: list[TrackEvent]) -> None:
        """Enqueue without blocking; when full, the oldest queued events make room."""
        with self._cond:
            if self._is_closing():
                overflow = len(events)
            else:
                overflow = _enqueue(self._queue, events)
                self._cond.notify_all()
            first_drop = overflow > 0 and not self._dropping
            self._dropping = self._dropping or overflow > 0
        if overflow:
            self.counters.dropped.inc(overflow)
        if first_drop:
            log.warning(
                "%s queue full, dropping the oldest events: sink=%s url=%s",
                self.kind,
                self.kind,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url},
            )


class WebhookSink(_QueuedSink):
    """POSTs JSON arrays of events from a background thread, retrying transient failures.

    Connection errors, timeouts, 408, 429 and 5xx are retried up to ``max_attempts`` times
    with capped exponential backoff and jitter, or after ``Retry-After`` when the server says
    so; other answers fail the batch at once. Delivery is at least once: a timed-out request
    may have arrived. ``close`` drains the queue for up to ``drain_timeout`` seconds.
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        counters: SinkCounters,
        *,
        credentials: Credentials | None = None,
        queue_size: int = 10_000,
        batch_max: int = 100,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = 300.0,
        timeout: float = 5.0,
        drain_timeout: float = 5.0,
    ) -> None:
        if urlsplit(url).scheme not in _WEBHOOK_SCHEMES:
            raise SinkConfigError(f"webhook URL must be http(s), got {safe_url(url)}")
        self.counters = counters
        self._url = url
        self._safe_url = safe_url(url)
        self._batch_max = batch_max
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        self._drain_timeout = drain_timeout
        _quiet_httpx()
        auth = None
        if credentials is not None:
            auth = httpx.BasicAuth(credentials.username, credentials.password.get_secret_value())
        self._client = httpx.Client(
            auth=auth,
            timeout=timeout,
            headers={"Content-Type": "application/json", "User-Agent": "kubevision-worker"},
        )
        self._queue: deque[TrackEvent] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._failing = False
        self._dropping = False
        self._sender = threading.Thread(target=self._run, name="sink-webhook", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"WebhookSink(url={self._safe_url!r})"

    @property
    def pending(self) -> int:
        """Events queued and not yet taken by the sender."""
        with self._cond:
            return len(self._queue)

    def _is_closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        with self._cond:
            self._closing.set()
            self._cond.notify_all()
        self._sender.join(self._drain_timeout)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.counters.dropped.inc(left)
            log.warning(
                "webhook closed with %d events undelivered: sink=webhook url=%s",
                left,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url, "dropped": left},
            )

    def _run(self) -> None:
        try:
            while batch := self._take():
                try:
                    self._deliver(batch)
                except Exception as exc:  # noqa: BLE001 - the sender must outlive a bad batch
                    self.counters.failed.inc(len(batch))
                    self._failed(self._scrub(exc), len(batch))
        finally:
            self._client.close()

    def _take(self) -> list[TrackEvent]:
        """The next batch, waiting for one; empty once closing and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closing.is_set())
            count = min(len(self._queue), self._batch_max)
            return [self._queue.popleft() for _ in range(count)]

    def _deliver(self, batch: list[TrackEvent]) -> None:
        body = ("[" + ",".join(event.to_json() for event in batch) + "]").encode()
        problem = ""
        for attempt in range(1, self._max_attempts + 1):
            retry_after = None
            try:
                response = self._client.post(self._url, content=body)
            except httpx.TransportError as exc:
                problem = self._scrub(exc)
            else:
                if response.is_success:
                    self.counters.published.inc(len(batch))
                    self._recovered()
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUSES:
                    break
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt == self._max_attempts or self._closing.is_set():
                break
            delay = self._backoff(attempt) if retry_after is None else retry_after
            log.debug(
                "webhook attempt %d failed (%s); retrying in %.2fs",
                attempt,
                problem,
                delay,
                extra={"sink": self.kind, "url": self._safe_url, "attempt": attempt},
            )
            self._closing.wait(min(delay, self._retry_after_cap))
        self.counters.failed.inc(len(batch))
        self._failed(problem, len(batch))

    def _scrub(self, exc: Exception) -> str:
        """The error as text, the URL (whose query may hold a token) cut to its host."""
        return f"{type(exc).__name__}: {exc}".replace(self._url, self._safe_url)

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so many workers do not retry in lockstep."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _failed(self, problem: str, count: int) -> None:
        """Log when delivery starts failing (then debug only, not once per batch)."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(
            level,
            "webhook gave up on %d events: sink=webhook url=%s error=%s",
            count,
            self._safe_url,
            problem,
            extra={"sink": self.kind, "url": self._safe_url, "error": problem, "failed": count},
        )

    def _recovered(self) -> None:
        with self._cond:
            self._dropping = False
        if self._failing:
            self._failing = False
            log.info(
                "webhook delivering again: sink=webhook url=%s",
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url},
            )


def _enqueue(queue: deque[TrackEvent], events: list[TrackEvent]) -> int:
    """Append to a bounded deque; returns how many of the oldest events fell out."""
    overflow = max(0, len(queue) + len(events) - (queue.maxlen or 0))
    queue.extend(events)
    return overflow


def _quiet_httpx() -> None:
    """httpx logs every request with its full URL at INFO: a line per batch, and a webhook's
    query may carry a token. Raise it to WARNING unless someone configured it explicitly."""
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait per a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


class MqttSink(_QueuedSink):
    """Publishes one QoS 1 message per event on ``<topic>/<camera>`` through paho-mqtt.

    paho connects in its own thread and reconnects on its own. Events wait in a bounded queue
    (oldest dropped when full) and a sender thread hands them to paho only while connected, at
    most ``inflight_max`` unacknowledged. Messages unacknowledged when the connection dropped
    are re-sent by paho after reconnecting, before any newer one, so order is kept.
    """

    kind = "mqtt"

    def __init__(
        self,
        url: str,
        topic: str,
        counters: SinkCounters,
        *,
        credentials: Credentials | None = None,
        queue_size: int = 10_000,
        inflight_max: int = 100,
        keepalive: int = 60,
        reconnect_max_delay: int = 30,
        drain_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _MQTT_PORTS or not parts.hostname:
            raise SinkConfigError(
                f"MQTT URL must be one of {', '.join(_MQTT_PORTS)}://host[:port], "
                f"got {safe_url(url)}"
            )
        base = topic.rstrip("/")
        if not base or any(c in base for c in "+#\0"):
            raise SinkConfigError(f"MQTT topic must be non-empty without wildcards: {topic!r}")
        self.counters = counters
        self._safe_url = safe_url(url)
        self._topic = base
        self._drain_timeout = drain_timeout
        self._queue: deque[TrackEvent] = deque(maxlen=queue_size)
        self._inflight_max = inflight_max
        self._cond = threading.Condition()
        self._connected = False
        self._resync = False  # unacknowledged messages await paho's re-send
        self._unacked = 0
        self._closing = False
        self._stopped = False
        self._problem_logged = False
        self._dropping = False

        transport: Literal["tcp", "websockets"] = (
            "websockets" if parts.scheme in ("ws", "wss") else "tcp"
        )
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kubevision-{uuid.uuid4().hex[:12]}",
            transport=transport,
        )
        if transport == "websockets":
            client.ws_set_options(path=parts.path or "/mqtt")
        if parts.scheme in _MQTT_TLS:
            client.tls_set_context(ssl.create_default_context())
        if credentials is not None:
            client.username_pw_set(credentials.username, credentials.password.get_secret_value())
        client.max_inflight_messages_set(inflight_max)
        client.reconnect_delay_set(1, reconnect_max_delay)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._sender = threading.Thread(target=self._run, name="sink-mqtt", daemon=True)
        self._sender.start()
        client.connect_async(parts.hostname, parts.port or _MQTT_PORTS[parts.scheme], keepalive)
        client.loop_start()

    def __repr__(self) -> str:
        return f"MqttSink(url={self._safe_url!r}, topic={self._topic!r})"

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def pending(self) -> int:
        """Events queued or sent and not yet acknowledged."""
        with self._cond:
            return len(self._queue) + self._unacked

    def topic_for(self, camera: str) -> str:
        """``<topic>/<camera>``; characters MQTT reserves in topics become ``_``."""
        return f"{self._topic}/{camera.translate(_TOPIC_UNSAFE)}"

    def _is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Wait up to ``drain_timeout`` for queued events to be acknowledged, then disconnect.

        A sink disconnected at close (broker down, credentials refused) does not wait: the
        worker's shutdown must not hang on a broker that may never come back.
        """
        with self._cond:
            self._closing = True
            self._cond.wait_for(
                lambda: not self._connected or not (self._queue or self._unacked),
                self._drain_timeout,
            )
            self._stopped = True
            self._cond.notify_all()
        self._sender.join()
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            left, unacked = len(self._queue), self._unacked
            self._queue.clear()
            self._unacked = 0
        if left:
            self.counters.dropped.inc(left)
        if unacked:
            self.counters.failed.inc(unacked)
        if left or unacked:
            log.warning(
                "MQTT closed with %d events unsent and %d unacknowledged: sink=mqtt url=%s",
                left,
                unacked,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url},
            )

    def _can_send(self) -> bool:
        return (
            self._connected
            and not self._resync
            and self._unacked < self._inflight_max
            and bool(self._queue)
        )

    def _run(self) -> None:
        """Hands queued events to paho; never holds our lock while calling paho (whose
        callbacks take it while holding paho's own locks)."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._can_send())
                if self._stopped:
                    return
                event = self._queue.popleft()
                self._unacked += 1
            info = self._client.publish(self.topic_for(event.camera), event.to_json(), qos=1)
            # NO_CONN: the connection dropped just now; paho keeps the message and re-sends it
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                with self._cond:
                    self._unacked -= 1
                self.counters.failed.inc()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self._log_problem("MQTT broker refused the connection", str(reason))
            return
        with self._cond:
            self._connected = True
            self._problem_logged = False
            self._cond.notify_all()
        log.info(
            "MQTT connected: sink=mqtt url=%s",
            self._safe_url,
            extra={"sink": self.kind, "url": self._safe_url},
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        with self._cond:
            self._connected = False
            self._resync = self._unacked > 0
            closing = self._closing
        if not closing:
            self._log_problem("MQTT disconnected, queueing events", str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        with self._cond:
            self._unacked -= 1
            if not self._unacked:
                self._resync = False
            if not reason.is_failure:
                self._dropping = False
            self._cond.notify_all()
        (self.counters.failed if reason.is_failure else self.counters.published).inc()

    def _log_problem(self, message: str, reason: str) -> None:
        """Warn once per outage (paho retries every few seconds), not once per attempt."""
        with self._cond:
            first, self._problem_logged = not self._problem_logged, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: sink=mqtt url=%s reason=%s",
            message,
            self._safe_url,
            reason,
            extra={"sink": self.kind, "url": self._safe_url, "reason": reason},
        )


# -- fan-out ----------------------------------------------------------------------------------


class FanOut:
    """Publishes every batch to every sink; a sink's exception is counted and logged, and the
    others still get the batch."""

    def __init__(self, sinks: Sequence[Sink], pipeline: str) -> None:
        self.sinks = tuple(sinks)
        self.pipeline = pipeline
        self._failing = [False] * len(self.sinks)

    def __repr__(self) -> str:
        return f"FanOut(pipeline={self.pipeline!r}, sinks={list(self.sinks)!r})"

    def publish(self, events: list[TrackEvent]) -> None:
        if not events:
            return
        for index, sink in enumerate(self.sinks):
            try:
                sink.publish(events)
            except Exception as exc:  # noqa: BLE001 - one sink must never stop the others
                sink.counters.failed.inc(len(events))
                self._report(index, sink, exc)
            else:
                self._failing[index] = False

    def close(self) -> None:
        for index, sink in enumerate(self.sinks):
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - close the others regardless
                self._log_failure(logging.ERROR, index, sink, "close", exc)

    def _report(self, index: int, sink: Sink, exc: Exception) -> None:
        """Log the first failure of a run of failures as an error, the rest at debug level."""
        level = logging.DEBUG if self._failing[index] else logging.ERROR
        self._failing[index] = True
        self._log_failure(level, index, sink, "publish", exc)

    def _log_failure(self, level: int, index: int, sink: Sink, action: str, exc: Exception) -> None:
        log.log(
            level,
            "event sink %s failed: sink=%s output=%d pipeline=%s error=%s",
            action,
            sink.kind,
            index,
            self.pipeline,
            type(exc).__name__,
            exc_info=exc,
            extra={"sink": sink.kind, "output": index, "pipeline": self.pipeline},
        )


def build_sinks(
    outputs: Sequence[Output],
    pipeline: str,
    registry: CollectorRegistry,
    *,
    environ: Mapping[str, str] | None = None,
) -> FanOut:
    """One sink per output, in order, behind a :class:`FanOut`.

    Raises :class:`SinkConfigError` (after closing the sinks already built) when an output is
    incomplete or its credentials env vars are unset.
    """
    env = os.environ if environ is None else environ
    metrics = SinkMetrics.on(registry)
    sinks: list[Sink] = []
    try:
        for index, output in enumerate(outputs):
            sinks.append(_build_sink(index, output, pipeline, metrics, env))
    except BaseException:
        FanOut(sinks, pipeline).close()
        raise
    log.info(
        "event sinks ready: pipeline=%s sinks=%s",
        pipeline,
        ",".join(s.kind for s in sinks) or "none",
        extra={"pipeline": pipeline, "sinks": [s.kind for s in sinks]},
    )
    return FanOut(sinks, pipeline)


def _build_sink(
    index: int, output: Output, pipeline: str, metrics: SinkMetrics, env: Mapping[str, str]
) -> Sink:
    counters = metrics.bind(pipeline, output.type)

    def required(value: str | None, what: str) -> str:
        if not value:
            raise SinkConfigError(f"outputs[{index}] of type {output.type} needs {what}")
        return value

    credentials = None
    if output.credentials_secret_ref is not None and output.type in ("webhook", "mqtt"):
        credentials = credentials_from_env(index, env)
    match output.type:
        case "stdout":
            return JsonLinesSink(counters)
        case "file":
            return FileSink(Path(required(output.path, "a path")), counters)
        case "webhook":
            return WebhookSink(required(output.url, "a url"), counters, credentials=credentials)
        case "mqtt":
            return MqttSink(
                required(output.url, "a url"),
                required(output.topic, "a topic"),
                counters,
                credentials=credentials,
            )
