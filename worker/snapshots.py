"""Event snapshots: a JPEG crop of the tracked object for the track events a Pipeline's
``spec.snapshots`` names, referenced from the event (``TrackEvent.snapshot``: uri, size,
sha256, width, height).

The processing loop only cuts the crops out of the frame (a copy of the box, microseconds) and
hands them with the frame's events to :class:`Snapshotter`, whose one thread encodes them
(OpenCV ``cv2.imencode``), stores them and then publishes the events to the sinks. Every event
of the pipeline goes through that thread, so events keep their order (a ``track.ended`` never
overtakes its ``track.started``). Its queue is bounded: beyond ``max_pending_crops`` frames
with crops waiting, new crops are dropped (the events still go, without a snapshot) and
counted; beyond ``max_jobs`` frames waiting at all (a store stuck in a call), the oldest
frame's events are published from the caller at once, without their crops: events are never
lost to a snapshot store.

Stores:

* :class:`NodeStore`: files ``<pipeline>/<camera>/<time>-<track>-<kind>.jpg`` under the
  worker's snapshot folder (``--snapshot-dir``: a hostPath or emptyDir the chart and operator
  configure), bounded by files and bytes; beyond either bound the oldest files are deleted
  and counted (``kubevision_snapshots_evicted_total``). Files left by an earlier run count
  towards the bounds, so a restarted worker keeps the folder bounded too.
* :class:`S3Store`: objects of the same names under ``s3://bucket[/prefix]`` (MinIO client,
  short timeouts: a store that is down costs each snapshot at most a few seconds, and it is
  dropped and counted, the event still published).
* :class:`InlineStore`: a ``data:image/jpeg;base64,...`` URI in the event itself, so the crop
  travels with the event through the outputs' spools (an edge site's uplink, the cascade).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram

from kubevision.api.worker_config import SnapshotConfig
from kubevision.worker.events import Snapshot, TrackEvent
from kubevision.worker.sinks import FanOut

log = logging.getLogger("kubevision.worker.snapshots")

Image = npt.NDArray[np.uint8]
DropReason = Literal["queue_full", "store_error", "empty_crop"]
DROP_REASONS: tuple[DropReason, ...] = ("queue_full", "store_error", "empty_crop")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_S3_TIMEOUT_SECONDS = 5.0


class SnapshotError(RuntimeError):
    """A snapshot could not be stored (I/O error, store unreachable); the message says where."""


# -- crops ------------------------------------------------------------------------------------


def crop(image: Image, box: tuple[float, float, float, float], margin: float) -> Image | None:
    """The box plus ``margin`` of its size on each side, clipped to the frame; a copy, so the
    frame can be reused while the crop waits. None when nothing of the box is in the frame."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    height, width = image.shape[:2]
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    if right <= left or bottom <= top:
        return None
    return image[top:bottom, left:right].copy()


def encode_jpeg(pixels: Image, quality: int) -> bytes:
    """BGR pixels as a baseline JPEG (OpenCV/libjpeg-turbo)."""
    ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SnapshotError(f"OpenCV could not encode a {pixels.shape} crop as JPEG")
    return bytes(buffer.tobytes())


def snapshot_key(event: TrackEvent) -> str:
    """``<pipeline>/<camera>/<capture time>-<track>-<kind>.jpg``: unique per event, sorting by
    time within a camera, and safe as a path and an object key."""
    when = event.capture_time.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kind = event.kind.replace("track.", "")
    return "/".join(
        (
            _UNSAFE.sub("_", event.pipeline),
            _UNSAFE.sub("_", event.camera),
            f"{when}-{event.track_id}-{kind}.jpg",
        )
    )


# -- stores -----------------------------------------------------------------------------------


class SnapshotStore(Protocol):
    """Keeps one JPEG under a key and says the URI it can be read back from."""

    storage: str

    def put(self, key: str, data: bytes) -> str: ...


class InlineStore:
    """The JPEG in the URI itself (RFC 2397 data: URI, base64: a third bigger)."""

    storage = "inline"

    def put(self, key: str, data: bytes) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


class NodeStore:
    """Files under ``root``, at most ``max_files`` and ``max_bytes``; the oldest go first."""

    storage = "node"

    def __init__(
        self, root: Path, max_files: int, max_bytes: int, evicted: Callable[[int], None]
    ) -> None:
        if max_files < 1 or max_bytes < 1:
            raise ValueError(f"snapshot bounds must be positive: {max_files} files {max_bytes} B")
        self.root = root
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._evicted = evicted
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SnapshotError(f"cannot create snapshot folder {root}: {exc.strerror}") from exc
        self._files: collections.deque[tuple[Path, int]] = collections.deque(self._existing())
        self.bytes = sum(size for _, size in self._files)
        self._evict()

    @property
    def files(self) -> int:
        return len(self._files)

    def _existing(self) -> list[tuple[Path, int]]:
        """An earlier run's snapshots, oldest first (they count towards the bounds)."""
        found = []
        for path in self.root.rglob("*.jpg"):
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile
                continue
            found.append((stat.st_mtime_ns, str(path), path, stat.st_size))
        return [(path, size) for _, _, path, size in sorted(found)]

    def put(self, key: str, data: bytes) -> str:
        path = self.root / key
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers never see half a file
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror}") from exc
        self._files.append((path, len(data)))
        self.bytes += len(data)
        self._evict()
        return path.resolve().as_uri()

    def _evict(self) -> None:
        evicted = 0
        while self._files and (len(self._files) > self.max_files or self.bytes > self.max_bytes):
            path, size = self._files.popleft()
            path.unlink(missing_ok=True)
            self.bytes -= size
            evicted += 1
        if evicted:
            self._evicted(evicted)


class S3Store:
    """Objects under ``s3://bucket[/prefix]`` of an S3-compatible store (the bucket must
    exist: the worker does not create buckets)."""

    storage = "s3"

    def __init__(
        self, url: str, endpoint: str | None = None, keys: tuple[str, str] | None = None
    ) -> None:
        import urllib3

        from kubevision.worker.models import s3_client

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise SnapshotError(f"snapshot url must be s3://bucket[/prefix], got {url!r}")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        # short timeouts and one retry: a store that is down must not hold events for long
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=_S3_TIMEOUT_SECONDS, read=_S3_TIMEOUT_SECONDS),
            retries=urllib3.Retry(total=1, backoff_factor=0.2),
        )
        self._client = s3_client(endpoint, keys, http)

    def put(self, key: str, data: bytes) -> str:
        from minio.error import MinioException

        name = f"{self.prefix}/{key}" if self.prefix else key
        try:
            self._client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type="image/jpeg"
            )
        except (MinioException, OSError, ValueError) as exc:
            raise SnapshotError(f"s3://{self.bucket}: {type(exc).__name__}: {exc}") from exc
        return f"s3://{self.bucket}/{name}"


# -- metrics ----------------------------------------------------------------------------------


class SnapshotMetrics:
    """``kubevision_snapshots_stored_total`` and ``_bytes_total`` (by storage),
    ``_dropped_total`` (by reason: :data:`DROP_REASONS`), ``_evicted_total`` (node files
    deleted for the bounds) and ``kubevision_snapshot_seconds`` (encode + store)."""

    def __init__(self, registry: CollectorRegistry, pipeline: str) -> None:
        self.pipeline = pipeline
        self.stored = Counter(
            "kubevision_snapshots_stored",
            "Event snapshots encoded and stored.",
            ["pipeline", "storage"],
            registry=registry,
        )
        self.bytes = Counter(
            "kubevision_snapshots_bytes",
            "JPEG bytes of the snapshots stored.",
            ["pipeline", "storage"],
            registry=registry,
        )
        self.dropped = Counter(
            "kubevision_snapshots_dropped",
            "Snapshots not taken (their events went without one), by reason: queue_full "
            "(the encoder fell behind), store_error, empty_crop (box outside the frame).",
            ["pipeline", "reason"],
            registry=registry,
        )
        self.evicted = Counter(
            "kubevision_snapshots_evicted",
            "Snapshot files deleted from the node folder to keep it within its bounds.",
            ["pipeline"],
            registry=registry,
        )
        self.seconds = Histogram(
            "kubevision_snapshot_seconds",
            "Time to encode and store one snapshot.",
            ["pipeline", "storage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(pipeline, reason)
        self.evicted.labels(pipeline)

    def drop(self, reason: DropReason, count: int = 1) -> None:
        if count:
            self.dropped.labels(self.pipeline, reason).inc(count)


def build_store(
    config: SnapshotConfig,
    metrics: SnapshotMetrics,
    snapshot_dir: Path | None,
    environ: Mapping[str, str] = os.environ,
) -> SnapshotStore:
    """The store ``config.storage`` asks for; raises :class:`SnapshotError` when it lacks
    what it needs (a folder for node snapshots, the bucket's keys in the environment)."""
    match config.storage:
        case "inline":
            return InlineStore()
        case "node":
            if snapshot_dir is None:
                raise SnapshotError("node snapshots need a folder: --snapshot-dir")
            return NodeStore(
                snapshot_dir,
                config.max_files,
                config.max_bytes,
                metrics.evicted.labels(metrics.pipeline).inc,
            )
        case "s3":
            if config.url is None:
                raise SnapshotError("s3 snapshots need a url (s3://bucket[/prefix])")
            keys = None
            if config.credentials is not None:
                names = (config.credentials.username_env, config.credentials.password_env)
                missing = [n for n in names if not environ.get(n)]
                if missing:
                    raise SnapshotError(
                        f"the snapshot bucket's credentials are not set: {', '.join(missing)}"
                    )
                keys = (environ[names[0]], environ[names[1]])
            return S3Store(config.url, config.endpoint, keys)


# -- the encoder thread -----------------------------------------------------------------------


@dataclass
class _Job:
    """One frame's events and the crops of those that get a snapshot (by event index)."""

    events: list[TrackEvent]
    crops: dict[int, Image] = field(default_factory=dict)


class Snapshotter:
    """Puts the snapshots of a pipeline's events into ``store`` and publishes the events to
    ``sink``, from one thread, in submission order (module docstring)."""

    def __init__(
        self,
        sink: FanOut,
        store: SnapshotStore,
        config: SnapshotConfig,
        metrics: SnapshotMetrics,
        *,
        max_pending_crops: int = 64,
        max_jobs: int = 4096,
    ) -> None:
        if max_pending_crops < 1 or max_jobs < max_pending_crops:
            raise ValueError(
                f"need 1 <= max_pending_crops <= max_jobs, got {max_pending_crops}, {max_jobs}"
            )
        self._sink = sink
        self._store = store
        self._kinds = frozenset(config.events)
        self._quality = config.jpeg_quality
        self._margin = config.margin
        self._metrics = metrics
        self._max_crops = max_pending_crops
        self._max_jobs = max_jobs
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._with_crops = 0
        self._closing = False
        self._store_failing = False
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Frames whose events wait for the encoder."""
        with self._cond:
            return len(self._jobs)

    def submit(self, events: list[TrackEvent], image: Callable[[], Image] | None) -> None:
        """Queue a frame's events; ``image()`` gives the frame's host pixels (asked for only
        when an event wants a snapshot: a GPU frame is copied down only then)."""
        if not events:
            return
        wanted = [i for i, e in enumerate(events) if e.kind in self._kinds]
        job = _Job(events)
        if wanted and image is not None:
            with self._cond:
                room = self._with_crops < self._max_crops
            if room:
                pixels = image()
                for i in wanted:
                    cut = crop(pixels, events[i].box, self._margin)
                    if cut is None:
                        self._metrics.drop("empty_crop")
                    else:
                        job.crops[i] = cut
            else:
                self._metrics.drop("queue_full", len(wanted))
        overflow = None
        with self._cond:
            if len(self._jobs) >= self._max_jobs:
                overflow = self._jobs.popleft()
                self._with_crops -= bool(overflow.crops)
                self._metrics.drop("queue_full", len(overflow.crops))
            self._jobs.append(job)
            self._with_crops += bool(job.crops)
            self._cond.notify_all()
        if overflow is not None:
            self._sink.publish(overflow.events)  # events are never lost to a stuck store

    def close(self, timeout: float = 10.0) -> None:
        """Encode and publish what is queued (up to ``timeout``), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left, self._jobs = list(self._jobs), collections.deque()
        for job in left:  # the thread did not finish in time: publish without snapshots
            self._metrics.drop("queue_full", len(job.crops))
            self._sink.publish(job.events)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closing)
                if not self._jobs:
                    return
                job = self._jobs[0]
            events = self._snap(job)
            with self._cond:
                if self._jobs and self._jobs[0] is job:  # not published by an overflow
                    self._jobs.popleft()
                    self._with_crops -= bool(job.crops)
                else:
                    continue
            self._sink.publish(events)

    def _snap(self, job: _Job) -> list[TrackEvent]:
        events = list(job.events)
        for i, pixels in job.crops.items():
            started = time.perf_counter()
            try:
                data = encode_jpeg(pixels, self._quality)
                uri = self._store.put(snapshot_key(events[i]), data)
            except SnapshotError as exc:
                self._metrics.drop("store_error")
                self._store_failed(exc)
                continue
            self._store_failing = False
            storage = self._store.storage
            self._metrics.seconds.labels(self._metrics.pipeline, storage).observe(
                time.perf_counter() - started
            )
            self._metrics.stored.labels(self._metrics.pipeline, storage).inc()
            self._metrics.bytes.labels(self._metrics.pipeline, storage).inc(len(data))
            height, width = pixels.shape[:2]
            snapshot = Snapshot(
                uri=uri,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                width=width,
                height=height,
            )
            events[i] = events[i].model_copy(update={"snapshot": snapshot})
        return events

    def _store_failed(self, exc: SnapshotError) -> None:
        """Log a failing store once per episode, not once per snapshot."""
        first, self._store_failing = not self._store_failing, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "snapshot not stored, event published without it: storage=%s error=%s",
            self._store.storage,
            exc,
            extra={"storage": self._store.storage, "error": str(exc)},
        )
