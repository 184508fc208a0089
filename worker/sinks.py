"""Where events go: stdout, a file, a webhook or an MQTT broker, several side by side.

The pipeline calls :meth:`FanOut.publish` with each frame's events and must never wait on the
network, so the webhook and MQTT sinks only append to a spool (:mod:`.spool`: in memory, or a
SQLite file that outlives the process) and a background thread delivers, oldest first, and
deletes only what the destination acknowledged. A destination that is down or answers 5xx is
retried without end; the spool is bounded, so beyond its bounds the oldest events are dropped
and counted, rather than memory or disk growing until the pod is evicted. One failing sink
never stops the others. Delivery is at least once and in order per sink (README, "Delivery
semantics").

Metrics, one set per registry, labelled ``pipeline`` and ``sink`` (the output type):
``kubevision_sink_events_published_total`` (written; webhook answered 2xx; MQTT PUBACK),
``kubevision_sink_events_failed_total`` (refused for good: a 4xx other than 408/429),
``kubevision_sink_events_dropped_total`` with ``reason`` (:data:`DROP_REASONS`: discarded
unsent) and the gauge ``kubevision_sink_events_pending`` (spooled, not acknowledged yet).

Credentials: an output with ``credentialsSecretRef`` gets its username and password from the
env vars ``KUBEVISION_OUTPUT_<index>_USERNAME`` and ``KUBEVISION_OUTPUT_<index>_PASSWORD``,
``<index>`` being its position in ``WorkerConfig.outputs`` (:func:`output_credential_env`; the
pod renders them with ``secretKeyRef``). Webhooks send them as HTTP Basic auth, MQTT in
CONNECT. They never appear in logs, reprs or exception messages, and URLs are logged as
``scheme://host:port`` only (a path or query may carry a token).

MQTT: one QoS 1 message per event on ``<topic>/<camera>``, so a consumer subscribes to one
camera or to ``<topic>/+`` and a broker can grant ACLs per camera; the payload names the camera
as well. Messages of one camera (of the whole sink, in fact) arrive in publish order, also
across reconnections and restarts of a disk-spooled worker.
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
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TextIO
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import SecretStr

from kubevision.api.pipeline import Output
from kubevision.api.worker_config import SpoolConfig, output_credential_env
from kubevision.worker.events import TrackEvent
from kubevision.worker.spool import Limits, MemorySpool, Record, Spool, SpoolError, SqliteSpool

log = logging.getLogger("kubevision.worker.sinks")

_WEBHOOK_SCHEMES = ("http", "https")
_MQTT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 80, "wss": 443}
_MQTT_TLS = ("mqtts", "ssl", "wss")
_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
_RETRY_STATUSES = frozenset({408, 429})
"""Besides 5xx: statuses after which the same request may succeed later."""
DEFAULT_LIMITS = Limits(max_events=SpoolConfig().max_events, max_bytes=SpoolConfig().max_bytes)
"""A sink's memory spool when none is given (the worker config's defaults)."""


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

DropReason = Literal["spool_full", "closed", "spool_error"]
DROP_REASONS: tuple[DropReason, ...] = ("spool_full", "closed", "spool_error")
"""Why a sink discarded events unsent: its spool was full (the oldest made room), the sink
closed with them in a memory spool, or the spool could not store them (disk full, I/O)."""


class _HasPending(Protocol):
    @property
    def pending(self) -> int: ...


class PendingGauge:
    """The pending gauge of one (pipeline, sink type): the sum over that type's open sinks,
    read at scrape time (two webhooks of a pipeline share the label set)."""

    def __init__(self) -> None:
        self._sinks: weakref.WeakSet[_HasPending] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, sink: _HasPending) -> None:
        with self._lock:
            self._sinks.add(sink)

    def discard(self, sink: _HasPending) -> None:
        with self._lock:
            self._sinks.discard(sink)

    def total(self) -> float:
        with self._lock:
            sinks = list(self._sinks)
        return float(sum(s.pending for s in sinks))


@dataclass(frozen=True)
class SinkCounters:
    """The metrics of one sink type of one pipeline, labels bound."""

    published: Counter
    failed: Counter
    dropped: Mapping[DropReason, Counter]
    pending: PendingGauge

    def drop(self, reason: DropReason, count: int) -> None:
        if count:
            self.dropped[reason].inc(count)


class SinkMetrics:
    """The sink metrics on one registry; :meth:`on` creates them once per registry.

    Sinks are rebuilt when a new worker config arrives, without a restart; registering the
    metrics again on the same registry would fail, and they must keep counting anyway.
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
            "Events a sink gave up on: the destination refused them for good (HTTP 4xx).",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            "kubevision_sink_events_dropped",
            "Events discarded unsent, by reason: spool_full (the oldest made room), closed "
            "(left in a memory spool at close), spool_error (the spool could not store them).",
            [*labels, "reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "kubevision_sink_events_pending",
            "Events spooled and not acknowledged by the destination yet.",
            labels,
            registry=registry,
        )
        self._gauges: dict[tuple[str, str], PendingGauge] = {}

    @classmethod
    def on(cls, registry: CollectorRegistry) -> SinkMetrics:
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics

    def bind(self, pipeline: str, sink: str) -> SinkCounters:
        with self._lock:
            gauge = self._gauges.get((pipeline, sink))
            if gauge is None:
                gauge = self._gauges[(pipeline, sink)] = PendingGauge()
                self.pending.labels(pipeline, sink).set_function(gauge.total)
        return SinkCounters(
            self.published.labels(pipeline, sink),
            self.failed.labels(pipeline, sink),
            {reason: self.dropped.labels(pipeline, sink, reason) for reason in DROP_REASONS},
            gauge,
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


class SpooledSink:
    """What the sinks that send from a background thread share: ``publish`` only appends to
    the spool, and a full spool drops its oldest events (counted, warned once per episode)
    rather than block the pipeline. The sender deletes only what the destination
    acknowledged, so events leave in publish order across retries and reconnections."""

    kind: str
    counters: SinkCounters
    _spool: Spool
    _cond: threading.Condition
    _dropping: bool
    _safe_url: str
    _spool_broken: bool = False
    _problem_logged: bool = False

    def _is_closing(self) -> bool:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Events spooled and not acknowledged yet (being sent included)."""
        return self._spool.pending

    def publish(self, events: list[TrackEvent]) -> None:
        """Append to the spool without waiting on the network; when full, the oldest events
        not being sent make room."""
        items = [(e.camera, e.to_json().encode()) for e in events]
        with self._cond:
            if self._is_closing():
                self.counters.drop("closed", len(items))
                return
            try:
                dropped = self._spool.append(items)
            except SpoolError as exc:
                self.counters.drop("spool_error", len(items))
                self._spool_failed(exc)
                return
            self._spool_broken = False
            self._cond.notify_all()
            first_drop = dropped > 0 and not self._dropping
            self._dropping = self._dropping or dropped > 0
        self.counters.drop("spool_full", dropped)
        if first_drop:
            log.warning(
                "%s spool full, dropping the oldest events: sink=%s url=%s",
                self.kind,
                self.kind,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url},
            )

    def _ack(self, records: Iterable[Record]) -> None:
        """Forget acknowledged events; a disk spool that cannot is logged, and its events are
        sent again after a restart (at least once)."""
        try:
            self._spool.ack(records)
        except SpoolError as exc:
            self._spool_failed(exc)

    def _take(self, limit: int) -> list[Record]:
        """The next events to send; none while the spool cannot be read (logged)."""
        try:
            return self._spool.take(limit)
        except SpoolError as exc:
            self._spool_failed(exc)
            return []

    def _spool_failed(self, exc: SpoolError) -> None:
        """Log a spool failure once per episode (a full disk fails every write)."""
        first, self._spool_broken = not self._spool_broken, True
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "%s spool failed: sink=%s error=%s",
            self.kind,
            self.kind,
            exc,
            extra={"sink": self.kind, "url": self._safe_url, "error": str(exc)},
        )

    def _log_problem(self, message: str, reason: str) -> None:
        """Warn once per outage (clients retry every few seconds), not once per attempt; a
        delivery clears ``_problem_logged``."""
        with self._cond:
            first, self._problem_logged = not self._problem_logged, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: sink=%s url=%s reason=%s pending=%d",
            message,
            self.kind,
            self._safe_url,
            reason,
            self.pending,
            extra={"sink": self.kind, "url": self._safe_url, "reason": reason},
        )

    def _close_spool(self) -> None:
        """Close the spool and say what a memory spool loses (a disk spool keeps it)."""
        kept = self._spool.pending
        lost = self._spool.close()
        self.counters.pending.discard(self)
        self.counters.drop("closed", lost)
        if lost:
            log.warning(
                "%s closed with %d events undelivered: sink=%s url=%s",
                self.kind,
                lost,
                self.kind,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url, "dropped": lost},
            )
        elif kept:
            log.info(
                "%s closed with %d events kept in its spool for the next start: sink=%s url=%s",
                self.kind,
                kept,
                self.kind,
                self._safe_url,
                extra={"sink": self.kind, "url": self._safe_url, "pending": kept},
            )


def batch_limit(spool: Spool, wanted: int) -> int:
    """At most half the spool is being sent at once, so while a destination is down the
    newest events (not only the batch stuck in flight) keep their place."""
    return max(1, min(wanted, spool.limits.max_events // 2))


class WebhookSink(SpooledSink):
    """POSTs JSON arrays of spooled events from a background thread, in order.

    Connection errors, timeouts, 408, 429 and 5xx are transient: the batch stays at the head
    of the spool and is retried with capped exponential backoff and jitter (or after
    ``Retry-After``) for as long as it takes; the spool bounds what waits meanwhile. Other
    answers are permanent: the batch is counted as failed and the next one goes, so one bad
    event cannot block the queue. Delivery is at least once: a timed-out request may have
    arrived. ``close`` keeps delivering for up to ``drain_timeout`` seconds.
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        counters: SinkCounters,
        *,
        credentials: Credentials | None = None,
        spool: Spool | None = None,
        batch_max: int = 100,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        retry_after_cap: float = 300.0,
        timeout: float = 5.0,
        drain_timeout: float = 5.0,
    ) -> None:
        if urlsplit(url).scheme not in _WEBHOOK_SCHEMES:
            raise SinkConfigError(f"webhook URL must be http(s), got {safe_url(url)}")
        self.counters = counters
        self._url = url
        self._safe_url = safe_url(url)
        self._spool = spool if spool is not None else MemorySpool(DEFAULT_LIMITS)
        self._batch_max = batch_limit(self._spool, batch_max)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        self._drain_timeout = drain_timeout
        self._timeout = timeout
        _quiet_httpx()
        auth = None
        if credentials is not None:
            auth = httpx.BasicAuth(credentials.username, credentials.password.get_secret_value())
        self._client = httpx.Client(
            auth=auth,
            timeout=timeout,
            headers={"Content-Type": "application/json", "User-Agent": "kubevision-worker"},
        )
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._stalled = False  # closing, and the destination failed or the drain time is up
        self._unreachable_since: float | None = None
        self._rejecting = False
        self._dropping = False
        counters.pending.add(self)
        self._sender = threading.Thread(target=self._run, name="sink-webhook", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"WebhookSink(url={self._safe_url!r})"

    def _is_closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Keep delivering for up to ``drain_timeout``, then send no new batch and wait for the
        request in flight (one ``timeout`` at most), so what a memory spool loses is counted
        exactly: an event is never both delivered and counted as dropped."""
        with self._cond:
            self._closing.set()
            self._cond.notify_all()
        self._sender.join(self._drain_timeout)
        with self._cond:
            self._stalled = True  # what is left stays spooled: a disk spool sends it next start
        self._sender.join(self._timeout)
        with self._cond:
            self._close_spool()

    def _run(self) -> None:
        try:
            while batch := self._next_batch():
                try:
                    self._deliver(batch)
                except Exception as exc:  # noqa: BLE001 - the sender must outlive a bad batch
                    self._ack(batch)
                    self.counters.failed.inc(len(batch))
                    self._rejected(self._scrub(exc), len(batch))
        finally:
            self._client.close()

    def _next_batch(self) -> list[Record]:
        """The oldest events, waiting for some; empty once closing and drained (or stalled).
        A spool that cannot be read is tried again every second."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._spool.ready or self._closing.is_set())
                if self._stalled or not self._spool.ready:
                    return []
                batch = self._take(self._batch_max)
            if batch or self._closing.wait(1.0):
                return batch

    def _deliver(self, batch: list[Record]) -> None:
        """Send ``batch`` until it is acknowledged (2xx) or refused for good (other 4xx);
        transient failures are retried without end, except once closing."""
        body = b"[" + b",".join(record.payload for record in batch) + b"]"
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self._client.post(self._url, content=body)
            except httpx.TransportError as exc:
                problem = self._scrub(exc)
            else:
                if response.is_success:
                    self._ack(batch)
                    self.counters.published.inc(len(batch))
                    self._recovered()
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUSES:
                    self._ack(batch)
                    self.counters.failed.inc(len(batch))
                    self._rejected(problem, len(batch))
                    return
                retry_after = _retry_after(response.headers.get("Retry-After"))
            self._unreachable(problem, attempt)
            if self._closing.is_set():
                self._stalled = True  # the batch stays spooled: a disk spool sends it next start
                return
            delay = self._backoff(attempt) if retry_after is None else retry_after
            self._closing.wait(min(delay, self._retry_after_cap))

    def _scrub(self, exc: Exception) -> str:
        """The error as text, the URL (whose query may hold a token) cut to its host."""
        return f"{type(exc).__name__}: {exc}".replace(self._url, self._safe_url)

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so many workers do not retry in lockstep."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(attempt - 1, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _unreachable(self, problem: str, attempt: int) -> None:
        """Warn when the destination stops answering (then debug only, not once per retry)."""
        first = self._unreachable_since is None
        if first:
            self._unreachable_since = time.monotonic()
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "webhook unreachable, keeping events in the spool: sink=webhook url=%s error=%s "
            "attempt=%d pending=%d",
            self._safe_url,
            problem,
            attempt,
            self.pending,
            extra={"sink": self.kind, "url": self._safe_url, "error": problem, "attempt": attempt},
        )

    def _rejected(self, problem: str, count: int) -> None:
        """Warn when the destination starts refusing events (then debug, not once per batch)."""
        level = logging.DEBUG if self._rejecting else logging.WARNING
        self._rejecting = True
        log.log(
            level,
            "webhook refused %d events, dropping them: sink=webhook url=%s error=%s",
            count,
            self._safe_url,
            problem,
            extra={"sink": self.kind, "url": self._safe_url, "error": problem, "failed": count},
        )

    def _recovered(self) -> None:
        with self._cond:
            self._dropping = False
        self._rejecting = False
        if self._unreachable_since is not None:
            down = time.monotonic() - self._unreachable_since
            self._unreachable_since = None
            log.info(
                "webhook delivering again after %.0fs: sink=webhook url=%s pending=%d",
                down,
                self._safe_url,
                self.pending,
                extra={"sink": self.kind, "url": self._safe_url, "down_seconds": round(down, 1)},
            )


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


class MqttSink(SpooledSink):
    """Publishes one QoS 1 message per spooled event on ``<topic>/<camera>`` through paho-mqtt.

    paho connects in its own thread and reconnects on its own. A sender thread hands spooled
    events to paho only while connected, at most ``inflight_max`` unacknowledged, and an event
    leaves the spool on its PUBACK. Messages unacknowledged when the connection dropped are
    re-sent by paho after reconnecting, before any newer one, so order is kept; after a worker
    restart a disk spool sends them again (at least once).
    """

    kind = "mqtt"

    def __init__(
        self,
        url: str,
        topic: str,
        counters: SinkCounters,
        *,
        credentials: Credentials | None = None,
        spool: Spool | None = None,
        inflight_max: int = 100,
        keepalive: int = 60,
        reconnect_max_delay: int = 10,
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
        self._spool = spool if spool is not None else MemorySpool(DEFAULT_LIMITS)
        self._inflight_max = batch_limit(self._spool, inflight_max)
        self._cond = threading.Condition()
        self._inflight: dict[int, Record] = {}  # paho message id -> spooled event
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() returning
        self._connected = False
        self._resync = False  # unacknowledged messages await paho's re-send
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
        client.max_inflight_messages_set(self._inflight_max)
        client.reconnect_delay_set(1, reconnect_max_delay)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        counters.pending.add(self)
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

    def topic_for(self, camera: str) -> str:
        """``<topic>/<camera>``; characters MQTT reserves in topics become ``_``."""
        return f"{self._topic}/{camera.translate(_TOPIC_UNSAFE)}"

    def _is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Wait up to ``drain_timeout`` for spooled events to be acknowledged, then disconnect.

        A sink disconnected at close (broker down, credentials refused) does not wait: the
        worker's shutdown must not hang on a broker that may never come back.
        """
        with self._cond:
            self._closing = True
            self._cond.wait_for(
                lambda: not self._connected or not self._spool.pending, self._drain_timeout
            )
            self._stopped = True
            self._cond.notify_all()
        self._sender.join()
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._inflight.clear()
            self._close_spool()

    def _can_send(self) -> bool:
        return (
            self._connected
            and not self._resync
            and len(self._inflight) < self._inflight_max
            and self._spool.ready > 0
        )

    def _run(self) -> None:
        """Hands spooled events to paho; never holds our lock while calling paho (whose
        callbacks take it while holding paho's own locks)."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._can_send())
                if self._stopped:
                    return
                records = self._take(self._inflight_max - len(self._inflight))
                if not records:  # the spool cannot be read: try again in a second
                    self._cond.wait_for(lambda: self._stopped, 1.0)
            for record in records:
                info = self._client.publish(self.topic_for(record.camera), record.payload, qos=1)
                self._handed(record, info.mid, info.rc)

    def _handed(self, record: Record, mid: int, rc: MQTTErrorCode) -> None:
        """Track a message paho accepted until its PUBACK; settle one it refused."""
        # NO_CONN: the connection dropped just now; paho keeps the message and re-sends it
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._settle(record, failed=True)
            return
        with self._cond:
            early = self._early.pop(mid, None)
            if early is None:
                self._inflight[mid] = record
                # the connection dropped before _on_disconnect could see this one in flight:
                # paho re-sends it after reconnecting, and nothing newer may go before it
                self._resync = self._resync or rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        if early is not None:
            self._settle(record, failed=early.is_failure)

    def _settle(self, record: Record, *, failed: bool) -> None:
        self._ack([record])
        (self.counters.failed if failed else self.counters.published).inc()
        with self._cond:
            if not failed:
                self._dropping = False
            self._cond.notify_all()

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
            "MQTT connected: sink=mqtt url=%s pending=%d",
            self._safe_url,
            self.pending,
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
            self._resync = bool(self._inflight)
            closing = self._closing
        if not closing:
            self._log_problem("MQTT disconnected, keeping events in the spool", str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        with self._cond:
            record = self._inflight.pop(mid, None)
            if record is None:
                self._early[mid] = reason
                return
            if not self._inflight:
                self._resync = False
        self._settle(record, failed=reason.is_failure)


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
    spool: SpoolConfig | None = None,
    spool_dir: Path | None = None,
) -> FanOut:
    """One sink per output, in order, behind a :class:`FanOut`.

    The webhook and MQTT sinks get a spool each as ``spool`` says: in memory, or a SQLite file
    ``output-<index>-<type>.sqlite`` in ``spool_dir`` (what a restarted worker resumes from).
    Raises :class:`SinkConfigError` (after closing the sinks already built) when an output is
    incomplete, its credentials env vars are unset or its spool cannot be opened.
    """
    env = os.environ if environ is None else environ
    metrics = SinkMetrics.on(registry)
    config = spool if spool is not None else SpoolConfig()
    if config.storage == "disk" and spool_dir is None:
        raise SinkConfigError("the worker config asks for a disk spool but no --spool-dir is set")
    sinks: list[Sink] = []
    try:
        for index, output in enumerate(outputs):
            sinks.append(_build_sink(index, output, pipeline, metrics, env, config, spool_dir))
    except BaseException:
        FanOut(sinks, pipeline).close()
        raise
    log.info(
        "event sinks ready: pipeline=%s sinks=%s spool=%s",
        pipeline,
        ",".join(s.kind for s in sinks) or "none",
        config.storage,
        extra={"pipeline": pipeline, "sinks": [s.kind for s in sinks], "spool": config.storage},
    )
    return FanOut(sinks, pipeline)


def spool_path(spool_dir: Path, index: int, output: Output) -> Path:
    """The file of ``outputs[index]``'s disk spool: by position and type, so a corrected URL
    still gets the events spooled while the old one was unreachable."""
    return spool_dir / f"output-{index}-{output.type}.sqlite"


def _open_spool(index: int, output: Output, config: SpoolConfig, spool_dir: Path | None) -> Spool:
    limits = Limits(max_events=config.max_events, max_bytes=config.max_bytes)
    if config.storage == "memory":
        return MemorySpool(limits)
    assert spool_dir is not None  # build_sinks checked
    try:
        return SqliteSpool(spool_path(spool_dir, index, output), limits)
    except SpoolError as exc:
        raise SinkConfigError(f"outputs[{index}]: {exc}") from exc


def _build_sink(
    index: int,
    output: Output,
    pipeline: str,
    metrics: SinkMetrics,
    env: Mapping[str, str],
    spool: SpoolConfig,
    spool_dir: Path | None,
) -> Sink:
    counters = metrics.bind(pipeline, output.type)

    def required(value: str | None, what: str) -> str:
        if not value:
            raise SinkConfigError(f"outputs[{index}] of type {output.type} needs {what}")
        return value

    credentials = None
    if output.credentials_secret_ref is not None and output.type in ("webhook", "mqtt", "kafka"):
        credentials = credentials_from_env(index, env)
    match output.type:
        case "stdout":
            return JsonLinesSink(counters)
        case "file":
            return FileSink(Path(required(output.path, "a path")), counters)
        case "webhook":
            url = required(output.url, "a url")
            return _spooled(
                lambda spool_: WebhookSink(url, counters, credentials=credentials, spool=spool_),
                _open_spool(index, output, spool, spool_dir),
            )
        case "mqtt":
            url, topic = required(output.url, "a url"), required(output.topic, "a topic")
            return _spooled(
                lambda spool_: MqttSink(
                    url, topic, counters, credentials=credentials, spool=spool_
                ),
                _open_spool(index, output, spool, spool_dir),
            )
        case "kafka":
            from kubevision.worker.kafka_sink import KafkaSink  # librdkafka only where used

            url, topic = required(output.url, "a url"), required(output.topic, "a topic")
            return _spooled(
                lambda spool_: KafkaSink(
                    url, topic, counters, credentials=credentials, spool=spool_
                ),
                _open_spool(index, output, spool, spool_dir),
            )


def _spooled(make: Callable[[Spool], Sink], spool: Spool) -> Sink:
    """``make(spool)``, closing the spool when the sink cannot be built (a bad URL)."""
    try:
        return make(spool)
    except BaseException:
        spool.close()
        raise
