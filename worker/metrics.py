"""Prometheus metrics of a worker: the contract the autoscaler, dashboards and alerts read.

Names carry the ``kubevision_`` prefix; labels are only ``pipeline``, ``camera``, ``stage``,
``class``, ``decoder`` and ``reason`` (all bounded: cameras per worker and detector classes are
finite, decoders are ``cpu`` or ``nvdec``, reasons are :data:`DROP_REASONS`). Each worker owns
one :class:`WorkerMetrics` with its own registry, so tests can run several side by side; the
registry also carries the process' CPU and memory (``process_*``) for the dashboards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

STAGES = ("decode", "preprocess", "infer", "postprocess", "track", "classify", "pose", "publish")
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

DropReason = Literal["buffer_full", "superseded", "stale"]
"""Why a sampled frame was not analysed: the capture buffer overwrote it (``buffer_full``), a
newer frame of its camera replaced it while it waited for a batch (``superseded``), or it was
overtaken while its camera moved between lanes (``stale``)."""
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


class WorkerMetrics:
    """All metrics of one worker process."""

    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry()
        r = self.registry
        cam = ["pipeline", "camera"]
        self.frames_processed = Counter(
            "kubevision_frames_processed",
            "Frames that went through the whole pipeline.",
            cam,
            registry=r,
        )
        self.frames_dropped = Counter(
            "kubevision_frames_dropped",
            "Sampled frames never analysed because the pipeline was slower than the camera, "
            "by reason (buffer_full, superseded, stale).",
            [*cam, "reason"],
            registry=r,
        )
        self.frames_skipped = Counter(
            "kubevision_frames_skipped", "Frames the sampler chose not to analyse.", cam, registry=r
        )
        self.frame_latency = Histogram(
            "kubevision_frame_latency_seconds",
            "End-to-end latency per frame: capture timestamp to result published.",
            cam,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "kubevision_stage_latency_seconds",
            "Latency of one pipeline stage per batch (each of its frames waits that long).",
            ["pipeline", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubevision_queue_depth",
            "Frames waiting for inference across this worker's cameras.",
            ["pipeline"],
            registry=r,
        )
        self.batch_size = Histogram(
            "kubevision_batch_size",
            "Frames per inference batch.",
            ["pipeline"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.camera_up = Gauge(
            "kubevision_camera_up",
            "1 while the camera delivers frames, 0 otherwise.",
            cam,
            registry=r,
        )
        self.reconnects = Counter(
            "kubevision_camera_reconnects",
            "Reconnection attempts after a stream failed.",
            cam,
            registry=r,
        )
        self.detections = Counter(
            "kubevision_detections",
            "Detections kept after filtering, by class.",
            ["pipeline", "camera", "class"],
            registry=r,
        )
        self.detection_confidence = Histogram(
            "kubevision_detection_confidence",
            "Scores of the detections kept (after tracking): a canary rollout compares their "
            "distribution between cohorts.",
            cam,
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.batch_errors = Counter(
            "kubevision_batch_errors",
            "Batches whose detection (stage detect) or tracking and publishing (stage track) "
            "raised; the worker logs why and goes on.",
            ["pipeline", "stage"],
            registry=r,
        )
        for stage in ("detect", "track"):  # exported at 0, so an error rate is never empty
            self.batch_errors.labels(pipeline, stage)
        self.stream_fps = Gauge(
            "kubevision_stream_fps",
            "Frames per second decoded from the camera (moving average).",
            cam,
            registry=r,
        )
        self.last_frame = Gauge(
            "kubevision_camera_last_frame_timestamp_seconds",
            "Unix time of the newest frame decoded from the camera (0 before the first).",
            cam,
            registry=r,
        )
        self.camera_decoder = Gauge(
            "kubevision_camera_decoder",
            "1 for the decoder the camera uses (cpu: FFmpeg, nvdec: the GPU's video decoder).",
            [*cam, "decoder"],
            registry=r,
        )
        self.tracks_active = Gauge(
            "kubevision_tracks_active",
            "Tracks the camera's event builder holds live (seen, not yet ended).",
            cam,
            registry=r,
        )
        self.tracks_started = Counter(
            "kubevision_tracks_started",
            "New tracks, by the detector class of their first sighting.",
            ["pipeline", "camera", "class"],
            registry=r,
        )
        self.slo_p99 = Gauge(
            "kubevision_slo_p99_latency_seconds",
            "The Pipeline's end-to-end p99 latency objective (spec.slo.p99LatencyMs), for "
            "dashboards and alerts to compare kubevision_frame_latency_seconds with.",
            ["pipeline"],
            registry=r,
        )
        self.model_running = Gauge(
            "kubevision_model_running",
            "1 for each ModelVariant the worker runs now, by role (detector, classifier, reid, "
            "pose).",
            ["pipeline", "role", "variant"],
            registry=r,
        )
        self.model_artifact_failed = Gauge(
            "kubevision_model_artifact_failed",
            "1 while the config's ModelVariant for a role cannot be loaded, by reason "
            "(ArtifactMissing, ChecksumMismatch, FetchFailed, UnsupportedArtifact); the worker "
            "keeps running the model it had (kubevision_model_running).",
            ["pipeline", "role", "variant", "reason"],
            registry=r,
        )
        self._models: dict[str, dict[str, Any]] = {}
        """role -> its ``/status`` entry (what runs, and why the wanted variant does not)."""
        ProcessCollector(registry=r)
        self._per_camera = (
            self.frames_processed,
            self.frames_dropped,
            self.frames_skipped,
            self.frame_latency,
            self.camera_up,
            self.reconnects,
            self.detections,
            self.detection_confidence,
            self.stream_fps,
            self.last_frame,
            self.camera_decoder,
            self.tracks_active,
            self.tracks_started,
        )
        """Every family with a ``camera`` label: a removed camera's series go from all of them."""
        self._latest: dict[str, CameraMetrics] = {}
        """The newest CameraMetrics of each camera: a restarted camera's new stream starts
        before the old one stops, and the old one must not remove the new one's series."""

    def camera(self, camera: str) -> CameraMetrics:
        """The metrics of one camera, labels bound once."""
        metrics = self._latest[camera] = CameraMetrics(self, camera)
        return metrics

    def is_latest(self, metrics: CameraMetrics) -> bool:
        return self._latest.get(metrics.camera) is metrics

    def forget(self, metrics: CameraMetrics) -> None:
        """Drop a removed camera's series, so cameras churning through a worker for months
        leave no labels behind; a no-op when a newer stream of the camera owns them."""
        if not self.is_latest(metrics):
            return
        del self._latest[metrics.camera]
        for family in self._per_camera:
            family.remove_by_labels({"pipeline": self.pipeline, "camera": metrics.camera})

    def frames_dropped_total(self, camera: str) -> float:
        """The camera's dropped frames, all reasons summed (what tests and benchmarks read)."""
        return sum(
            self.registry.get_sample_value(
                "kubevision_frames_dropped_total",
                {"pipeline": self.pipeline, "camera": camera, "reason": reason},
            )
            or 0.0
            for reason in DROP_REASONS
        )

    def camera_status(self) -> list[dict[str, Any]]:
        """Each current camera's stream health, as the worker's ``/status`` serves it: the
        values of its metric series plus the last error, which no label may carry."""
        families = {
            "reconnects": self.reconnects,
            "fps": self.stream_fps,
            "lastFrameTime": self.last_frame,
        }
        values: dict[tuple[str, str], float] = {}
        for key, family in families.items():
            for metric in family.collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_created"):
                        values[key, sample.labels["camera"]] = sample.value
        return [
            _camera_entry(name, metrics.health, values)
            for name, metrics in sorted(dict(self._latest).items())  # a copy: threads add
        ]

    def models_loaded(self, running: dict[str, str]) -> None:
        """``running``: role -> variant, every model of the config now loaded and verified."""
        self.model_running.clear()
        self.model_artifact_failed.clear()
        for role, variant in running.items():
            self.model_running.labels(self.pipeline, role, variant).set(1)
        self._models = {
            role: {"role": role, "variant": variant, "running": variant, "verified": True}
            for role, variant in running.items()
        }

    def model_failed(self, role: str, variant: str, reason: str, message: str) -> None:
        """The config's ``variant`` for ``role`` was not loaded; what ran before keeps running."""
        self.model_artifact_failed.clear()
        self.model_artifact_failed.labels(self.pipeline, role, variant, reason).set(1)
        before = self._models.get(role, {})
        self._models = {
            **self._models,
            role: {
                "role": role,
                "variant": variant,
                "running": before.get("running"),
                "verified": False,
                "reason": reason,
                "message": message,
            },
        }

    def model_status(self) -> list[dict[str, Any]]:
        """The models' ``/status`` entries: each role's wanted and running variant, whether
        the wanted one's artifact was verified, and why not (the message no label carries)."""
        return [dict(entry) for _, entry in sorted(self._models.items())]

    def batch_failed(self, stage: Literal["detect", "track"]) -> None:
        self.batch_errors.labels(self.pipeline, stage).inc()

    def stage(self, stage: str) -> Histogram:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
        return self.stage_latency.labels(self.pipeline, stage)


def _camera_entry(
    name: str, health: tuple[bool, str | None], values: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """One camera's ``/status`` entry; the error only while it is down."""
    connected, error = health
    return {
        "camera": name,
        "connected": connected,
        "reconnects": int(values.get(("reconnects", name), 0.0)),
        "fps": values.get(("fps", name), 0.0),
        "lastFrameTime": values.get(("lastFrameTime", name)) or None,
        "lastError": None if connected else error,
    }


class CameraMetrics:
    """Per-camera children of :class:`WorkerMetrics` (cheap to use from capture threads)."""

    def __init__(self, parent: WorkerMetrics, camera: str) -> None:
        labels = (parent.pipeline, camera)
        self.camera = camera
        self._parent = parent
        self.processed = parent.frames_processed.labels(*labels)
        # every reason exported from the start (at 0), so rates and alerts see the series
        self._dropped = {r: parent.frames_dropped.labels(*labels, r) for r in DROP_REASONS}
        self.skipped = parent.frames_skipped.labels(*labels)
        self.latency = parent.frame_latency.labels(*labels)
        self.up = parent.camera_up.labels(*labels)
        self.reconnects = parent.reconnects.labels(*labels)
        self.fps = parent.stream_fps.labels(*labels)
        self.last_frame = parent.last_frame.labels(*labels)
        """Set by the capture thread to each decoded frame's wall-clock time."""
        self.health: tuple[bool, str | None] = (False, None)
        """Connected, and why not (redacted by the capture thread), for ``/status``: one
        tuple, so a reader never sees the state of one moment with the error of another."""
        self.tracks_active = parent.tracks_active.labels(*labels)
        self._tracks_started = parent.tracks_started
        self.decode = parent.stage("decode")
        """Seconds from each packet to BGR frames, decode and colour conversion (observed by
        the capture thread)."""
        self._detections = parent.detections
        self.confidence = parent.detection_confidence.labels(*labels)
        self._decoder_info = parent.camera_decoder
        self._decoder: str | None = None
        self._labels = labels

    @property
    def last_error(self) -> str | None:
        return self.health[1]

    def set_health(self, connected: bool, error: str | None) -> None:
        """Record whether the stream delivers frames and, if not, why (``kubevision_camera_up``
        follows); a stream being replaced leaves its successor's health alone."""
        if self.current:
            self.health = (connected, error)
            self.up.set(1 if connected else 0)

    def dropped(self, reason: DropReason) -> None:
        self._dropped[reason].inc()

    def track_started(self, class_name: str) -> None:
        if self.current:  # a removed camera's last batch must not bring its series back
            self._tracks_started.labels(*self._labels, class_name).inc()

    def detected(self, class_name: str, count: int) -> None:
        if self.current:
            self._detections.labels(*self._labels, class_name).inc(count)

    def scored(self, scores: Iterable[float]) -> None:
        """The kept detections' scores (``kubevision_detection_confidence``)."""
        if self.current:
            for score in scores:
                self.confidence.observe(float(score))

    @property
    def current(self) -> bool:
        """Whether these are the metrics of the camera's newest stream (a stream being
        replaced must not mark the camera down under its successor)."""
        return self._parent.is_latest(self)

    def set_decoder(self, decoder: str | None) -> None:
        """Show ``decoder`` in ``kubevision_camera_decoder`` (one series per camera, as an
        info metric); None removes the camera's series, unless a newer stream of the camera
        owns it now."""
        if not self.current:
            return
        if self._decoder is not None and self._decoder != decoder:
            self._decoder_info.remove(*self._labels, self._decoder)
        if decoder is not None:
            self._decoder_info.labels(*self._labels, decoder).set(1)
        self._decoder = decoder
