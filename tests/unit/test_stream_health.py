"""Camera stream health, worker to Camera status: what the worker reports (metrics and
``/status``), what the operator writes (and how rarely), the Connected condition, the Events
a stream's transitions get, and that no URL credential survives on the way."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from kubevision.api.camera import LAST_ERROR_MAX, CameraAssignment, Sampling
from kubevision.api.common import Condition
from kubevision.api.worker_config import CameraAssignment as WorkerCamera
from kubevision.operator import conditions as c
from kubevision.operator.cameras import (
    connected_condition,
    current_status,
    desired_status,
    entry_write_for,
)
from kubevision.operator.signals import CameraHealth, Scrape, parse_metrics, parse_status
from kubevision.operator.streamhealth import (
    DISCONNECTED,
    RECONNECTED,
    REFRESH_SECONDS,
    Change,
    Reports,
    StreamLedger,
    Transition,
    event_message,
    next_assignment,
    pod_name,
    reports,
    scrub,
    transition,
)
from kubevision.worker.capture import CameraStream, CaptureOptions
from kubevision.worker.health import Health, HealthServer
from kubevision.worker.metrics import WorkerMetrics
from tests.envtest.poll import wait_for

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PLACED = CameraAssignment(pipeline="p", workload="p-cpu", shard=0)
POD = "p-cpu-0"
LEAKY = "open failed: [Errno 111] Connection refused: 'rtsp://viewer:s3cret@10.0.0.7:554/live'"


def up(reconnects: int = 0, fps: float = 25.0, frame: float = 1.7e9) -> CameraHealth:
    return CameraHealth(True, reconnects, fps, frame)


def down(error: str = "stream ended (EOF)", reconnects: int = 1) -> CameraHealth:
    return CameraHealth(False, reconnects, 0.0, 1.7e9, error)


def seen(health: CameraHealth | None, camera: str = "cam") -> Reports:
    return {POD: None if health is None else {camera: health}}


# -- what the worker reports --------------------------------------------------------------------


@pytest.fixture
def worker() -> WorkerMetrics:
    """A worker with one camera streaming and one that failed, as the capture threads set them."""
    metrics = WorkerMetrics("p")
    good = metrics.camera("good")
    good.set_health(True, None)
    good.fps.set(24.96)
    good.last_frame.set(1_767_225_600.4)
    bad = metrics.camera("bad")
    bad.reconnects.inc(3)
    bad.set_health(False, "open failed: Connection refused")
    metrics.camera("new")  # still making its first connection
    return metrics


def test_metrics_carry_each_cameras_health_but_not_why_it_is_down(worker: WorkerMetrics) -> None:
    scrape = parse_metrics(generate_latest(worker.registry).decode(), at=1.0)
    assert scrape.cameras == {
        "good": CameraHealth(True, 0, 24.96, 1_767_225_600.4),
        "bad": CameraHealth(None, 3, 0.0, None),
        "new": CameraHealth(None, 0, 0.0, None),
    }


def test_status_endpoint_says_why_a_camera_is_down(worker: WorkerMetrics) -> None:
    server = HealthServer(
        worker.registry, Health(), 0, host="127.0.0.1", cameras=worker.camera_status
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            payload = json.loads(resp.read())
    finally:
        server.stop()
    assert parse_status(payload) == {
        "bad": CameraHealth(False, 3, 0.0, None, "open failed: Connection refused"),
        "good": CameraHealth(True, 0, 24.96, 1_767_225_600.4),
        "new": CameraHealth(None, 0, 0.0, None),
    }


def test_a_replaced_stream_leaves_its_successors_error_alone() -> None:
    metrics = WorkerMetrics("p")
    old = metrics.camera("cam")
    new = metrics.camera("cam")
    new.set_health(False, "open failed: timed out")
    old.set_health(True, None)
    assert [s["lastError"] for s in metrics.camera_status()] == ["open failed: timed out"]


def test_connected_and_its_error_change_together() -> None:
    """/status reads the state and its error from one value (the full camera_outages run
    once read "down" from the gauge and the error of the moment after, when it was up)."""
    metrics = WorkerMetrics("p")
    cam = metrics.camera("cam")
    for connected, error in [(False, "open failed: timed out"), (True, None), (False, "EOF")]:
        cam.set_health(connected, error)
        [entry] = metrics.camera_status()
        assert (entry["connected"], entry["lastError"]) == (connected, error)
        up = metrics.registry.get_sample_value(
            "kubevision_camera_up", {"pipeline": "p", "camera": "cam"}
        )
        assert up == float(connected)


def test_a_removed_camera_leaves_the_status() -> None:
    metrics = WorkerMetrics("p")
    metrics.forget(metrics.camera("cam"))
    assert metrics.camera_status() == []


@pytest.fixture
def long_path(tmp_path: Path) -> str:
    """A file URL naming a file that does not exist, whose path is far longer than the error
    the status keeps (FFmpeg's message quotes it)."""
    return "file://" + str(tmp_path / "/".join(["x" * 200] * 8) / "missing.mp4")


def test_the_capture_keeps_a_bounded_last_error(long_path: str) -> None:
    metrics = WorkerMetrics("p")
    camera = WorkerCamera(
        name="cam", url=long_path, timeout_seconds=2, fps=25, sampling=Sampling(), priority=100
    )
    stream = CameraStream(camera, metrics.camera("cam"), CaptureOptions()).start()
    try:
        error = wait_for(lambda: stream.last_error, timeout=10, what="the camera's error")
    finally:
        stream.stop()
    assert error.startswith("open failed")
    assert len(error) == LAST_ERROR_MAX
    assert metrics.camera_status()[0]["lastError"] == error


# -- what the operator writes -------------------------------------------------------------------


def test_the_first_report_is_written() -> None:
    want = next_assignment(PLACED, PLACED, "cam", seen(up(frame=1_767_225_600.7)), T0)
    assert want == PLACED.model_copy(
        update={
            "connected": True,
            "reconnects": 0,
            "observed_fps": 25.0,
            "last_frame_time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "last_update_time": T0,
        }
    )


@pytest.mark.parametrize(
    ("have", "observed", "after", "written"),
    [
        (up(), up(), 1, False),  # nothing changed
        (up(), up(), REFRESH_SECONDS * 10, False),  # nothing changed, however long
        (up(), up(fps=24.0, frame=1.7e9 + 30), 30, False),  # moving values, within a minute
        (up(), up(fps=24.0, frame=1.7e9 + 60), REFRESH_SECONDS, True),  # refreshed after one
        (up(), down(), 1, True),  # connected flips
        (down(), up(reconnects=1), 1, True),  # and back
        (up(), up(reconnects=2), 1, True),  # dropped and came back between two scrapes
        (down(reconnects=1), down(reconnects=4), 30, False),  # retries while down: coalesced
        (down(reconnects=1), down(reconnects=9), REFRESH_SECONDS, True),
        (down(), down("open failed: Connection refused"), 1, True),  # another error
        (down(), down(), REFRESH_SECONDS * 10, False),  # down and unchanged: never rewritten
    ],
)
def test_writes_only_what_matters(
    have: CameraHealth, observed: CameraHealth, after: float, written: bool
) -> None:
    stored = next_assignment(PLACED, PLACED, "cam", seen(have), T0)
    later = T0 + dt.timedelta(seconds=after)
    assert (next_assignment(PLACED, stored, "cam", seen(observed), later) != stored) is written


@pytest.mark.parametrize(
    ("reports_now", "expected"),
    [
        (None, "kept"),  # the workers were not scraped this time
        (seen(None), "kept"),  # the pod is ready but did not answer
        ({POD: {}}, "kept"),  # the worker has not taken the camera yet
        (seen(CameraHealth(None, 0, 0.0, None)), "kept"),  # still making its first connection
        ({}, "unknown"),  # the pod is not ready: nobody knows
    ],
)
def test_no_report_keeps_or_clears_but_never_guesses(
    reports_now: Reports | None, expected: str
) -> None:
    stored = next_assignment(PLACED, PLACED, "cam", seen(up()), T0)
    want = next_assignment(PLACED, stored, "cam", reports_now, T0 + dt.timedelta(hours=1))
    assert want == (stored if expected == "kept" else PLACED)


def test_a_moved_camera_starts_unreported() -> None:
    stored = next_assignment(PLACED, PLACED, "cam", seen(up()), T0)
    moved = PLACED.model_copy(update={"shard": 1})
    assert next_assignment(moved, stored, "cam", None, T0) == moved


def test_a_fleet_costs_writes_only_for_its_transitions_and_the_minute_refresh() -> None:
    """1,000 cameras scraped every 5 s for 10 minutes, fps jittering, frames arriving; 10 of
    them go down for 2 minutes (retrying all along), then come back. The budget is per camera,
    so it holds for 10,000 the same way: at most one write a minute, plus one per transition."""
    cameras, tick, ticks = 1_000, 5, 120
    outage, went_down, came_back = set(range(0, cameras, 100)), 30, 54
    stored: dict[int, CameraAssignment] = dict.fromkeys(range(cameras), PLACED)
    writes: dict[int, list[tuple[float, bool]]] = {cam: [] for cam in range(cameras)}
    for n in range(ticks):
        now = T0 + dt.timedelta(seconds=n * tick)
        for cam in range(cameras):
            if cam in outage and went_down <= n < came_back:
                health = down("open failed: Connection refused", reconnects=n - went_down + 1)
            else:
                retries = came_back - went_down if cam in outage and n >= came_back else 0
                health = CameraHealth(True, retries, 25 + n % 3, 1.7e9 + n * tick)
            want = next_assignment(PLACED, stored[cam], "c", {POD: {"c": health}}, now)
            if want != stored[cam]:
                flipped = want.connected != stored[cam].connected
                writes[cam].append((n * tick, flipped))
                stored[cam] = want
    minutes = ticks * tick // int(REFRESH_SECONDS)
    for cam, times in writes.items():
        assert times[0] == (0, True), "the first report is written at once"
        flips = [t for t, flipped in times[1:] if flipped]
        assert flips == ([went_down * tick, came_back * tick] if cam in outage else [])
        for (before, _), (after, flipped) in itertools.pairwise(times):
            assert flipped or after - before >= REFRESH_SECONDS, (cam, times)
        assert len(times) <= minutes + len(flips), (cam, times)
    steady = {len(times) for cam, times in writes.items() if cam not in outage}
    assert steady == {minutes}, "the first report, then one refresh a minute: no more, no less"


def test_reports_keep_only_this_ticks_scrapes() -> None:
    fresh = Scrape(10.0, (), 0, 0, 0, {"a": up()})
    stale = Scrape(2.0, (), 0, 0, 0, {"b": up()})
    assert reports({"g": {"g-0": fresh, "g-1": stale}}, since=9.0) == {
        "g-0": {"a": up()},
        "g-1": None,
    }


# -- Events ---------------------------------------------------------------------------------------


def test_each_transition_gets_exactly_one_event() -> None:
    """A stream seen over time: up, down for a while (errors change, retries grow), back up,
    a worker restart (unknown), down again."""
    timeline: list[Reports | None] = [
        seen(up()),
        seen(up()),
        seen(down("stream ended (EOF)")),
        seen(down("open failed: Connection refused", reconnects=2)),
        None,
        seen(down("open failed: Connection refused", reconnects=5)),
        seen(up(reconnects=6)),
        seen(up(reconnects=6)),
        {},
        seen(up()),
        seen(down()),
    ]
    have, events = PLACED, []
    for n, now_seen in enumerate(timeline):
        want = next_assignment(PLACED, have, "cam", now_seen, T0 + dt.timedelta(minutes=n))
        if (kind := transition(have, want)) is not None:
            events.append(kind)
        have = want
    assert events == [DISCONNECTED, RECONNECTED, DISCONNECTED]


MOVED = PLACED.model_copy(update={"shard": 1})


def run_ticks(
    ticks: Sequence[tuple[CameraAssignment | None, Reports | None]],
    ledger: StreamLedger | None = None,
    *,
    frozen: bool = False,
    index: CameraAssignment | None = None,
) -> list[Transition | None]:
    """The reconciler's loop for one camera: each tick's placement and reports; the index
    starts at ``index`` and follows the writes, or with ``frozen`` stays there (it lags);
    returns each tick's Event (None: none)."""
    ledger = ledger or StreamLedger()
    entry, events = index, list[Transition | None]()
    for n, (placement, now_seen) in enumerate(ticks):
        indexed = index if frozen else entry
        change = ledger.change("cam", indexed, placement, now_seen, T0 + dt.timedelta(minutes=n))
        if change is not None:
            ledger.record("cam", change.entry)
            entry = change.entry
        events.append(None if change is None else change.event)
    return events


def test_a_new_camera_s_first_write_is_not_repeated_while_the_index_lags() -> None:
    """A burst keeps the watch behind: the index still shows the new Camera without the entry
    this reconciler wrote, at the version it had then. No second write; once the index is
    past that version and shows no entry (deleted and created again, or the entry removed),
    the entry is written again."""
    ledger = StreamLedger()
    first = ledger.change("cam", None, PLACED, None, T0, version="7")
    assert first == Change(PLACED, None)
    ledger.record("cam", PLACED, "7")
    assert ledger.change("cam", None, PLACED, None, T0, version="7") is None
    again = ledger.change("cam", None, PLACED, None, T0, version="9")
    assert again == Change(PLACED, None)


def test_a_lagging_index_gets_no_second_write_nor_event() -> None:
    """The index still shows the entry before this reconciler's last writes (the watch
    event is on its way): it compares with what it wrote, not with the index."""
    ticks = [(PLACED, seen(up())), (PLACED, seen(down())), (PLACED, seen(down()))]
    ledger = StreamLedger()
    assert run_ticks(ticks[:1], ledger) == [None]
    stale = ledger.written["cam"]
    assert run_ticks(ticks[1:], ledger, frozen=True, index=stale) == [DISCONNECTED, None]


@pytest.mark.parametrize(
    ("between", "placed_after"),
    [
        ({}, PLACED),  # its worker restarts: the camera's state is unknown for a while
        ({}, MOVED),  # it moves to another worker, which cannot read it either
    ],
)
def test_an_outage_is_one_episode_across_worker_restarts_and_moves(
    between: Reports, placed_after: CameraAssignment
) -> None:
    other = {pod_name(placed_after): {"cam": down("open failed: Connection refused", 9)}}
    back = {pod_name(placed_after): {"cam": up(reconnects=10)}}
    ticks = [
        (PLACED, seen(up())),
        (PLACED, seen(down())),
        (PLACED, between),
        (placed_after, other),
        (placed_after, back),
    ]
    assert run_ticks(ticks) == [None, DISCONNECTED, None, None, RECONNECTED]


def test_a_camera_created_again_opens_a_new_episode() -> None:
    """Deleted while down and created again: a new object, with its own Disconnected."""
    ledger = StreamLedger()
    assert run_ticks([(PLACED, seen(down()))], ledger) == [DISCONNECTED]
    assert run_ticks([(PLACED, seen(down()))], ledger, frozen=True) == [DISCONNECTED]


def test_after_an_operator_restart_the_index_carries_the_episode() -> None:
    ledger = StreamLedger()
    run_ticks([(PLACED, seen(down()))], ledger)
    written = ledger.written["cam"]
    again = [(PLACED, seen(down(reconnects=3))), (PLACED, seen(up(reconnects=4)))]
    assert run_ticks(again, StreamLedger(), index=written) == [None, RECONNECTED]


def test_a_camera_the_pipeline_lets_go_is_dropped_and_forgotten() -> None:
    ledger = StreamLedger()
    run_ticks([(PLACED, seen(down()))], ledger)
    change = ledger.change("cam", ledger.written["cam"], None, seen(down()), T0)
    assert change is not None
    assert (change.entry, change.event) == (None, None)
    ledger.record("cam", None)
    assert (ledger.written, ledger.reported) == ({}, {})


def test_the_ledger_forgets_deleted_cameras() -> None:
    ledger = StreamLedger()
    for name in ("a", "b"):
        change = ledger.change(name, None, PLACED, {POD: {name: down()}}, T0)
        assert change is not None
        ledger.record(name, change.entry)
    ledger.keep_only({"b"})
    assert set(ledger.written) == set(ledger.reported) == {"b"}


def test_a_camera_that_never_connects_is_reported_once() -> None:
    first = next_assignment(PLACED, PLACED, "cam", seen(down("401 Unauthorized")), T0)
    assert transition(PLACED, first) == DISCONNECTED
    again = next_assignment(PLACED, first, "cam", seen(down("401 Unauthorized", 4)), T0)
    assert transition(first, again) is None


def test_event_messages_name_the_pipeline_and_never_a_credential() -> None:
    gone = next_assignment(PLACED, PLACED, "cam", seen(down(LEAKY)), T0)
    back = next_assignment(PLACED, gone, "cam", seen(up(reconnects=3)), T0)
    text = event_message(DISCONNECTED, gone)
    assert text.startswith("pipeline p (worker p-cpu-0) cannot read the stream: open failed")
    assert "s3cret" not in text
    assert "viewer" not in text
    assert "rtsp://***@10.0.0.7:554/live" in text
    assert event_message(RECONNECTED, back).endswith("after 3 reconnect attempts")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, None),
        ("", None),
        (LEAKY, "open failed: [Errno 111] Connection refused: 'rtsp://***@10.0.0.7:554/live'"),
        ("x" * 5000, "x" * LAST_ERROR_MAX),
    ],
)
def test_errors_are_scrubbed_and_bounded(error: str | None, expected: str | None) -> None:
    assert scrub(error) == expected


# -- the Connected condition ----------------------------------------------------------------------


def entry(pipeline: str, connected: bool | None, error: str | None = None) -> CameraAssignment:
    return CameraAssignment(
        pipeline=pipeline, workload=f"{pipeline}-cpu", shard=0, connected=connected,
        last_error=error,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entries", "paused", "status", "reason", "message"),
    [
        ([], False, "Unknown", c.NO_PIPELINE, "no worker reads the stream"),
        ([entry("a", True)], True, "Unknown", c.PAUSED, "no worker reads the stream"),
        ([entry("a", True), entry("b", True)], False, "True", c.STREAMING,
         "receiving frames for pipeline a, b"),
        ([entry("a", True), entry("b", None)], False, "Unknown", c.AWAITING_WORKER,
         "waiting for pipeline b's worker b-cpu-0 to report the stream"),
        ([entry("a", False, "stream ended (EOF)"), entry("b", None)], False, "False",
         c.SOURCE_UNREACHABLE, "pipeline a: stream ended (EOF)"),
        ([entry("a", False, "timed out"), entry("b", False, "refused")], False, "False",
         c.SOURCE_UNREACHABLE, "pipeline a: timed out; pipeline b: refused"),
    ],
)  # fmt: skip
def test_connected_sums_up_every_pipelines_worker(
    entries: list[CameraAssignment], paused: bool, status: str, reason: str, message: str
) -> None:
    cond = connected_condition(entries, paused, 3, [])
    assert (cond.type, cond.status, cond.reason, cond.message) == (
        c.CONNECTED, status, reason, message,
    )  # fmt: skip
    assert cond.observed_generation == 3


def test_connected_keeps_its_transition_time_while_fps_moves() -> None:
    before = Condition(
        type=c.CONNECTED, status="True", reason=c.STREAMING, message="m",
        last_transition_time=T0,
    )  # fmt: skip
    fast = entry("a", True).model_copy(update={"observed_fps": 30.0})
    assert connected_condition([fast], False, 1, [before]).last_transition_time == T0


def test_camera_status_carries_connected_next_to_ready() -> None:
    body = {
        "metadata": {"name": "cam", "generation": 2},
        "spec": {"source": {"url": "rtsp://cam.example/live"}},
        "status": {"assignments": [entry("a", False, "timed out").wire()]},
    }
    status = desired_status(body)
    assert [(x["type"], x["status"]) for x in status["conditions"]] == [
        (c.READY, "True"),
        (c.CONNECTED, "False"),
    ]


def _applied(body: dict[str, Any], pipeline: str, write: dict[str, Any]) -> dict[str, Any]:
    """The Camera after the apiserver merged a Pipeline's entry write (server-side apply: its
    entry replaced or added at the end, the summary fields replaced)."""
    others = [a for a in body["status"].get("assignments", []) if a["pipeline"] != pipeline]
    status = {**body["status"], **write, "assignments": others + write.get("assignments", [])}
    return {**body, "status": status}


@pytest.mark.parametrize("paused", [False, True])
def test_an_entry_write_leaves_the_operator_nothing_to_write(paused: bool) -> None:
    """A Pipeline's write of its entry carries Ready and Connected as they will be, so placing
    a camera is one write: the operator's own check of the result finds nothing to change,
    whichever order the entries end up in."""
    body: dict[str, Any] = {
        "metadata": {"name": "cam", "generation": 4},
        "spec": {"source": {"url": "rtsp://cam.example/live"}, "paused": paused},
        "status": {"assignments": [entry("b", True).wire()]},
    }
    body["status"] |= desired_status(body)
    placed = _applied(body, "a", entry_write_for(body, "a", entry("a", None)))
    assert current_status(placed) == desired_status(placed)
    ready = next(x for x in placed["status"]["conditions"] if x["type"] == c.READY)
    if not paused:
        assert ready["message"] == "processed by a/a-cpu[0], b/b-cpu[0]"
    dropped = _applied(placed, "b", entry_write_for(placed, "b", None))
    assert [a["pipeline"] for a in dropped["status"]["assignments"]] == ["a"]
    assert current_status(dropped) == desired_status(dropped)


def test_dropping_the_last_entry_says_no_pipeline_in_the_same_write() -> None:
    body = {
        "metadata": {"name": "cam", "generation": 1},
        "spec": {"source": {"url": "rtsp://user:pw@cam.example/live"}},
        "status": {"assignments": [entry("a", True).wire()]},
    }
    write = entry_write_for(body, "a", None)
    assert "assignments" not in write  # an apply without them drops only this manager's entry
    assert write["sourceHost"] == "cam.example"
    ready = next(x for x in write["conditions"] if x["type"] == c.READY)
    assert (ready["status"], ready["reason"]) == ("False", c.NO_PIPELINE)
