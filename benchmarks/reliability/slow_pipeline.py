"""Slow pipeline: a 30 FPS camera into a pipeline that can do 5 FPS.

The camera is the bottle video (640x360, 29.8 FPS) decoded at its real-time rate by the
worker's own capture thread; the detector is the real YOLOX-nano ONNX model in ONNX Runtime,
padded to a fixed 200 ms per batch (:class:`PacedBackend`) so the pipeline is slow on any
machine by the same amount, not by how busy the CPU happens to be. Over the run it samples
the worker's own metrics: end-to-end latency per processed frame (it must stay near one
processing time: the freshest frame wins, nothing queues), ``kubevision_queue_depth``
(bounded), RSS (flat) and ``kubevision_frames_dropped_total`` by reason. At the end the
camera is stopped and every decoded frame must be accounted for exactly: processed + dropped
+ skipped + still pending == decoded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks.reliability import Report
from kubevision.api.camera import Sampling
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.pipeline import Slo, TrackerStage
from kubevision.api.worker_config import (
    CameraAssignment,
    DetectorConfig,
    ModelConfig,
    WorkerConfig,
)
from kubevision.worker.backends import base as backends
from kubevision.worker.backends.base import InferenceBackend
from kubevision.worker.capture import CameraStream, CaptureOptions
from kubevision.worker.detections import FloatArray
from kubevision.worker.health import Health
from kubevision.worker.metrics import DROP_REASONS, WorkerMetrics
from kubevision.worker.models import sha256_of
from kubevision.worker.runtime import FrameResult, RuntimeOptions, WorkerRuntime
from kubevision.worker.sinks import FanOut
from tests.assets import require
from tests.envtest.poll import wait_for

PIPELINE = "reliability"
VIDEO = "videos/bottle-detection.mp4"
PROCESSING_SECONDS = 0.2
"""What one detector batch costs here: 5 FPS against the camera's 30."""
SAMPLE_SECONDS = 1.0


class PacedBackend:
    """A real backend whose every call takes at least ``seconds``: the real model runs, then
    the call waits out the rest, like an accelerator that is always this slow."""

    def __init__(self, inner: InferenceBackend, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def max_batch(self) -> int:
        return self._inner.max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return self._inner.input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self._inner.output_names

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        start = time.perf_counter()
        outputs = self._inner.infer(batch)
        time.sleep(max(0.0, self._seconds - (time.perf_counter() - start)))  # simulated cost
        return outputs


@contextmanager
def paced_backends(seconds: float) -> Iterator[None]:
    """Every backend the worker creates inside is the real one, paced to ``seconds`` a call."""
    real = backends.create_backend

    def create(*args: Any, **kwargs: Any) -> InferenceBackend:
        return PacedBackend(real(*args, **kwargs), seconds)

    with mock.patch("kubevision.worker.runtime.create_backend", create):
        yield


def yolox_model(batch_max: int) -> ModelConfig:
    """The shared YOLOX-nano (416, FP32, dynamic batch) as the worker config names it."""
    path = require("models/yolox_nano_416.onnx")
    return ModelConfig(
        variant="yolox-nano-416-onnx-fp32",
        family="yolox-nano",
        task="detect",
        format="onnx",
        precision="fp32",
        input_size=InputSize(width=416, height=416),
        decoder="yolox",
        batch_max=batch_max,
        artifact=Artifact(uri=f"file://{path}", sha256=sha256_of(path)),
    )


def file_camera(name: str, video: Path, sampling: Sampling | None = None) -> CameraAssignment:
    return CameraAssignment(
        name=name,
        url=f"file://{video}",
        timeout_seconds=5,
        fps=30,
        sampling=sampling or Sampling(),
        priority=100,
    )


def worker_config(
    cameras: list[CameraAssignment], model: ModelConfig, **extra: Any
) -> WorkerConfig:
    return WorkerConfig(
        pipeline=PIPELINE,
        namespace="reliability",
        group="reliability",
        hardware_class="cpu",
        detector=DetectorConfig(model=model, confidence=0.3, nms_iou=0.45),
        tracker=TrackerStage(type="bytetrack"),
        slo=Slo(),
        shards=[cameras],
        **extra,
    )


def process_stats(metrics: WorkerMetrics) -> dict[str, float]:
    """RSS (MiB), open FDs and OS threads of this process, from the worker's own registry."""
    value = metrics.registry.get_sample_value
    return {
        "rss_mib": round((value("process_resident_memory_bytes") or 0) / 2**20, 1),
        "fds": value("process_open_fds") or 0,
        "threads": len(os.listdir("/proc/self/task")),
    }


@dataclass
class Sampler:
    """Calls ``probe`` every ``interval`` seconds on a thread, keeping each result."""

    probe: Callable[[], dict[str, Any]]
    interval: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        start = time.monotonic()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.samples.append({"t": round(time.monotonic() - start, 1), **self.probe()})

        self._thread = threading.Thread(target=loop, name="reliability-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def growth(samples: list[dict[str, Any]], key: str, warmup: float) -> dict[str, float]:
    """``key`` after warm-up: its first value, last value, maximum and growth in percent."""
    after = [s[key] for s in samples if s["t"] >= warmup] or [s[key] for s in samples]
    first, last = float(after[0]), float(after[-1])
    return {
        "first": first,
        "last": last,
        "max": float(max(after)),
        "growth_pct": round(100 * (last - first) / first, 1) if first else 0.0,
    }


def accounting(metrics: WorkerMetrics, camera: str, decoded: int) -> dict[str, int]:
    """Where each decoded frame of ``camera`` went, read from the worker's metrics."""
    value = metrics.registry.get_sample_value
    labels = {"pipeline": PIPELINE, "camera": camera}
    counts = {
        "decoded": decoded,
        "processed": int(value("kubevision_frames_processed_total", labels) or 0),
        "skipped": int(value("kubevision_frames_skipped_total", labels) or 0),
        "pending": int(value("kubevision_queue_depth", {"pipeline": PIPELINE}) or 0),
    }
    for reason in DROP_REASONS:
        counts[f"dropped_{reason}"] = int(
            value("kubevision_frames_dropped_total", {**labels, "reason": reason}) or 0
        )
    return counts


def accounted(counts: dict[str, int]) -> bool:
    return sum(v for k, v in counts.items() if k != "decoded") == counts["decoded"]


def settled_accounting(metrics: WorkerMetrics, camera: str, decoded: int) -> dict[str, int]:
    """The accounting once the camera has stopped and its last frames have landed (none
    pending, none in flight): it must then add up exactly."""

    def settled() -> dict[str, int] | None:
        counts = accounting(metrics, camera, decoded)
        return counts if accounted(counts) and counts["pending"] == 0 else None

    return wait_for(
        settled,
        timeout=10 + 10 * PROCESSING_SECONDS,
        what=f"every decoded frame of {camera} to be processed, dropped, skipped or pending",
    )


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def measure(seconds: float) -> dict[str, Any]:
    """Run the slow pipeline for ``seconds``; the figures and the final frame accounting."""
    metrics = WorkerMetrics(PIPELINE)
    config = worker_config([file_camera("cam", require(VIDEO))], yolox_model(batch_max=1))
    latencies: list[tuple[float, float]] = []
    start = time.monotonic()

    def on_result(result: FrameResult) -> None:
        latencies.append((time.monotonic() - start, result.latency_seconds))

    def probe() -> dict[str, Any]:
        depth = metrics.registry.get_sample_value("kubevision_queue_depth", {"pipeline": PIPELINE})
        return {**process_stats(metrics), "queue_depth": depth or 0}

    options = RuntimeOptions(capture=CaptureOptions(loop=True, realtime=True), threads=1)
    with paced_backends(PROCESSING_SECONDS):
        runtime = WorkerRuntime(
            config, 0, metrics, Health(), FanOut([], PIPELINE), options, on_result=on_result
        )
    runtime.start()
    try:
        with Sampler(probe, SAMPLE_SECONDS) as sampler:
            time.sleep(seconds)  # the load is held for this long; sampling runs meanwhile
        stream = runtime.cameras["cam"]
        assert isinstance(stream, CameraStream)
        stream.stop()  # the camera ends: what it decoded must all be accounted for
        decoded = stream.last_index + 1
        counts = settled_accounting(metrics, "cam", decoded)
    finally:
        runtime.stop()
    thirds = [
        [lat for t, lat in latencies if i * seconds / 3 <= t < (i + 1) * seconds / 3]
        for i in range(3)
    ]
    return {
        "seconds": seconds,
        "processing_ms": PROCESSING_SECONDS * 1000,
        "processed_fps": round(counts["processed"] / seconds, 2),
        "latency": percentiles_ms([lat for _, lat in latencies]),
        "latency_by_third": [percentiles_ms(third) for third in thirds],
        "queue_depth_max": max(s["queue_depth"] for s in sampler.samples),
        "rss_mib": growth(sampler.samples, "rss_mib", warmup=min(10.0, seconds / 3)),
        "accounting": counts,
        "accounted_exactly": accounted(counts),
    }


def run(full: bool) -> Report:
    seconds = 300.0 if full else 30.0
    figures = measure(seconds)
    p99_last = figures["latency_by_third"][-1]["p99_ms"]
    ok = (
        figures["accounted_exactly"]
        and figures["queue_depth_max"] <= 2
        and p99_last <= 3 * PROCESSING_SECONDS * 1000
        and figures["rss_mib"]["growth_pct"] <= 5
    )
    counts = figures["accounting"]
    return Report(
        name="slow_pipeline",
        load=f"1 file camera at 29.8 FPS for {seconds:g} s into YOLOX-nano (ONNX Runtime) "
        f"paced to {PROCESSING_SECONDS * 1000:g} ms a batch (5 FPS)",
        faults="inference 6x slower than the camera",
        bad_inputs="none",
        lost=(
            f"nothing unaccounted: {counts['decoded']} decoded = {counts['processed']} "
            f"processed + {sum(v for k, v in counts.items() if k.startswith('dropped_'))} "
            f"dropped (by reason) + {counts['skipped']} skipped + {counts['pending']} pending"
            if figures["accounted_exactly"]
            else f"frames unaccounted for: {counts}"
        ),
        ok=ok,
        figures=figures,
        command="python -m benchmarks.reliability --only slow_pipeline",
    )
