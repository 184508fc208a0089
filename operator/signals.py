"""What the autoscaler reads: queue depth, end-to-end p99, drop rate and fps of a worker group.

Two sources, one shape (:class:`GroupSignals`): the workers' own ``/metrics`` endpoints (the
default; the operator scrapes each ready pod and differences successive scrapes), or a
Prometheus HTTP API when the Pipeline or the operator names one. A source that cannot answer
says so (``None``) rather than guessing: the autoscaler then holds its last decision.
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
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("kubevision.operator.signals")

LATENCY = "kubevision_frame_latency_seconds"
PROCESSED = "kubevision_frames_processed_total"
DROPPED = "kubevision_frames_dropped_total"
"""Labelled by ``reason`` too; every reason is load, so both sources sum them all."""
QUEUE = "kubevision_queue_depth"
FPS = "kubevision_stream_fps"


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


def parse_metrics(text: str, at: float) -> Scrape:
    """A worker's ``/metrics`` page reduced to what scaling needs."""
    buckets: dict[float, float] = {}
    processed = dropped = queue = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LATENCY}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == PROCESSED:
                processed += sample.value
            elif sample.name == DROPPED:
                dropped += sample.value
            elif sample.name == QUEUE:
                queue += sample.value
    return Scrape(at, tuple(sorted(buckets.items())), processed, dropped, queue)


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
    """One worker's metrics, or None if it does not answer (logged, never raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse_metrics(resp.read().decode(), time.monotonic())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # unreachable, cut off mid-answer (a pod killed on scale-down), or not metrics text
        log.info("scrape failed url=%s error=%r", url, exc)
        return None


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
