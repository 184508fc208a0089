"""The Kafka output: spooled events produced to a topic through librdkafka (confluent-kafka),
keyed by camera.

Guarantees (README, "Delivery semantics"): at least once, and in order per camera. The key is
the camera, so one camera's events go to one partition; the producer is idempotent
(``enable.idempotence``: ``acks=all``, at most 5 requests in flight, retries without end, the
broker discards retried duplicates), so a broker restart neither reorders nor duplicates what
it had acknowledged. An event leaves the spool only on its delivery report; events in flight
when the worker stops are sent again from a disk spool after a restart (the only duplicates).
An event the broker refuses for good (too large, topic not authorised) is counted as failed,
so one bad event cannot block the queue.

URL: ``kafka://host:port[,host:port...]`` (PLAINTEXT, or SASL_PLAINTEXT with credentials) or
``kafkas://...`` (TLS; SASL_SSL with credentials). Credentials (``credentialsSecretRef``)
authenticate with SASL SCRAM-SHA-512.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from kubevision.worker.sinks import (
    DEFAULT_LIMITS,
    Credentials,
    SinkConfigError,
    SinkCounters,
    SpooledSink,
    batch_limit,
    safe_url,
)
from kubevision.worker.spool import MemorySpool, Record, Spool

log = logging.getLogger("kubevision.worker.sinks")

_SCHEMES = {"kafka": "PLAINTEXT", "kafkas": "SSL"}
_SASL = {"PLAINTEXT": "SASL_PLAINTEXT", "SSL": "SASL_SSL"}
_WITHDRAWN = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
"""Reports of events :meth:`KafkaSink.close` took back from librdkafka: still spooled."""


def bootstrap_servers(url: str) -> tuple[str, str]:
    """``(host:port,..., security.protocol)`` of a ``kafka://`` or ``kafkas://`` URL."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme not in _SCHEMES or not hosts or parts.path not in ("", "/"):
        raise SinkConfigError(
            f"Kafka URL must be kafka[s]://host:port[,host:port...], got {safe_url(url)}"
        )
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise SinkConfigError(f"Kafka URL needs host:port for every broker: {safe_url(url)}")
    return hosts, _SCHEMES[parts.scheme]


class KafkaSink(SpooledSink):
    """Produces each spooled event to ``topic`` with the camera as key, from a sender thread
    that also serves librdkafka's delivery reports."""

    kind = "kafka"

    def __init__(
        self,
        url: str,
        topic: str,
        counters: SinkCounters,
        *,
        credentials: Credentials | None = None,
        spool: Spool | None = None,
        inflight_max: int = 1000,
        drain_timeout: float = 5.0,
    ) -> None:
        servers, protocol = bootstrap_servers(url)
        if not topic or len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
            raise SinkConfigError(f"Kafka topic must be 1-249 of [a-zA-Z0-9._-]: {topic!r}")
        self.counters = counters
        self._safe_url = safe_url(url)
        self._topic = topic
        self._drain_timeout = drain_timeout
        self._spool = spool if spool is not None else MemorySpool(DEFAULT_LIMITS)
        self._inflight_max = batch_limit(self._spool, inflight_max)
        self._cond = threading.Condition()
        self._inflight = 0
        self._closing = False
        self._stopped = False
        self._dropping = False
        self._problem_logged = False
        self._producer = Producer(_producer_config(servers, protocol, credentials, self._on_error))
        counters.pending.add(self)
        self._sender = threading.Thread(target=self._run, name="sink-kafka", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"KafkaSink(url={self._safe_url!r}, topic={self._topic!r})"

    def _is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Keep delivering for up to ``drain_timeout`` seconds, then stop; what is left stays
        in a disk spool (or is counted as dropped from a memory one)."""
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: not self._spool.pending, self._drain_timeout)
            self._stopped = True
            self._cond.notify_all()
        self._sender.join()
        # what librdkafka still holds stays in the spool: withdraw it, so it cannot also be
        # delivered by this producer after the spool hands it to the next start
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.flush(1.0)
        with self._cond:
            self._close_spool()

    def _run(self) -> None:
        """Hand spooled events to librdkafka (which batches, retries and keeps their order)
        and serve its callbacks; never holds our lock inside librdkafka."""
        while True:
            with self._cond:
                if self._stopped:
                    return
                room = self._inflight_max - self._inflight
                records = self._take(room) if room > 0 and self._spool.ready else []
                self._inflight += len(records)
            for record in records:
                self._produce(record)
            self._producer.poll(0.05 if not records else 0)

    def _produce(self, record: Record) -> None:
        def report(err: KafkaError | None, msg: Message | None) -> None:
            self._delivered(record, err, msg)

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=record.payload,
                    key=record.camera.encode(),
                    on_delivery=report,
                )
                return
            except BufferError:  # librdkafka's own queue is full: let it drain
                self._producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. message too large)
                self._delivered(record, exc.args[0], None)
                return

    def _delivered(self, record: Record, err: KafkaError | None, msg: Message | None) -> None:
        """librdkafka's delivery report: acknowledged, or failed after its retries."""
        if err is not None and err.code() in _WITHDRAWN:
            with self._cond:
                self._inflight -= 1
            return
        if err is not None and err.retriable():
            # the idempotent producer retries without end (delivery.timeout 0), so only a
            # fatal producer state gets here: the event stays spooled for the next start
            self._log_problem("Kafka could not deliver, keeping the event", err.str())
            with self._cond:
                self._inflight -= 1
            return
        self._ack([record])
        (self.counters.failed if err is not None else self.counters.published).inc()
        if err is not None:
            self._log_problem("Kafka refused an event for good", err.str())
        with self._cond:
            self._inflight -= 1
            if err is None:
                self._dropping = False
                self._problem_logged = False
            self._cond.notify_all()

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's connection-level errors (broker down, all brokers down): it reconnects
        by itself; warn once per outage."""
        self._log_problem("Kafka broker unreachable, keeping events in the spool", err.str())


def _producer_config(
    servers: str, protocol: str, credentials: Credentials | None, on_error: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": servers,
        "security.protocol": protocol,
        "enable.idempotence": True,  # acks=all, ordered retries, no duplicates from retries
        "message.timeout.ms": 0,  # retry until delivered; the spool bounds what waits
        "linger.ms": 5,
        "compression.type": "lz4",
        "reconnect.backoff.max.ms": 10_000,
        "error_cb": on_error,  # one warning per outage, from the sink
        # librdkafka logs every failed reconnect at error level: only its critical ones
        "logger": logging.getLogger("kubevision.worker.sinks.librdkafka"),
        "log_level": 2,
    }
    if credentials is not None:
        config |= {
            "security.protocol": _SASL[protocol],
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": credentials.username,
            "sasl.password": credentials.password.get_secret_value(),
        }
    return config
