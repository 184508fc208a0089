"""What a Pipeline writes about each camera's stream into the camera's ``status.assignments``
entry, and the Events its transitions deserve.

The Pipeline's reconciler scrapes each ready worker pod on its autoscaling tick
(:mod:`.scaling`, :func:`.signals.scrape`); the same scrape carries each camera's stream health
(with Prometheus as the signal source, each pod's ``/status`` is read instead:
:func:`.scaling.stream_reports`). The decisions here do no I/O, so the write budget is
unit-tested: at 10,000 cameras a status
write per camera per tick would be thousands a second, so an entry is written only when
``connected``, ``lastError`` or (while streaming) ``reconnects`` change, and refreshed with the
moving fps and last frame time at most every :data:`REFRESH_SECONDS`; an unchanged stream is
never written. Each entry has the Pipeline's own field manager, so Pipelines sharing a camera
never overwrite each other.

The reconciler compares with what it wrote itself (:class:`StreamLedger`), not only with the
Camera index: the index follows its writes one watch event later, and a tick that read it
before that event arrived would write and post the same transition twice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubevision.api.camera import LAST_ERROR_MAX, CameraAssignment
from kubevision.operator.signals import CameraHealth, Scrape

REFRESH_SECONDS = 60.0
"""Longest time fps and last frame time may go unwritten while they change and nothing else
does (writes per camera are at most one per this period plus one per transition)."""
_HEALTH = ("connected", "reconnects", "last_error", "observed_fps", "last_frame_time")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"]*@")

Reports = Mapping[str, Mapping[str, CameraHealth] | None]
"""Pod name -> its cameras' health from this tick's scrape. None for a ready pod that did not
answer this time (its cameras keep what they had); a pod that is absent is not ready, so its
cameras' health is unknown."""
Transition = Literal["Disconnected", "Reconnected"]
DISCONNECTED: Transition = "Disconnected"
RECONNECTED: Transition = "Reconnected"


def reports(
    scrapes: Mapping[str, Mapping[str, Scrape]], since: float
) -> dict[str, Mapping[str, CameraHealth] | None]:
    """This tick's reports from the autoscaler's last scrapes by group and pod: a scrape older
    than ``since`` (the tick's start) is a pod's last good one, kept while it did not answer."""
    return {
        pod: scraped.cameras if scraped.at >= since else None
        for pods in scrapes.values()
        for pod, scraped in pods.items()
    }


def pod_name(assignment: CameraAssignment) -> str:
    """The worker pod that serves the assignment (StatefulSet pods are ``<name>-<ordinal>``)."""
    return f"{assignment.workload}-{assignment.shard}"


def next_assignment(
    placement: CameraAssignment,
    have: CameraAssignment | None,
    camera: str,
    seen: Reports | None,
    now: dt.datetime,
) -> CameraAssignment:
    """The entry the Pipeline should have for ``camera``: ``placement`` (pipeline, workload,
    shard) with the stream health to show. ``have`` is the entry in the status now; ``seen``
    this tick's reports, None when the workers were not scraped now (nothing new is known).

    The caller writes only when the result differs from ``have``.
    """
    kept = have if have is not None and _placed_alike(have, placement) else placement
    if seen is None:
        return kept
    pod = pod_name(placement)
    if pod not in seen:
        return placement  # the worker is not ready: its camera's health is unknown
    cameras = seen[pod]
    observed = None if cameras is None else cameras.get(camera)
    if observed is None or observed.connected is None:
        return kept  # no answer this time, or the worker is still making the first connection
    if kept is not placement and not _worth_writing(kept, observed, now):
        return kept
    return placement.model_copy(update={**_stored(observed), "last_update_time": _second(now)})


def _placed_alike(a: CameraAssignment, b: CameraAssignment) -> bool:
    return (a.pipeline, a.workload, a.shard) == (b.pipeline, b.workload, b.shard)


def _worth_writing(have: CameraAssignment, observed: CameraHealth, now: dt.datetime) -> bool:
    """Transitions at once; the moving values (fps, last frame time, reconnect attempts while
    down) at most every :data:`REFRESH_SECONDS`; nothing when nothing changed."""
    new = _stored(observed)
    old = {key: getattr(have, key) for key in _HEALTH}
    if have.connected is None:
        return True  # the first report since the worker took the camera
    if new == old:
        return False
    if (new["connected"], new["last_error"]) != (old["connected"], old["last_error"]):
        return True
    if observed.connected and new["reconnects"] != old["reconnects"]:
        return True  # it dropped and came back between two scrapes
    written = have.last_update_time
    return written is None or (now - written).total_seconds() >= REFRESH_SECONDS


def _stored(observed: CameraHealth) -> dict[str, object]:
    """A report as the status stores it: whole seconds and 0.1 fps (what the API keeps and a
    person reads), the error scrubbed of URL credentials once more and bounded."""
    frame = observed.last_frame_time
    frame_time = None if frame is None else _second(dt.datetime.fromtimestamp(frame, dt.UTC))
    return {
        "connected": observed.connected,
        "reconnects": observed.reconnects,
        "last_error": None if observed.connected else scrub(observed.last_error),
        "observed_fps": round(observed.fps, 1),
        "last_frame_time": frame_time,
    }


def scrub(error: str | None) -> str | None:
    """The worker redacts its errors; the operator makes sure no ``user:password@`` of a URL
    reaches the status or an Event anyway, and keeps the message within the API's bound."""
    if not error:
        return None
    return _URL_USERINFO.sub(r"\1***@", error)[:LAST_ERROR_MAX]


def _second(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Change:
    """A write one Camera's entry needs, and the Event it deserves (None: no Event)."""

    entry: CameraAssignment | None
    """The entry to write; None drops it (the Pipeline no longer selects the camera)."""
    event: Transition | None


@dataclass
class StreamLedger:
    """One Pipeline reconciler's memory of its own entries, kept across its ticks (lost on an
    operator restart, when the index, caught up by then, serves instead)."""

    written: dict[str, CameraAssignment] = field(default_factory=dict)
    """camera -> the entry this reconciler last wrote (only it writes its entry)."""
    reported: dict[str, CameraAssignment] = field(default_factory=dict)
    """camera -> the last entry it wrote with a known stream state: the episode an Event
    opened, kept while the camera's worker restarts or the camera moves to another."""
    written_over: dict[str, str] = field(default_factory=dict)
    """camera -> the resourceVersion the index showed when the entry was written: while the
    index still shows that version it has not seen the write yet (a burst can keep kopf's
    watch seconds behind), which is not the same as the entry being gone."""

    def change(
        self,
        camera: str,
        indexed: CameraAssignment | None,
        placement: CameraAssignment | None,
        seen: Reports | None,
        now: dt.datetime,
        version: str | None = None,
    ) -> Change | None:
        """What to write for ``camera`` (None: nothing), given its entry in the index (at the
        Camera's resourceVersion ``version``), where the plan puts it (None: not this
        Pipeline's) and this tick's reports. Call :meth:`record` once the write succeeded."""
        have = self._current(camera, indexed, version)
        want = placement and next_assignment(placement, have, camera, seen, now)
        if want == have:
            return None
        before = have if have is not None and have.connected is not None else None
        kind = None if want is None else transition(before or self.reported.get(camera), want)
        return Change(want, kind)

    def record(
        self, camera: str, entry: CameraAssignment | None, version: str | None = None
    ) -> None:
        """Remember a write made when the index showed ``version`` (``None`` entry: the entry
        was dropped, the episode ends with it)."""
        if entry is None:
            for book in (self.written, self.reported, self.written_over):
                book.pop(camera, None)
            return
        self.written[camera] = entry
        if version is None:
            self.written_over.pop(camera, None)
        else:
            self.written_over[camera] = version
        if entry.connected is not None:
            self.reported[camera] = entry

    def keep_only(self, cameras: set[str]) -> None:
        """Forget cameras that no longer exist (bounded by the namespace's cameras)."""
        for book in (self.written, self.reported, self.written_over):
            for gone in set(book) - cameras:
                del book[gone]

    def _current(
        self, camera: str, indexed: CameraAssignment | None, version: str | None
    ) -> CameraAssignment | None:
        """The entry the Camera has now: the one last written here, unless the index, past
        that write, shows none at all (a new Camera, or one deleted and created again: a new
        episode too)."""
        lagging = version is not None and self.written_over.get(camera) == version
        if indexed is None and not lagging:
            self.record(camera, None)
            return None
        return self.written.get(camera, indexed)


def transition(before: CameraAssignment | None, after: CameraAssignment) -> Transition | None:
    """Which Event an entry's change deserves: one when the stream is seen failing (also the
    first report of a camera that never connected), one when it is seen streaming again;
    none while it stays down or up, and none for unknown (a worker not reporting)."""
    was = None if before is None else before.connected
    if after.connected is False and was is not False:
        return DISCONNECTED
    if after.connected is True and was is False:
        return RECONNECTED
    return None


def event_message(kind: Transition, after: CameraAssignment) -> str:
    """What the Event says: which Pipeline's worker, and the (redacted) error or the recovery."""
    where = f"pipeline {after.pipeline} (worker {pod_name(after)})"
    if kind == DISCONNECTED:
        return f"{where} cannot read the stream: {after.last_error or 'no frames'}"
    return f"{where} receives frames again after {after.reconnects or 0} reconnect attempts"
