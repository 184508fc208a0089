"""Soak: 8 streams for a long time, with camera churn and tracks starting and ending.

Eight file cameras (the bottle and car videos, looping at their real-time rate) run through
the real worker runtime: YOLOX-nano (ONNX Runtime, cross-camera batches of up to 8) →
ByteTrack → MobileNetV2 crop classifier → events. Every ``churn_every`` seconds the config
changes as an operator reload would send it through :meth:`WorkerRuntime.apply`: one camera
is removed and a new one (new name, same video) added, and another camera's sampling is
changed (so it restarts). Every ``sample_every`` seconds it samples RSS, open FDs, OS threads,
the worker's per-camera state (:meth:`WorkerRuntime.state_sizes`) and the metric series that
carry a camera label. After the run it checks that threads and FDs are back at the warm-up
baseline, and that no removed camera left state or series behind.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.reliability import Report
from benchmarks.reliability.slow_pipeline import (
    Sampler,
    file_camera,
    growth,
    process_stats,
    worker_config,
    yolox_model,
)
from kubevision.api.camera import Sampling
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import CameraAssignment, ClassifierConfig, ModelConfig
from kubevision.worker.allocator import tune_allocator
from kubevision.worker.capture import CaptureOptions
from kubevision.worker.health import Health
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import sha256_of
from kubevision.worker.runtime import FrameResult, RuntimeOptions, WorkerRuntime
from kubevision.worker.sinks import FanOut
from tests.assets import require
from tests.envtest.poll import wait_for

STREAMS = 8
VIDEOS = ("videos/bottle-detection.mp4", "videos/car-detection.mp4")
RESTART_SAMPLING = (Sampling(), Sampling(mode="everyN", every_n=2))
"""A changed camera flips between these, which restarts its stream."""


@dataclass(frozen=True)
class Size:
    seconds: float
    warmup: float
    churn_every: float
    sample_every: float


FULL = Size(seconds=1800, warmup=180, churn_every=60, sample_every=30)
SMALL = Size(seconds=60, warmup=12, churn_every=6, sample_every=2)


def classifier() -> ClassifierConfig:
    path = require("models/mobilenetv2_12_int8.onnx")
    model = ModelConfig(
        variant="mobilenetv2-int8",
        family="mobilenetv2",
        task="classify",
        format="onnx",
        precision="int8",
        input_size=InputSize(width=224, height=224),
        batch_max=1,
        artifact=Artifact(uri=f"file://{path}", sha256=sha256_of(path)),
    )
    return ClassifierConfig(model=model, refresh_frames=30)


@dataclass
class Churn:
    """The camera set an operator would send, changed one step at a time."""

    cameras: list[CameraAssignment] = field(default_factory=list)
    steps: int = 0
    removed: list[str] = field(default_factory=list)

    @classmethod
    def initial(cls) -> Churn:
        videos = [require(VIDEOS[i % len(VIDEOS)]) for i in range(STREAMS)]
        return cls([file_camera(f"cam-{i}", video) for i, video in enumerate(videos)])

    def step(self) -> None:
        """Replace one camera by a new one on the same video; re-sample (restart) another."""
        slot = self.steps % STREAMS
        old = self.cameras[slot]
        self.removed.append(old.name)
        self.cameras[slot] = old.model_copy(update={"name": f"cam-{STREAMS + self.steps}"})
        other = self.cameras[(slot + 1) % STREAMS]
        sampling = RESTART_SAMPLING[(self.steps // STREAMS + 1) % len(RESTART_SAMPLING)]
        self.cameras[(slot + 1) % STREAMS] = other.model_copy(update={"sampling": sampling})
        self.steps += 1


def camera_series(metrics: WorkerMetrics) -> tuple[int, set[str]]:
    """Exported samples that carry a camera label, and the cameras they name."""
    series, cameras = 0, set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            if "camera" in sample.labels:
                series += 1
                cameras.add(sample.labels["camera"])
    return series, cameras


def _settled(
    runtime: WorkerRuntime, metrics: WorkerMetrics, baseline: dict[str, float], churn: Churn
) -> dict[str, Any] | None:
    """The end state once retired streams have wound down: threads and FDs back at the
    baseline, state and series only of the current cameras."""
    stats = process_stats(metrics)
    sizes = runtime.state_sizes()
    series, cameras = camera_series(metrics)
    current = {c.name for c in churn.cameras}
    if stats["threads"] > baseline["threads"] or stats["fds"] > baseline["fds"]:
        return None
    if cameras != current or sizes["cameras"] != STREAMS or sizes["batcher_streams"] > STREAMS:
        return None
    if sizes["tracker_cameras"] != STREAMS:
        return None
    return {**stats, **sizes, "camera_series": series}


def measure(size: Size) -> dict[str, Any]:
    """Run the soak at ``size``; samples over time and the end-state checks.

    The runtime runs in this process, so it gets the allocator settings the worker's entry
    point applies (:func:`tune_allocator`) before any stream starts."""
    tune_allocator()
    metrics = WorkerMetrics("reliability")
    churn = Churn.initial()
    model = yolox_model(batch_max=STREAMS)
    config = worker_config(churn.cameras, model, classifier=classifier())
    events: Counter[str] = Counter()

    def on_result(result: FrameResult) -> None:
        events.update(event.kind for event in result.events)

    def probe() -> dict[str, Any]:
        series, cameras = camera_series(metrics)
        return {
            **process_stats(metrics),
            **runtime.state_sizes(),
            "camera_series": series,
            "series_cameras": len(cameras),
        }

    options = RuntimeOptions(
        capture=CaptureOptions(loop=True, realtime=True),
        threads=1,
        classifier_labels=require("models/imagenet_classes.txt"),
    )
    runtime = WorkerRuntime(
        config, 0, metrics, Health(), FanOut([], "reliability"), options, on_result=on_result
    )
    runtime.start()
    try:
        with Sampler(probe, size.sample_every) as sampler:
            time.sleep(size.warmup)  # the load is held; sampling runs meanwhile
            baseline = process_stats(metrics)
            start = time.monotonic()
            while time.monotonic() - start < size.seconds - size.warmup:
                time.sleep(size.churn_every)  # an operator reload every churn_every seconds
                churn.step()
                runtime.apply(config.model_copy(update={"shards": [list(churn.cameras)]}))
        end = wait_for(
            lambda: _settled(runtime, metrics, baseline, churn),
            timeout=60,
            what="threads/FDs back at the baseline and only current cameras' state and series",
        )
    finally:
        runtime.stop()
    samples = sampler.samples
    return {
        "streams": STREAMS,
        "seconds": size.seconds,
        "warmup_seconds": size.warmup,
        "churn_steps": churn.steps,
        "cameras_removed": len(churn.removed),
        "events": dict(events),
        "baseline": baseline,
        "end": end,
        "rss_mib": growth(samples, "rss_mib", size.warmup),
        "fds": growth(samples, "fds", size.warmup),
        "threads": growth(samples, "threads", size.warmup),
        "live_tracks_max": max(s["live_tracks"] for s in samples),
        "classifier_labels_max": max(s["classifier_labels"] for s in samples),
        "batcher_streams_max": max(s["batcher_streams"] for s in samples),
        "tracker_cameras_max": max(s["tracker_cameras"] for s in samples),
        "camera_series": growth(samples, "camera_series", size.warmup),
        "series_cameras_max": max(s["series_cameras"] for s in samples),
        "samples": samples,
    }


def run(full: bool) -> Report:
    size = FULL if full else SMALL
    figures = measure(size)
    ok = figures["rss_mib"]["growth_pct"] <= 5
    return Report(
        name="soak",
        load=f"{STREAMS} file cameras (bottle, car) looping at real time for {size.seconds:g} s "
        "through YOLOX-nano, ByteTrack and a MobileNetV2 crop classifier",
        faults=f"camera churn every {size.churn_every:g} s ({figures['churn_steps']} reloads: "
        "one camera replaced by a new one, another restarted)",
        bad_inputs="none",
        lost=f"RSS {figures['rss_mib']['growth_pct']} % after warm-up; threads "
        f"{figures['baseline']['threads']:g} -> {figures['end']['threads']:g}, FDs "
        f"{figures['baseline']['fds']:g} -> {figures['end']['fds']:g}; no series or state of "
        f"the {figures['cameras_removed']} removed cameras left",
        ok=ok,
        figures=figures,
        command="python -m benchmarks.reliability --only soak",
    )
