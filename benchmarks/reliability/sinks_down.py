"""Sinks down: the webhook receiver gone for minutes, the MQTT broker restarted, mid-run.

A publisher thread plays a busy camera site: events at a steady rate, round-robin over four
cameras, each one distinct (its track id is its number), through a :class:`FanOut` into the
real sinks with disk spools (:class:`SqliteSpool`, the Pipeline's default), as the worker
runs them. The peers are real: a ``ThreadingHTTPServer`` receiver stopped and started again on
the same port (connections refused meanwhile), and the Debian ``mosquitto`` broker stopped
(SIGTERM) and started again on the same port, a persistent subscriber reading everything.

Two webhooks share one outage: one with the Pipeline's default bound (nothing may be lost)
and one whose spool holds only ``small_bound`` events (the oldest must be dropped, and the
dropped counter must equal exactly the number that never arrived). For each sink the figures
say what was published, delivered (first arrivals), dropped (counted), lost (unaccounted: the
goal is 0), duplicated, whether order held (per sink; per camera for MQTT), the deepest the
spool got, and how long after recovery the events of the outage took to arrive.

Then the real ``kubevision-worker`` (:func:`worker_killed`): its webhook receiver and MQTT
broker away for ``worker_down_s``, the worker SIGKILLed halfway through and started again on
the same disk spool while both are still away; every event either process spooled must arrive
once the peers return, in order, and nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks.reliability import Report
from benchmarks.reliability.slow_pipeline import Sampler
from kubevision.api.pipeline import Output
from kubevision.api.pipeline import Spool as SpoolSpec
from kubevision.worker.events import TrackEvent
from kubevision.worker.sinks import FanOut, MqttSink, Sink, SinkMetrics, WebhookSink, spool_path
from kubevision.worker.spool import Limits, SqliteSpool
from tests.assets import require
from tests.envtest.poll import wait_for
from tests.envtest.sinks import (
    MOSQUITTO,
    Mosquitto,
    WebhookReceiver,
    sink_counts,
    subscriber,
    track_event,
)
from tests.envtest.worker_process import WorkerProcess
from tests.integration.helpers import file_camera, yolox_worker_config

PIPELINE = "reliability"
TOPIC = "kubevision/reliability"
CAMERAS = ("gate", "dock", "yard", "lobby")
DEFAULT_BOUND = SpoolSpec()
"""The bounds a Pipeline gets unless it says otherwise."""


@dataclass(frozen=True)
class Size:
    rate: float
    """Events per second published, over all cameras."""
    webhook_down_s: float
    small_bound: int
    """maxEvents of the second webhook's spool, far below what the outage brings."""
    mqtt_restarts: int
    mqtt_up_s: float
    mqtt_down_s: float
    worker_down_s: float
    """How long the real worker's webhook and MQTT broker stay away; the worker is SIGKILLed
    halfway and restarted on the same disk spool while they are still away."""


SMALL = Size(
    rate=50,
    webhook_down_s=20,
    small_bound=100,
    mqtt_restarts=3,
    mqtt_up_s=2,
    mqtt_down_s=2,
    worker_down_s=30,
)
"""The test suite's: an outage longer than the old retry budget (6 attempts, about 15 s)."""
FULL = Size(
    rate=200,
    webhook_down_s=300,
    small_bound=1000,
    mqtt_restarts=10,
    mqtt_up_s=20,
    mqtt_down_s=10,
    worker_down_s=180,
)
"""The benchmark's: the webhook away for 5 minutes at a busy site's event rate, and the real
worker's uplink away for 3 minutes."""
STEADY_S = 2.0
"""Seconds of publishing with the peers up, before the first fault and after the last."""


class Publisher:
    """Publishes distinct events at ``rate`` per second from a thread, as cameras would."""

    def __init__(self, sink: Sink | FanOut, rate: float) -> None:
        self._sink = sink
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.published: list[tuple[float, TrackEvent]] = []
        """(monotonic time, event) of each event published, in order."""
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n, start = 0, time.monotonic()
        while not self._stop.is_set():
            event = track_event(PIPELINE, CAMERAS[n % len(CAMERAS)], n)
            self._sink.publish([event])
            with self._lock:
                self.published.append((time.monotonic(), event))
            n += 1
            # paced by the clock, not by sleeps that add up: the rate holds under load
            self._stop.wait(max(0.0, start + n * self._interval - time.monotonic()))

    def events(self) -> list[TrackEvent]:
        with self._lock:
            return [e for _, e in self.published]

    def before(self, moment: float) -> list[TrackEvent]:
        with self._lock:
            return [e for t, e in self.published if t < moment]


def hold(seconds: float) -> None:
    """Keep the load on for ``seconds``: the publisher runs meanwhile (not a synchronisation)."""
    time.sleep(seconds)


def delivery(
    published: list[TrackEvent],
    arrivals: list[tuple[float, TrackEvent]],
    counts: dict[str, float],
    recovered: list[float],
    outage_events: list[list[TrackEvent]],
) -> dict[str, Any]:
    """What happened to each published event, from the receiver's side and the counters."""
    first: dict[int, TrackEvent] = {}
    first_at: dict[int, float] = {}
    for t, e in arrivals:
        if e.track_id not in first:
            first[e.track_id], first_at[e.track_id] = e, t
    sent = {e.track_id for e in published}
    arrived_ids = [tid for tid in first if tid in sent]
    missing = sorted(sent - set(first))
    dropped = int(sum(v for k, v in counts.items() if k.startswith("dropped_")))
    by_camera_ok = all(
        [e.track_id for e in first.values() if e.camera == cam]
        == [e.track_id for e in published if e.camera == cam and e.track_id in first]
        for cam in CAMERAS
    )
    # from each recovery until the last event published before it that arrived at all
    drain = [
        round(max(arrived) - up, 2)
        for up, events in zip(recovered, outage_events, strict=True)
        if (arrived := [first_at[e.track_id] for e in events if e.track_id in first_at])
    ]
    return {
        "published": len(published),
        "delivered": len(first),
        "dropped": dropped,
        "dropped_by_reason": {k: int(v) for k, v in counts.items() if k.startswith("dropped_")},
        "failed": int(counts["failed"]),
        "lost": len(published) - len(first) - dropped,
        "duplicates": len(arrivals) - len(first),
        "in_order": arrived_ids == sorted(arrived_ids),
        "in_order_per_camera": by_camera_ok,
        "missing_contiguous": not missing or missing == list(range(missing[0], missing[-1] + 1)),
        "time_to_drain_s": drain,
    }


def _spool(folder: Path, name: str, max_events: int) -> SqliteSpool:
    return SqliteSpool(folder / f"{name}.sqlite", Limits(max_events, DEFAULT_BOUND.max_bytes))


def webhook_outage(size: Size, folder: Path) -> dict[str, dict[str, Any]]:
    """Two webhooks (default bound, small bound) whose receivers go away together."""
    registry = CollectorRegistry()
    bounds = {"default_bound": DEFAULT_BOUND.max_events, "small_bound": size.small_bound}
    receivers = {name: WebhookReceiver([(200, {})]) for name in bounds}
    sinks: dict[str, WebhookSink] = {}
    for name, bound in bounds.items():
        receivers[name].start()
        counters = SinkMetrics.on(registry).bind(name, "webhook")
        sinks[name] = WebhookSink(receivers[name].url, counters, spool=_spool(folder, name, bound))
    fan_out = FanOut(list(sinks.values()), PIPELINE)
    depth = Depths(dict(sinks))
    try:
        with Sampler(depth.probe, 0.1) as sampler, Publisher(fan_out, size.rate) as publisher:
            hold(STEADY_S)
            for receiver in receivers.values():
                receiver.stop()
            hold(size.webhook_down_s)
            for receiver in receivers.values():
                receiver.start()
            recovered = time.monotonic()
            hold(STEADY_S)
        for name, sink in sinks.items():
            wait_for(
                drained(sink),
                timeout=60 + size.webhook_down_s,
                what=f"the {name} webhook to drain its spool",
            )
    finally:
        fan_out.close()
        for receiver in receivers.values():
            receiver.stop()
    published = publisher.events()
    out = {}
    for name, receiver in receivers.items():
        figures = delivery(
            published,
            receiver.arrivals(),
            sink_counts(registry, name, "webhook"),
            [recovered],
            [publisher.before(recovered)],
        )
        figures["spool_bound"] = bounds[name]
        figures["max_spool_depth"] = max(s[name] for s in sampler.samples)
        out[name] = figures
    return out


@dataclass
class Depths:
    """A sampler probe: each sink's spooled events."""

    sinks: dict[str, WebhookSink | MqttSink]

    def probe(self) -> dict[str, Any]:
        return {name: sink.pending for name, sink in self.sinks.items()}


def drained(sink: WebhookSink | MqttSink) -> Callable[[], bool]:
    return lambda: sink.pending == 0


def mqtt_restarts(size: Size, folder: Path) -> dict[str, Any]:
    """One MQTT sink while the broker restarts ``mqtt_restarts`` times on the same port."""
    registry = CollectorRegistry()
    broker = Mosquitto(folder)
    broker.start()
    recovered: list[float] = []
    went_down: list[float] = []
    try:
        with subscriber(broker.port, TOPIC) as sub:
            counters = SinkMetrics.on(registry).bind(PIPELINE, "mqtt")
            sink = MqttSink(
                broker.url, TOPIC, counters, spool=_spool(folder, "mqtt", DEFAULT_BOUND.max_events)
            )
            try:
                wait_for(lambda: sink.connected, timeout=10, what="the sink to connect")
                depth = Depths({"mqtt": sink})
                with Sampler(depth.probe, 0.1) as sampler, Publisher(sink, size.rate) as pub:
                    for _ in range(size.mqtt_restarts):
                        hold(size.mqtt_up_s)
                        broker.stop()
                        went_down.append(time.monotonic())
                        hold(size.mqtt_down_s)
                        broker.start()
                        recovered.append(time.monotonic())
                    hold(STEADY_S)
                published = pub.events()
                wait_for(
                    lambda: (
                        {e.track_id for _, e in sub.received()} >= {e.track_id for e in published}
                    ),
                    timeout=60,
                    what="every published event at the subscriber",
                )
                wait_for(lambda: sink.pending == 0, timeout=30, what="every PUBACK")
            finally:
                sink.close()
            arrivals = sub.arrivals()
    finally:
        broker.stop()
    # the events published while the broker was down, per restart
    windows = [
        [e for t, e in pub.published if down <= t < up]
        for down, up in zip(went_down, recovered, strict=True)
    ]
    figures = delivery(
        published, arrivals, sink_counts(registry, PIPELINE, "mqtt"), recovered, windows
    )
    figures["restarts"] = size.mqtt_restarts
    figures["duplicates_allowed"] = 100 * size.mqtt_restarts
    figures["max_spool_depth"] = max(s["mqtt"] for s in sampler.samples)
    return figures


# --- a real worker killed while its uplink is down -------------------------------------------

WORKER_CAMERAS = ("bottles", "shelf")
WORKER_TOPIC = "kubevision/p"
Key = tuple[str, str, int, str]
"""What identifies an event (README, "Delivery semantics"): camera, kind, trackId, captureTime."""


def key(event: TrackEvent) -> Key:
    return (event.camera, event.kind, event.track_id, event.capture_time.isoformat())


def spooled(path: Path) -> list[TrackEvent]:
    """What a worker's disk spool holds, oldest first, read as another process would."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    return [TrackEvent.model_validate_json(payload) for (payload,) in rows]


def event_log(path: Path, offset: int = 0) -> list[TrackEvent]:
    """The worker's file output (its last output: an event there was spooled by every sink
    before it) from byte ``offset`` on."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    return [TrackEvent.model_validate_json(line) for line in lines if line.strip()]


def whole_lines(path: Path) -> int:
    """Cut a line the SIGKILL left half-written (an event every spool already holds, as the
    file output comes last) so the restarted worker appends whole lines; the log's size."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    if end != len(data):
        path.write_bytes(data[:end])
    return end


def worker_killed(size: Size, folder: Path) -> dict[str, Any]:
    """The real worker (YOLOX-nano on two looping file cameras) with a webhook, an MQTT output
    and disk spools, its receiver refusing connections and its broker stopped for
    ``worker_down_s``: SIGKILLed halfway, started again on the same spool folder while both
    are still away, spooling on; then both come back.

    Every event each process spooled must arrive (first arrivals in spool order for the
    webhook, per camera for MQTT), with no duplicates: nothing can have been in flight at the
    kill, so the README's "duplicates only of events in flight" means none here. What the
    restarted worker still held when it was stopped stays in its spool (counted, not lost).
    """
    assert MOSQUITTO is not None, "mosquitto is not installed (make system-packages)"
    video = require("videos/bottle-detection.mp4")
    receiver = WebhookReceiver([(200, {})])  # not listening yet: connection refused
    broker = Mosquitto(folder)
    broker.start()  # once, so the subscriber's persistent session exists when events come
    with subscriber(broker.port, WORKER_TOPIC) as sub:
        broker.stop()
        outputs = [
            Output(type="webhook", url=receiver.url),
            Output(type="mqtt", url=broker.url, topic=WORKER_TOPIC),
        ]
        log_path = folder / "events.jsonl"
        config = yolox_worker_config(
            "p",
            "g",
            [[file_camera(name, video) for name in WORKER_CAMERAS]],
            require("models/yolox_nano_416.onnx"),
            outputs=[o.wire() for o in outputs] + [{"type": "file", "path": str(log_path)}],
        )
        config["spool"] = {"storage": "disk", "maxEvents": 100_000, "maxBytes": 64 * 2**20}
        config_path, spool_dir = folder / "worker.json", folder / "spool"
        config_path.write_text(json.dumps(config))
        files = [spool_path(spool_dir, i, o) for i, o in enumerate(outputs)]
        args = (config_path, folder / "worker.log", [f"--spool-dir={spool_dir}"])
        try:
            down_since = time.monotonic()
            first = WorkerProcess(*args)
            try:
                wait_for(
                    lambda: (
                        time.monotonic() - down_since >= size.worker_down_s / 2
                        and all(len(spooled(f)) >= 5 for f in files)
                    ),
                    timeout=size.worker_down_s + 120,
                    what="half the outage, and 5 events in each spool",
                )
            finally:
                first.kill()
            killed_at = time.monotonic() - down_since
            at_kill = [spooled(f) for f in files]
            offset = whole_lines(log_path)
            logged_by_first = event_log(log_path)
            second = WorkerProcess(*args)
            try:
                wait_for(
                    lambda: (
                        time.monotonic() - down_since >= size.worker_down_s
                        and all(
                            len(spooled(f)) > len(k) for f, k in zip(files, at_kill, strict=True)
                        )
                    ),
                    timeout=size.worker_down_s + 120,
                    what="the rest of the outage, and the restarted worker spooling",
                )
                # every event either process produced while the peers were away
                before_return = [spooled(f) for f in files]
                assert not receiver.requests, "nothing could have been sent"
                receiver.start()
                broker.start()
                returned = time.monotonic()
                peers = (receiver.arrivals, sub.arrivals)

                def caught_up() -> bool:
                    logged = {key(e) for e in event_log(log_path, offset)}
                    return all(
                        {key(e) for _, e in arrivals()} >= logged | {key(e) for e in held}
                        for arrivals, held in zip(peers, before_return, strict=True)
                    )

                wait_for(
                    caught_up,
                    timeout=size.worker_down_s + 120,
                    what="every spooled and newly logged event at both peers",
                )
            finally:
                second.stop()
            left = [spooled(f) for f in files]
            logged_by_second = event_log(log_path, offset)
            # what was acknowledged just before the stop reaches the subscriber a bit later
            wait_for(
                lambda: all(
                    {key(e) for _, e in arrivals()} | {key(e) for e in held}
                    >= {key(e) for e in logged_by_second}
                    for arrivals, held in zip(peers, left, strict=True)
                ),
                timeout=30,
                what="every acknowledged event at both peers",
            )
        finally:
            receiver.stop()
            broker.stop()
    figures: dict[str, Any] = {
        "outage_s": size.worker_down_s,
        "killed_after_s": round(killed_at, 1),
        "cameras": len(WORKER_CAMERAS),
    }
    for name, arrivals, kill_spool, held, still in zip(
        ("webhook", "mqtt"),
        (receiver.arrivals(), sub.arrivals()),
        at_kill,
        before_return,
        left,
        strict=True,
    ):
        figures[name] = _worker_delivery(
            arrivals, kill_spool, held, still, logged_by_first, logged_by_second, returned
        )
    return figures


def _worker_delivery(
    arrivals: list[tuple[float, TrackEvent]],
    at_kill: list[TrackEvent],
    before_return: list[TrackEvent],
    left: list[TrackEvent],
    logged_by_first: list[TrackEvent],
    logged_by_second: list[TrackEvent],
    returned: float,
) -> dict[str, Any]:
    """One output's account: what each process produced, what arrived, what is left."""
    held = {key(e) for e in before_return}
    produced = before_return + [e for e in logged_by_second if key(e) not in held]
    first: dict[Key, float] = {}
    for t, e in arrivals:
        first.setdefault(key(e), t)
    arrived = list(first)
    # an event acknowledged just before the stop but not yet deleted is sent again by the
    # next start: a duplicate in flight, as the README allows; here it counts as arrived
    left_keys = [key(e) for e in left if key(e) not in first]
    expected = [key(e) for e in produced]
    accounted = arrived + left_keys

    def of(cam: str, keys: list[Key]) -> list[Key]:
        return [k for k in keys if k[0] == cam]

    drain = [first[k] - returned for k in held if k in first]
    return {
        "spooled_by_first": len(at_kill),
        "spooled_by_second_while_down": len(before_return) - len(at_kill),
        "produced_after_return": len(produced) - len(before_return),
        "produced": len(produced),
        "delivered": len(first),
        "left_in_spool_at_stop": len(left_keys),
        "acknowledged_but_still_spooled_at_stop": len(left) - len(left_keys),
        "lost": len(set(expected) - set(arrived) - set(left_keys)),
        "unexpected": len(set(arrived) - set(expected)),
        "duplicates": len(arrivals) - len(first),
        "spool_survived_kill": [key(e) for e in before_return[: len(at_kill)]]
        == [key(e) for e in at_kill],
        "logged_before_kill_all_spooled": {key(e) for e in logged_by_first}
        <= {key(e) for e in at_kill},
        "in_order_of_spool": accounted == expected,
        "in_order_per_camera": all(
            of(cam, accounted) == of(cam, expected) for cam in WORKER_CAMERAS
        ),
        "time_to_drain_s": round(max(drain), 2) if drain else None,
    }


def measure(size: Size) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kubevision-sinks-down-") as tmp:
        folder = Path(tmp)
        for name in ("webhook", "mqtt", "worker_killed"):
            (folder / name).mkdir()
        return {
            "rate_per_s": size.rate,
            "webhook_down_s": size.webhook_down_s,
            "webhook": webhook_outage(size, folder / "webhook"),
            "mqtt": mqtt_restarts(size, folder / "mqtt"),
            "worker_killed": worker_killed(size, folder / "worker_killed"),
        }


def nothing_lost(figures: dict[str, Any]) -> bool:
    """Every sink: nothing unaccounted, nothing refused, order kept."""
    sinks = [*figures["webhook"].values(), figures["mqtt"]]
    return all(s["lost"] == 0 and s["failed"] == 0 and s["in_order_per_camera"] for s in sinks)


def worker_kept_its_promise(figures: dict[str, Any]) -> bool:
    """The killed worker's two outputs: both processes spooled, nothing lost or invented, the
    spool intact across the SIGKILL, order kept (per output for the webhook, per camera for
    MQTT), no duplicates (nothing was in flight at the kill)."""
    outputs = [figures["webhook"], figures["mqtt"]]
    return figures["webhook"]["in_order_of_spool"] and all(
        o["spooled_by_first"] > 0
        and o["spooled_by_second_while_down"] > 0
        and o["lost"] == o["unexpected"] == o["duplicates"] == 0
        and o["spool_survived_kill"]
        and o["logged_before_kill_all_spooled"]
        and o["in_order_per_camera"]
        for o in outputs
    )


def run(full: bool) -> Report:
    size = FULL if full else SMALL
    figures = measure(size)
    default, small, mqtt, killed = (
        figures["webhook"]["default_bound"],
        figures["webhook"]["small_bound"],
        figures["mqtt"],
        figures["worker_killed"],
    )
    ok = (
        nothing_lost(figures)
        and default["dropped"] == 0
        and default["in_order"]
        and small["dropped"] > 0
        and small["missing_contiguous"]
        and mqtt["dropped"] == 0
        and mqtt["duplicates"] <= mqtt["duplicates_allowed"]
        and worker_kept_its_promise(killed)
    )
    return Report(
        name="sinks_down",
        load=f"{size.rate:g} events/s over {len(CAMERAS)} cameras into 2 webhooks and 1 MQTT "
        "sink, disk spools (SQLite); a real kubevision-worker (YOLOX-nano, "
        f"{len(WORKER_CAMERAS)} file cameras) with a webhook and an MQTT output on disk spools",
        faults=f"webhook receivers stopped for {size.webhook_down_s:g} s (same port); mosquitto "
        f"restarted {size.mqtt_restarts} times ({size.mqtt_down_s:g} s down each); the "
        f"worker's receiver and broker both away for {size.worker_down_s:g} s, the worker "
        "SIGKILLed halfway and restarted on the same spool while they were away",
        bad_inputs="none",
        lost=(
            f"nothing unaccounted: default-bound webhook {default['delivered']}/"
            f"{default['published']} delivered, 0 dropped; small-bound ({size.small_bound}) "
            f"webhook {small['dropped']} dropped (one contiguous run) = exactly those missing; "
            f"MQTT {mqtt['delivered']}/{mqtt['published']} delivered, "
            f"{mqtt['duplicates']} duplicates; killed worker: "
            + ", ".join(
                f"{name} {o['delivered']}/{o['produced']} delivered "
                f"({o['spooled_by_first']} spooled before the kill, "
                f"{o['spooled_by_second_while_down']} after it while down, "
                f"{o['left_in_spool_at_stop']} left in the spool at the stop), "
                f"0 duplicates"
                for name in ("webhook", "mqtt")
                for o in [killed[name]]
            )
            if ok
            else f"see figures: {figures}"
        ),
        ok=ok,
        figures=figures,
        command="python -m benchmarks.reliability --only sinks_down" + ("" if full else " --small"),
    )
