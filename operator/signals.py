"""What the autoscaler reads: queue depth, end-to-end p99, drop rate and fps of a worker group.

Two sources, one shape (:class:`GroupSignals`): the workers' own ``/metrics`` endpoints (the
default; the operator scrapes each ready pod and differences successive scrapes), or a
Prometheus HTTP API when the Pipeline or the operator names one. A source that cannot answer
says so (``None``) rather than guessing: the autoscaler then holds its last decision.

The same scrape also carries each camera's stream health (:class:`CameraHealth`, for Camera
status: :mod:`.streamhealth`): its ``up``, reconnects, fps and last frame time are metrics; the
error text, which no metric label may carry, comes from the worker's ``/status``, read only
from a pod whose metrics show a camera down.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("kubevision.operator.signals")

LATENCY = "kubevision_frame_latency_seconds"
PROCESSED = "kubevision_frames_processed_total"
DROPPED = "kubevision_frames_dropped_total"
"""Labelled by ``reason`` too; every reason is load, so both sources sum them all."""
QUEUE = "kubevision_queue_depth"
FPS = "kubevision_stream_fps"
UP = "kubevision_camera_up"
RECONNECTS = "kubevision_camera_reconnects_total"
LAST_FRAME = "kubevision_camera_last_frame_timestamp_seconds"
MODEL_RUNNING = "kubevision_model_running"
MODEL_FAILED = "kubevision_model_artifact_failed"
DETECTIONS = "kubevision_detections_total"
CONFIDENCE = "kubevision_detection_confidence"
BATCHES = "kubevision_batch_size_count"
BATCH_ERRORS = "kubevision_batch_errors_total"
_STATUS_TIMEOUT = 2.0


@dataclass(frozen=True)
class GroupSignals:
    """One worker group's load, measured over the last window."""

    p99_ms: float | None
    """End-to-end p99 latency; None when no frame finished in the window."""
    queue_depth: float
    """Frames waiting for inference, summed over the group's pods."""
    drop_rate: float
    """Dropped / (dropped + processed) frames in the window."""
    fps: float
    """Processed frames per second, whole group."""
    pods: int
    """Pods that answered."""


@dataclass(frozen=True)
class Scrape:
    """The counters of one worker at one moment (cumulative, as Prometheus exposes them)."""

    at: float
    buckets: tuple[tuple[float, float], ...]
    """(upper bound in seconds, cumulative count), all cameras summed, sorted by bound."""
    processed: float
    dropped: float
    queue: float
    cameras: Mapping[str, CameraHealth] | None = field(default_factory=dict)
    """Stream health by camera; None when the worker showed a camera down but did not say
    why (its ``/status`` did not answer), so nothing is known about them this time."""
    models: Mapping[str, ModelHealth] = field(default_factory=dict)
    """The worker's models by role (detector, classifier, reid, pose)."""
    detections: float = 0.0
    """Detections kept, all cameras and classes (a canary rollout's detection statistics)."""
    confidence_sum: float = 0.0
    confidence_count: float = 0.0
    """Sum and count of those detections' scores."""
    batches: float = 0.0
    batch_errors: float = 0.0
    """Inference batches run, and batches that failed (detect or track)."""
    confidence_buckets: tuple[tuple[float, float], ...] = ()
    """The detections' scores as (upper bound, cumulative count), all cameras summed, sorted
    by bound (``kubevision_detection_confidence``: a canary rollout compares quantiles)."""


@dataclass(frozen=True)
class ModelHealth:
    """One model role of one worker: the config's variant, what runs, and why they differ."""

    role: str
    variant: str
    """The variant the worker's config names."""
    running: str | None
    """The variant the worker runs (the previous one when ``variant`` could not be loaded)."""
    verified: bool
    """``variant`` is loaded and its artifact's SHA-256 matched."""
    reason: str | None = None
    """Why not: ArtifactMissing, ChecksumMismatch, FetchFailed or UnsupportedArtifact."""
    message: str | None = None
    """The worker's words (from ``/status``; metrics labels carry only the reason)."""


@dataclass(frozen=True)
class CameraHealth:
    """One camera's stream as one worker reports it."""

    connected: bool | None
    """True while frames arrive; False once an attempt failed (``last_error`` says why);
    None while the first connection is still being made (no frame, no error yet)."""
    reconnects: int
    """Reconnection attempts (the worker's ``kubevision_camera_reconnects_total``)."""
    fps: float
    """Frames per second decoded (moving average)."""
    last_frame_time: float | None
    """Unix time of the newest frame; None before the first."""
    last_error: str | None = None
    """Why the stream is down, already redacted by the worker."""


def parse_metrics(text: str, at: float) -> Scrape:
    """A worker's ``/metrics`` page reduced to what scaling and Camera status need."""
    buckets: dict[float, float] = {}
    scores: dict[float, float] = {}
    processed = dropped = queue = 0.0
    per_camera: dict[str, dict[str, float]] = {}
    running: dict[str, str] = {}
    failed: dict[str, tuple[str, str]] = {}
    extra = dict.fromkeys(("detections", "confidence_sum", "confidence_count", "batches",
                           "batch_errors"), 0.0)  # fmt: skip
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LATENCY}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{CONFIDENCE}_bucket":
                bound = float(sample.labels["le"])
                scores[bound] = scores.get(bound, 0.0) + sample.value
            elif sample.name == PROCESSED:
                processed += sample.value
            elif sample.name == DROPPED:
                dropped += sample.value
            elif sample.name == QUEUE:
                queue += sample.value
            elif sample.name in (UP, RECONNECTS, FPS, LAST_FRAME):
                per_camera.setdefault(sample.labels["camera"], {})[sample.name] = sample.value
            elif sample.name in _ROLLOUT_SAMPLES:
                extra[_ROLLOUT_SAMPLES[sample.name]] += sample.value
            elif sample.name == MODEL_RUNNING and sample.value == 1.0:
                running[sample.labels["role"]] = sample.labels["variant"]
            elif sample.name == MODEL_FAILED and sample.value == 1.0:
                failed[sample.labels["role"]] = (sample.labels["variant"], sample.labels["reason"])
    cameras = {name: _from_metrics(values) for name, values in per_camera.items()}
    models = {
        role: (
            ModelHealth(role, failed[role][0], running.get(role), False, failed[role][1])
            if role in failed
            else ModelHealth(role, running[role], running[role], True)
        )
        for role in sorted({*running, *failed})
    }
    return Scrape(
        at,
        tuple(sorted(buckets.items())),
        processed,
        dropped,
        queue,
        cameras,
        models,
        **extra,
        confidence_buckets=tuple(sorted(scores.items())),
    )


_ROLLOUT_SAMPLES = {
    DETECTIONS: "detections",
    f"{CONFIDENCE}_sum": "confidence_sum",
    f"{CONFIDENCE}_count": "confidence_count",
    BATCHES: "batches",
    BATCH_ERRORS: "batch_errors",
}
"""Samples summed into :class:`Scrape`'s detection and error figures."""


def _from_metrics(values: Mapping[str, float]) -> CameraHealth:
    """A camera's health from its series; a camera not up is undecided (None) until the
    worker's ``/status`` says whether it failed or is still connecting."""
    return CameraHealth(
        connected=True if values.get(UP) == 1.0 else None,
        reconnects=int(values.get(RECONNECTS, 0.0)),
        fps=values.get(FPS, 0.0),
        last_frame_time=values.get(LAST_FRAME) or None,
    )


def parse_status(payload: Mapping[str, Any]) -> dict[str, CameraHealth]:
    """The worker's ``/status`` JSON (``{"cameras": [...]}``) as health by camera.

    A camera that is not up and has no error is still making its first connection."""
    out = {}
    for entry in payload.get("cameras") or []:
        error = entry.get("lastError") or None
        up = bool(entry.get("connected"))
        out[str(entry["camera"])] = CameraHealth(
            connected=True if up else (False if error else None),
            reconnects=int(entry.get("reconnects") or 0),
            fps=float(entry.get("fps") or 0.0),
            last_frame_time=float(entry["lastFrameTime"]) if entry.get("lastFrameTime") else None,
            last_error=None if up else error,
        )
    return out


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative (bound, count) pairs; None where it
    answers NaN (no observations)."""
    pairs = list(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    if q < 0 or q > 1:
        return -math.inf if q < 0 else math.inf
    rank = q * pairs[-1][1]
    if rank == 0 and pairs[0][1] == 0:
        return None  # Prometheus: NaN, no observation at or below the lowest bound
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # as Prometheus: the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def combine(previous: Mapping[str, Scrape], current: Mapping[str, Scrape]) -> GroupSignals | None:
    """Signals over the window between two scrapes of the same pods (by pod name).

    A pod seen only now contributes from its start (counters begin at 0); a counter that went
    down means the worker restarted, and its current value is the whole window.
    """
    if not current:
        return None
    bounds: dict[float, float] = {}
    processed = dropped = fps = 0.0
    for pod, now in current.items():
        before = previous.get(pod)
        restarted = before is None or now.processed < before.processed
        old = {} if restarted or before is None else dict(before.buckets)
        for bound, count in now.buckets:
            bounds[bound] = bounds.get(bound, 0.0) + count - old.get(bound, 0.0)
        d_processed = now.processed - (0.0 if restarted or before is None else before.processed)
        d_dropped = now.dropped - (0.0 if restarted or before is None else before.dropped)
        processed += d_processed
        dropped += max(d_dropped, 0.0)
        if before is not None and not restarted and now.at > before.at:
            fps += d_processed / (now.at - before.at)
    p99 = quantile(0.99, sorted(bounds.items()))
    total = processed + dropped
    return GroupSignals(
        p99_ms=None if p99 is None else p99 * 1000,
        queue_depth=sum(s.queue for s in current.values()),
        drop_rate=dropped / total if total else 0.0,
        fps=fps,
        pods=len(current),
    )


def scrape(url: str, timeout: float = 2.0) -> Scrape | None:
    """One worker's metrics, or None if it does not answer (logged, never raised); where a
    camera is not up, its ``/status`` too, for why."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            page = parse_metrics(resp.read().decode(), time.monotonic())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # unreachable, cut off mid-answer (a pod killed on scale-down), or not metrics text
        log.info("scrape failed url=%s error=%r", url, exc)
        return None
    if any(not m.verified for m in page.models.values()):
        page = replace(page, models=read_models(url.removesuffix("/metrics") + "/status", page))
    if page.cameras is None or all(h.connected for h in page.cameras.values()):
        return page
    return replace(page, cameras=read_status(url.removesuffix("/metrics") + "/status"))


def read_status(url: str) -> dict[str, CameraHealth] | None:
    """A worker's ``/status`` as health by camera, or None if it does not answer (logged)."""
    try:
        with urllib.request.urlopen(url, timeout=_STATUS_TIMEOUT) as resp:
            return parse_status(json.loads(resp.read()))
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
        log.info("status read failed url=%s error=%r", url, exc)
        return None


def read_models(url: str, page: Scrape) -> Mapping[str, ModelHealth]:
    """The page's model health with the messages of the worker's ``/status`` (which say what
    the metric's reason label cannot, e.g. the two checksums); the page's alone if it does
    not answer (logged)."""
    try:
        with urllib.request.urlopen(url, timeout=_STATUS_TIMEOUT) as resp:
            entries = json.loads(resp.read()).get("models") or []
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
        log.info("status read failed url=%s error=%r", url, exc)
        return page.models
    messages = {
        str(e.get("role")): str(e["message"])
        for e in entries
        if isinstance(e, dict) and e.get("message")
    }
    return {
        role: replace(health, message=messages.get(role)) if not health.verified else health
        for role, health in page.models.items()
    }


class PrometheusSource:
    """Reads a group's signals from a Prometheus server's HTTP API (instant queries)."""

    def __init__(self, base_url: str, window: str = "1m", timeout: float = 5.0) -> None:
        self._base = base_url.rstrip("/")
        self._window = window
        self._timeout = timeout

    def signals(self, pipeline: str, cameras: Iterable[str]) -> GroupSignals | None:
        """None when Prometheus cannot answer (unreachable, error, no data)."""
        names = "|".join(sorted(cameras))
        sel = f'pipeline="{pipeline}",camera=~"{names}"'
        w = self._window
        queries = {
            "p99": f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{sel}}}[{w}])))",
            "queue": f'sum({QUEUE}{{pipeline="{pipeline}"}})',
            "processed": f"sum(rate({PROCESSED}{{{sel}}}[{w}]))",
            "dropped": f"sum(rate({DROPPED}{{{sel}}}[{w}]))",
            "pods": f"count(count by (instance) ({PROCESSED}{{{sel}}}))",
        }
        values: dict[str, float | None] = {}
        for key, query in queries.items():
            try:
                values[key] = self._instant(query)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                log.warning("prometheus query failed url=%s error=%s", self._base, exc)
                return None
        if values["processed"] is None:
            return None
        processed, dropped = values["processed"] or 0.0, values["dropped"] or 0.0
        p99 = values["p99"]
        return GroupSignals(
            p99_ms=None if p99 is None or math.isnan(p99) else p99 * 1000,
            queue_depth=values["queue"] or 0.0,
            drop_rate=dropped / (processed + dropped) if processed + dropped else 0.0,
            fps=processed,
            pods=int(values["pods"] or 0),
        )

    def _instant(self, query: str) -> float | None:
        url = f"{self._base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=self._timeout) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise ValueError(f"prometheus answered {body.get('status')}: {body.get('error')}")
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None
