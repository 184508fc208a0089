"""The worker's processing loop: cameras → sampler → cross-camera batch → detector → per-camera
tracker → classifier → events → sinks, with metrics and health at every step.

Each camera decodes in its own capture thread, which samples the frames (``spec.sampling``) and
keeps the sampled ones in a latest-frame buffer, so a slow model drops old frames instead of
building latency, and a dropped frame is always one that was meant to be analysed. Inference
runs in one *lane* per device (one on a CPU node, one per GPU on a GPU server): cameras are
spread over the lanes by load (:mod:`.placement`), and each lane's
:class:`~.batching.DynamicBatcher` turns its cameras' freshest frames into cross-camera batches
(at most one frame per camera, longest-waiting first). Each lane has two threads. The
inference thread forms batches and queues their detection (on a GPU it never waits for it); the
finishing thread waits for a batch's boxes, tracks it while the next batch is detected, and
queues its classification (the due tracks of all the batch's cameras in one call). When another
batch is waiting, it tracks that one before waiting for the classifier's answers, so the
classifier's GPU time hides behind host work; a camera's frames are still published in order,
and one batch at most waits between the threads. A new config (cameras added/removed,
models changed) is applied without a restart: new cameras start before removed ones stop, so no
camera goes unwatched during a handover.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from kubevision.api.worker_config import CameraAssignment, ModelConfig, WorkerConfig
from kubevision.worker.backends.base import BackendChoice, InferenceBackend, create_backend
from kubevision.worker.batching import DynamicBatcher, Item
from kubevision.worker.capture import CameraStream, CaptureOptions, Frame
from kubevision.worker.classifier import CropClassifier, Labelled
from kubevision.worker.config import my_cameras
from kubevision.worker.detections import NO_TRACK, Detections, FloatArray, IntArray
from kubevision.worker.detector import Detector, build_detector
from kubevision.worker.events import Classification, EventBuilder, TrackEvent
from kubevision.worker.gpu.sync_policy import SyncPolicy, SyncPolicyError, set_sync_policy
from kubevision.worker.health import Health
from kubevision.worker.metrics import CameraMetrics, WorkerMetrics
from kubevision.worker.models import ArtifactError, resolve_artifact
from kubevision.worker.nvdec import Pixels
from kubevision.worker.pending import Pending
from kubevision.worker.placement import place_streams
from kubevision.worker.pose import PoseEstimator
from kubevision.worker.sampling import Sampler, build_sampler
from kubevision.worker.sinks import FanOut
from kubevision.worker.snapshots import Snapshotter
from kubevision.worker.trackers import Tables, Tracker, create_tracker, track_batch
from kubevision.worker.trackers.reid import ReidEmbedder

log = logging.getLogger("kubevision.worker.runtime")

T = TypeVar("T")

_ERROR_PAUSE_SECONDS = 1.0

_IDLE_POLL_SECONDS = 0.002
"""How long the loop waits when no camera has a new frame (bounds added latency to 2 ms)."""

_HANDOVER_POLL_SECONDS = 0.1
"""How often a lane's threads, waiting on each other, look whether the worker is stopping."""


class FrameSource(Protocol):
    """What the loop needs of a camera: :class:`CameraStream`, or frames from memory in
    benchmarks (``RuntimeOptions.source_factory``)."""

    def start(self) -> object: ...

    def stop(self, timeout: float | None = None) -> None: ...

    def get(self, timeout: float | None = None) -> Frame | None: ...

    @property
    def pending(self) -> int: ...


SourceFactory = Callable[[CameraAssignment, CameraMetrics, CaptureOptions, Sampler], FrameSource]
"""Opens a camera whose frames the sampler chooses from before they are buffered."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How this process runs its config (the config says what, these say where and how)."""

    capture: CaptureOptions = field(default_factory=CaptureOptions)
    model_search: tuple[Path, ...] = ()
    """Folders to find model files in (besides KUBEVISION_MODEL_DIR and /models)."""
    device: str = "cpu"
    """One inference lane per comma-separated device: ``cpu``, ``cuda:N``, or ``cuda`` for
    every visible GPU (see :func:`resolve_devices`)."""
    backend: BackendChoice = "auto"
    """Runtime for ONNX models: ``auto`` picks torch on a GPU when installed, else ORT."""
    threads: int | None = None
    """Inference threads; set it to the pod's CPU limit."""
    cuda_sync: SyncPolicy = "blocking"
    """How threads wait for a GPU (:mod:`~kubevision.worker.gpu.sync_policy`): ``blocking``
    sleeps, leaving the cores to the work (at 112 decode-included streams on an H100: 2.75 vs
    3.69 ms of host CPU per frame spinning, benchmarks/results/gpu_cuda_sync_h100.md)."""
    max_batch: int | None = None
    """Frames per inference call; default the detector variant's batch max."""
    max_wait_seconds: float = 0.005
    """How long a partly filled batch waits for more cameras' frames."""
    triton_url: str | None = None
    """Triton gRPC address for ``triton://<model>`` variants (default: KUBEVISION_TRITON_URL)."""
    classifier_labels: Path | None = None
    """Class names for a classifier whose ModelVariant carries none (e.g. ImageNet's)."""
    on_stage: Callable[[str, float], None] | None = None
    """Also receives every stage timing (benchmarks want exact values, not histogram buckets)."""
    source_factory: SourceFactory = CameraStream
    """Opens a camera; the default decodes its URL (benchmarks replay frames from memory)."""


@dataclass(frozen=True)
class FrameResult:
    """What the loop made of one frame (for the CLI's summary and annotated video)."""

    frame: Frame
    detections: Detections
    class_names: tuple[str, ...]
    """The detector's labels, indexed by ``detections.class_ids``."""
    labels: dict[int, Classification]
    events: list[TrackEvent]
    latency_seconds: float


@dataclass
class _Models:
    """The loaded models of one config; rebuilt only when the config's models change."""

    detector: Detector
    classifier: CropClassifier | None
    embedder: ReidEmbedder | None
    refresh_frames: int
    batch_max: int
    key: tuple[object, ...]
    backends: list[InferenceBackend] = field(default_factory=list)
    pose: PoseEstimator | None = None

    def close(self) -> None:
        """Release what backends hold outside the process (Triton's shared-memory regions)."""
        for backend in self.backends:
            close = getattr(backend, "close", None)
            if callable(close):
                close()


class _Camera:
    """One camera's stream (which samples its frames) and per-camera state (tracker, events,
    labels)."""

    def __init__(
        self,
        assignment: CameraAssignment,
        config: WorkerConfig,
        models: _Models,
        metrics: CameraMetrics,
        options: CaptureOptions,
        open_source: SourceFactory,
        tables: Tables,
    ) -> None:
        self.assignment = assignment
        self.metrics = metrics
        self.stream = open_source(assignment, metrics, options, build_sampler(assignment.sampling))
        self.tracker: Tracker = create_tracker(
            config.tracker, models.embedder, config.detector.model.tracking, tables
        )
        # trackers report only the tracks matched in this frame; a track stays alive (no
        # track.ended) for as long as the tracker keeps it
        self.events = EventBuilder(
            config.pipeline,
            assignment.name,
            models.detector.labels,
            grace_frames=config.tracker.max_age_frames,
        )
        self.labels: dict[int, tuple[Classification, int]] = {}
        self.asked: dict[int, int] = {}
        """Tracks whose classification is in flight, with the frame count when asked."""
        self.frames = 0
        self.last_index = -1
        """The newest frame tracked; an older one (overtaken while the camera moved to another
        lane) is dropped instead of sending the tracker back in time."""
        self.lock = threading.RLock()
        """Held from tracking a frame until it is published (two lanes during a move); a
        lane's finishing thread holds it for two batches at once, hence reentrant."""

    def due(self, models: _Models, tracked: Detections) -> npt.NDArray[np.bool_]:
        """The rows of this frame to classify: tracks new to the classifier, and known ones
        every ``refresh_frames``, unless an answer about them is already on its way (the
        classifier's answers for a batch arrive after the next batch is tracked)."""
        self.frames += 1
        if models.classifier is None:
            return np.zeros(len(tracked), dtype=bool)
        rows = np.array(
            [
                t != NO_TRACK
                and int(t) not in self.asked
                and (
                    int(t) not in self.labels
                    or self.frames - self.labels[int(t)][1] >= models.refresh_frames
                )
                for t in tracked.track_ids
            ],
            dtype=bool,
        )
        self.asked.update((int(t), self.frames) for t in tracked.track_ids[rows])
        return rows

    def learn(self, track_ids: IntArray, names: Sequence[str], scores: FloatArray) -> None:
        """Keep the classifier's top class (its name) for each track until its next refresh,
        counted from the frame that asked."""
        top = scores[:, 0] if scores.ndim == 2 else scores
        for track_id, name, score in zip(track_ids, names, top, strict=True):
            asked = self.asked.pop(int(track_id), self.frames)
            self.labels[int(track_id)] = (Classification(label=name, score=float(score)), asked)

    def settle(self, track_ids: IntArray) -> None:
        """The answers about these tracks came (or their batch failed): they may be asked
        about again, so ``asked`` never outgrows the tracks in flight."""
        for track_id in track_ids:
            self.asked.pop(int(track_id), None)

    def labels_now(self, tracked: Detections) -> dict[int, Classification]:
        """The labels of this frame's tracks; forgets those of tracks that are gone, so the
        map stays bounded by the live tracks."""
        live = {int(t) for t in tracked.track_ids if t != NO_TRACK}
        self.labels = {t: v for t, v in self.labels.items() if t in live}
        return {t: v[0] for t, v in self.labels.items()}


@dataclass(frozen=True)
class _Detected:
    """A detected batch on its way from a lane's inference thread to its finishing thread."""

    frames: list[Frame]
    detections: Pending[list[Detections]]
    """Still on the GPU while the batch waits for the finishing thread."""
    models: _Models


@dataclass
class _Tracked:
    """A batch tracked, its classifier call queued on the GPU; published once the next batch
    is tracked, or at once when none waits. Holds its cameras' locks until then."""

    work: list[tuple[_Camera, Frame]]
    tracked: list[Detections]
    asked: list[IntArray]
    """Each frame's track ids sent to the classifier."""
    labels: Pending[list[Labelled]] | None
    asking_seconds: float
    """Host time spent queuing the classifier call (its wait is added at publishing)."""
    models: _Models
    locks: ExitStack
    published: bool = False


@dataclass
class _Lane:
    """One device's inference: its models, its batcher, the thread that drains it into the
    detector and the thread that tracks what it detected."""

    index: int
    device: str
    models: _Models
    batcher: DynamicBatcher[str, Frame]
    detected: queue.Queue[_Detected] = field(default_factory=lambda: queue.Queue(maxsize=1))
    threads: list[threading.Thread] = field(default_factory=list)


class WorkerRuntime:
    """Runs one shard of a WorkerConfig until :meth:`stop`."""

    def __init__(
        self,
        config: WorkerConfig,
        shard: int,
        metrics: WorkerMetrics,
        health: Health,
        sink: FanOut,
        options: RuntimeOptions | None = None,
        on_result: Callable[[FrameResult], None] | None = None,
        snapshots: Snapshotter | None = None,
    ) -> None:
        """``snapshots``, when set, takes every event (crops encoded and stored off the loop)
        and publishes it to ``sink`` in order; else events go to ``sink`` directly."""
        self._options = options or RuntimeOptions()
        self._snapshots = snapshots
        self._shard = shard
        self._metrics = metrics
        self._health = health
        self._sink = sink
        self._on_result = on_result
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._config = config
        self._refused: WorkerConfig | None = None
        self._apply_lock = threading.Lock()
        """The last config whose models could not be loaded (its cameras run meanwhile)."""
        self._show_slo(config)
        devices = resolve_devices(self._options.device)
        if any(d.startswith("cuda") for d in devices):
            _wait_for_gpus(self._options.cuda_sync)  # before the models touch the GPU
        self._lanes = [self._new_lane(i, device, config) for i, device in enumerate(devices)]
        self._metrics.models_loaded(_roles(config))
        self._cameras: dict[str, _Camera] = {}
        self._placement: dict[str, int] = {}
        self._track_tables: Tables = weakref.WeakValueDictionary()
        """ByteTrack cameras of equal settings share a table: a batch is one tracker update."""
        self._apply_cameras(config)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for lane in self._lanes:
            lane.threads = [
                threading.Thread(
                    target=self._on_own_stream,
                    args=(target, lane),
                    name=f"{role}-{lane.index}-{lane.device}",
                    daemon=True,
                )
                for role, target in (("inference", self._loop), ("finish", self._finish_loop))
            ]
            for thread in lane.threads:
                thread.start()
        self._health.set_ready(True)
        log.info(
            "worker started pipeline=%s group=%s shard=%d cameras=%d devices=%s backend=%s",
            self._config.pipeline,
            self._config.group,
            self._shard,
            len(self._cameras),
            ",".join(lane.device for lane in self._lanes),
            self._lanes[0].models.detector.backend_name,
        )

    def stop(self) -> None:
        self._health.set_ready(False)
        self._stop.set()
        for lane in self._lanes:
            for thread in lane.threads:
                thread.join(timeout=10)
        with self._lock:
            for cam in self._cameras.values():
                self._emit(cam.events.end_all())
                cam.stream.stop()
            self._cameras.clear()
            for lane in self._lanes:
                lane.models.close()
        if self._snapshots is not None:
            self._snapshots.close()
        self._sink.close()

    def apply(self, config: WorkerConfig) -> None:
        """Take a new config without a restart (models reload only if they changed); a
        model whose artifact is refused leaves the running one in place (and is retried by
        :meth:`retry_models`)."""
        with self._apply_lock:  # the config watcher and the retry timer both call this
            self._apply(config)

    def _apply(self, config: WorkerConfig) -> None:
        reload = _models_key(config) != self._lanes[0].models.key
        try:
            models = [
                self._load_models(config, lane.device) if reload else lane.models
                for lane in self._lanes
            ]
        except ModelUnavailable as exc:  # a bad artifact must not stop a working worker
            log.error(
                "new model not loaded; keeping the running one: %s",
                exc,
                extra={"role": exc.role, "variant": exc.variant, "reason": exc.reason},
            )
            self._metrics.model_failed(exc.role, exc.variant, exc.reason, str(exc))
            models = [lane.models for lane in self._lanes]
            self._refused = config
        else:
            if reload or self._refused is not None:  # a config back to the running models
                self._metrics.models_loaded(_roles(config))  # ends a refusal too
            self._refused = None
        with self._lock:
            self._config = config
            self._show_slo(config)
            for lane, lane_models in zip(self._lanes, models, strict=True):
                lane.models = lane_models
                lane.batcher.max_batch = self._options.max_batch or lane_models.batch_max
            self._apply_cameras(config)

    def retry_models(self) -> None:
        """Try the config whose models were refused again (an artifact uploaded or fixed at
        the same URI since); nothing to do when every model loaded."""
        refused = self._refused
        if refused is not None:
            self.apply(refused)

    def _show_slo(self, config: WorkerConfig) -> None:
        self._metrics.slo_p99.labels(self._metrics.pipeline).set(config.slo.p99_latency_ms / 1000)

    def state_sizes(self) -> dict[str, int]:
        """What the worker holds for its cameras, summed over them (live tracks, classifier
        labels, batcher streams, cameras in ByteTrack tables): a soak watches these stay
        bounded under camera churn."""
        with self._lock:
            cams = list(self._cameras.values())
            tables = list(self._track_tables.values())
        return {
            "cameras": len(cams),
            "live_tracks": sum(c.events.live_tracks for c in cams),
            "classifier_labels": sum(len(c.labels) for c in cams),
            "batcher_streams": sum(lane.batcher.streams for lane in self._lanes),
            "tracker_cameras": sum(table.cameras for table in tables),
        }

    @property
    def cameras(self) -> dict[str, FrameSource]:
        with self._lock:
            return {name: cam.stream for name, cam in self._cameras.items()}

    # -- setup ------------------------------------------------------------------------------

    def _new_lane(self, index: int, device: str, config: WorkerConfig) -> _Lane:
        models = self._load_models(config, device)
        limit = self._options.max_batch or models.batch_max
        return _Lane(index, device, models, DynamicBatcher(limit, self._options.max_wait_seconds))

    def _load_models(self, config: WorkerConfig, device: str) -> _Models:
        opts = self._options

        backends: list[InferenceBackend] = []

        def backend(model: ModelConfig, role: str) -> InferenceBackend:
            path = None if model.format == "triton" else _fetch(model, role, opts.model_search)
            backends.append(
                create_backend(
                    model,
                    path,
                    device,
                    intra_op_threads=opts.threads,
                    choice=opts.backend,
                    triton_url=opts.triton_url,
                )
            )
            return backends[-1]

        detector = build_detector(
            config.detector,
            backend(config.detector.model, "detector"),
            on_stage=self._observe_stage,
        )
        classifier = None
        if config.classifier is not None:
            classifier = CropClassifier(
                config.classifier.model,
                backend(config.classifier.model, "classifier"),
                labels_file=opts.classifier_labels,
            )
        pose = None
        if config.pose is not None:
            pose = PoseEstimator(config.pose, backend(config.pose, "pose"))
        embedder = None
        if config.reid is not None:
            embedder = ReidEmbedder(_fetch(config.reid, "reid", opts.model_search), device=device)
        return _Models(
            detector=detector,
            classifier=classifier,
            embedder=embedder,
            refresh_frames=config.classifier.refresh_frames if config.classifier else 0,
            batch_max=config.detector.model.batch_max,
            key=_models_key(config),
            backends=backends,
            pose=pose,
        )

    def _apply_cameras(self, config: WorkerConfig) -> None:
        """Start new/changed cameras first, then stop the ones no longer assigned; re-place."""
        wanted = {a.name: a for a in my_cameras(config, self._shard)}
        models = self._lanes[0].models
        for name, assignment in wanted.items():
            current = self._cameras.get(name)
            if current is not None and current.assignment == assignment:
                continue
            cam = _Camera(
                assignment,
                config,
                models,
                self._metrics.camera(name),
                self._options.capture,
                self._options.source_factory,
                self._track_tables,
            )
            cam.stream.start()
            self._cameras[name] = cam
            if current is not None:
                self._retire(current)
        for name in [n for n in self._cameras if n not in wanted]:
            self._retire(self._cameras.pop(name))
        loads = {name: cam.assignment.fps for name, cam in self._cameras.items()}
        placement = place_streams(loads, len(self._lanes), self._placement)
        for name, lane in self._placement.items():
            if placement.get(name) != lane:
                self._lanes[lane].batcher.discard(name)
        self._placement = placement

    def _retire(self, cam: _Camera) -> None:
        cam.tracker.close()  # a late frame of it in a batch gets no tracks
        self._emit(cam.events.end_all())
        cam.stream.stop(timeout=0)  # never block the loop on a stuck read
        self._metrics.forget(cam.metrics)  # unless its replacement owns the series now

    # -- the loop ---------------------------------------------------------------------------

    @staticmethod
    def _on_own_stream(loop: Callable[[_Lane], None], lane: _Lane) -> None:
        """A lane thread's body, its GPU work on a stream of its own (:func:`own_cuda_stream`)."""
        with own_cuda_stream(lane.device):
            loop(lane)

    def _loop(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            try:
                self._gather(lane)
                batch = lane.batcher.take(time.monotonic())
                if batch:
                    self._hand_over(lane, self._detect(lane, batch))
                else:
                    due = lane.batcher.due_in(time.monotonic())
                    self._stop.wait(
                        min(due if due is not None else _IDLE_POLL_SECONDS, _IDLE_POLL_SECONDS)
                    )
            except Exception:  # one bad batch must not stop the worker; the error is logged
                log.exception(
                    "processing a batch failed on %s; continuing after a pause", lane.device
                )
                self._metrics.batch_failed("detect")
                self._stop.wait(_ERROR_PAUSE_SECONDS)  # a persistent fault must not spin or flood
            self._health.beat()

    def _gather(self, lane: _Lane) -> None:
        """Move this lane's cameras' new sampled frames into its batcher (freshest wins)."""
        with self._lock:
            cams = [c for n, c in self._cameras.items() if self._placement.get(n) == lane.index]
        now = time.monotonic()
        for cam in cams:
            frame = cam.stream.get(timeout=0)
            if frame is None:
                continue
            if lane.batcher.put(cam.assignment.name, frame, frame.capture_mono, now):
                cam.metrics.dropped("superseded")  # replaced while waiting for a batch
        self._metrics.queue_depth.labels(self._metrics.pipeline).set(
            sum(c.stream.pending for c in cams) + lane.batcher.pending
        )

    def _detect(self, lane: _Lane, batch: list[Item[str, Frame]]) -> _Detected:
        with self._lock:
            models = lane.models
        frames = [item.payload for item in batch]
        self._metrics.batch_size.labels(self._metrics.pipeline).observe(len(frames))
        # NVDEC frames stay on the GPU: the device detector takes them as they are, and this
        # thread only queues the work (the finishing thread waits for the boxes)
        return _Detected(frames, models.detector.submit([f.pixels for f in frames]), models)

    def _hand_over(self, lane: _Lane, detected: _Detected) -> None:
        """Queue a detected batch for tracking. While the finishing thread is still a batch
        behind this waits without a heartbeat: the batcher, not a queue, absorbs the backlog
        (freshest frames win), and a stuck tracker shows as an unhealthy worker."""
        while not self._stop.is_set():
            try:
                lane.detected.put(detected, timeout=_HANDOVER_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _finish_loop(self, lane: _Lane) -> None:
        """Wait for each detected batch's boxes, track it and queue its classification, then
        publish the batch before it: the classifier's GPU work for one batch runs while the
        host tracks the next. A batch is published at once when no other waits."""
        in_flight: _Tracked | None = None
        while not self._stop.is_set():
            try:
                detected = lane.detected.get(timeout=0 if in_flight else _HANDOVER_POLL_SECONDS)
            except queue.Empty:
                self._finishing(lane, "track", self._publish_batch, in_flight)
                in_flight = None
                continue
            found = self._finishing(lane, "detect", detected.detections.result)
            tracked = None
            if found is not None:
                tracked = self._finishing(
                    lane, "track", self._track_batch, detected, found, in_flight
                )
            self._finishing(lane, "track", self._publish_batch, in_flight)
            in_flight = tracked
        self._finishing(lane, "track", self._publish_batch, in_flight)  # nothing left unpublished

    def _finishing(
        self, lane: _Lane, stage: Literal["detect", "track"], step: Callable[..., T], *args: object
    ) -> T | None:
        """One step of the finishing thread; a failure is logged and paused after, never
        fatal (one bad batch must not stop the worker)."""
        try:
            return step(*args)
        except Exception:
            log.exception(
                "%s failed for a batch on %s; continuing after a pause", stage, lane.device
            )
            self._metrics.batch_failed(stage)
            self._stop.wait(_ERROR_PAUSE_SECONDS)
            return None

    def _track_batch(
        self, detected: _Detected, found: list[Detections], in_flight: _Tracked | None
    ) -> _Tracked:
        """Each frame's detections to its camera's tracker; then the due tracks of every frame
        sent to the classifier in one call, which is queued, not waited for."""
        models = detected.models
        with self._lock:
            cams = dict(self._cameras)
        work = [
            (cams[frame.camera], frame, frame_found)
            for frame, frame_found in zip(detected.frames, found, strict=True)
            if frame.camera in cams  # not removed while the batch ran
        ]
        locks = self._hold([cam for cam, _, _ in work], in_flight)
        try:
            work = [(cam, frame, found) for cam, frame, found in work if self._advance(cam, frame)]
            tracked = self._track(models, work)
            started = time.perf_counter()
            asked, labels = self._ask_classifier(models, [(c, f) for c, f, _ in work], tracked)
            asking = time.perf_counter() - started
        except BaseException:
            locks.close()
            raise
        return _Tracked([(c, f) for c, f, _ in work], tracked, asked, labels, asking, models, locks)

    def _hold(self, cams: list[_Camera], in_flight: _Tracked | None) -> ExitStack:
        """The cameras' locks, held until their frames are published, so a camera that moves
        between lanes has its frames tracked and published in order. They are taken without
        waiting where possible (this thread holds many already, for the batch in flight). If
        another lane holds one, the batch in flight is published first, which releases this
        thread's locks, and then all are waited for in name order: no two lanes deadlock."""
        ordered = sorted(cams, key=lambda cam: cam.assignment.name)
        held = ExitStack()
        for cam in ordered:
            if not cam.lock.acquire(blocking=False):
                held.close()
                self._publish_batch(in_flight)
                held = ExitStack()
                for waited in ordered:
                    held.enter_context(waited.lock)
                return held
            held.callback(cam.lock.release)
        return held

    def _publish_batch(self, batch: _Tracked | None) -> None:
        """Wait for a tracked batch's classifier answers, then publish its frames' events and
        metrics; releases its cameras. Publishing a batch twice does nothing."""
        if batch is None or batch.published:
            return
        batch.published = True
        try:
            self._learn(batch)
            frames = [frame for _, frame in batch.work]
            keypoints = self._pose(batch.models, frames, batch.tracked)
            with self._lock:
                current = dict(self._cameras)
            for (cam, frame), tracked, frame_keypoints in zip(
                batch.work, batch.tracked, keypoints, strict=True
            ):
                if current.get(cam.assignment.name) is not cam:  # removed: its tracks have ended
                    continue
                labels = cam.labels_now(tracked)
                self._publish(cam, batch.models, frame, tracked, labels, frame_keypoints)
        finally:
            for (cam, _), asked in zip(batch.work, batch.asked, strict=True):
                cam.settle(asked)
            batch.locks.close()

    @staticmethod
    def _advance(cam: _Camera, frame: Frame) -> bool:
        """Whether ``frame`` is newer than the camera's last tracked one (else it is dropped)."""
        if frame.index <= cam.last_index:
            cam.metrics.dropped("stale")
            return False
        cam.last_index = frame.index
        return True

    def _track(
        self, models: _Models, work: list[tuple[_Camera, Frame, Detections]]
    ) -> list[Detections]:
        """Every frame of the batch through its camera's tracker (ByteTrack cameras in one
        vectorised update)."""
        with self._stage("track"):
            embedder = models.embedder

            def appearance(frame: Frame) -> Pixels | None:
                """Only appearance trackers (DeepSORT) look at pixels; a GPU frame is copied
                down for none but a re-id model on the CPU."""
                if embedder is None:
                    return None
                return frame.pixels if embedder.takes_device_frames else frame.image

            return track_batch(
                [(cam.tracker, found, appearance(frame)) for cam, frame, found in work]
            )

    def _ask_classifier(
        self, models: _Models, work: list[tuple[_Camera, Frame]], tracked: list[Detections]
    ) -> tuple[list[IntArray], Pending[list[Labelled]] | None]:
        """Every frame's due tracks in one classifier call (crops batched across cameras),
        queued on the GPU; returns each frame's track ids asked about, and the call."""
        dues = [cam.due(models, t) for (cam, _), t in zip(work, tracked, strict=True)]
        asked = [t.track_ids[d] for t, d in zip(tracked, dues, strict=True)]
        if models.classifier is None or not any(len(ids) for ids in asked):
            return asked, None
        requests = [(f.pixels, t.xyxy[d]) for (_, f), t, d in zip(work, tracked, dues, strict=True)]
        return asked, models.classifier.submit(requests)

    def _learn(self, batch: _Tracked) -> None:
        """The classifier's answers into each camera's labels (waiting for the GPU if need
        be); the ``classify`` stage is the host time spent asking plus waiting."""
        started = time.perf_counter()
        classifier = batch.models.classifier
        if batch.labels is not None and classifier is not None:
            results = batch.labels.result()
            for (cam, _), ids, (class_ids, scores) in zip(
                batch.work, batch.asked, results, strict=True
            ):
                top = class_ids[:, 0] if class_ids.ndim == 2 else class_ids
                cam.learn(ids, classifier.names(top), scores)
        self._observe_stage("classify", batch.asking_seconds + time.perf_counter() - started)

    def _pose(
        self, models: _Models, frames: list[Frame], tracked: list[Detections]
    ) -> list[dict[int, FloatArray]]:
        """Keypoints by track id for the frames that have person tracks (one pose call)."""
        out: list[dict[int, FloatArray]] = [{} for _ in frames]
        labels = models.detector.labels
        if models.pose is None or "person" not in labels:
            return out
        person = labels.index("person")
        due = [
            i
            for i, t in enumerate(tracked)
            if ((t.class_ids == person) & (t.track_ids != NO_TRACK)).any()
        ]
        if not due:
            return out
        with self._stage("pose"):
            poses = models.pose([frames[i].image for i in due])  # host copy of GPU frames
            for i, found in zip(due, poses, strict=True):
                out[i] = models.pose.attach(tracked[i], found, person)
        return out

    def _publish(
        self,
        cam: _Camera,
        models: _Models,
        frame: Frame,
        tracked: Detections,
        labels: dict[int, Classification],
        keypoints: dict[int, FloatArray] | None = None,
    ) -> None:
        events = cam.events.update(tracked, frame.capture_wall, labels, keypoints)
        cam.metrics.tracks_active.set(cam.events.live_tracks)
        for event in events:
            if event.kind == "track.started":
                cam.metrics.track_started(event.class_name)
        with self._stage("publish"):
            self._emit(events, frame)
        latency = time.time() - frame.capture_wall
        self._record(cam, models, tracked, latency)
        if self._on_result is not None:
            self._on_result(
                FrameResult(frame, tracked, models.detector.labels, labels, events, latency)
            )

    def _emit(self, events: list[TrackEvent], frame: Frame | None = None) -> None:
        """To the snapshotter (which crops the frame for the events that get a snapshot), or
        straight to the sinks."""
        if not events:
            return
        if self._snapshots is None:
            self._sink.publish(events)
        else:
            self._snapshots.submit(events, None if frame is None else lambda: frame.image)

    def _record(self, cam: _Camera, models: _Models, tracked: Detections, latency: float) -> None:
        cam.metrics.processed.inc()
        cam.metrics.latency.observe(latency)
        if len(tracked):
            cam.metrics.scored(tracked.scores)
            ids, counts = np.unique(tracked.class_ids, return_counts=True)
            for class_id, count in zip(ids, counts, strict=True):
                cam.metrics.detected(models.detector.labels[int(class_id)], int(count))

    def _observe_stage(self, stage: str, seconds: float) -> None:
        self._metrics.stage(stage).observe(seconds)
        if self._options.on_stage is not None:
            self._options.on_stage(stage, seconds)

    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self._observe_stage(stage, time.perf_counter() - start)


def resolve_devices(device: str) -> list[str]:
    """The lanes for ``--device``: one per comma-separated device; ``cuda`` means every GPU
    this process can see (``cuda:0,cuda:2`` picks some)."""
    devices = [d.strip() for d in device.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"no device in {device!r}")
    if "cuda" not in devices:
        return devices
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("device 'cuda' asked for, but this process sees no CUDA GPU")
    return [f"cuda:{i}" for i in range(count)]


def own_cuda_stream(device: str) -> AbstractContextManager[object]:
    """The calling thread's GPU work on a CUDA stream of its own (nothing on a CPU lane).

    A lane's two threads would otherwise share the default stream, and every call of one that
    synchronises (a box upload, the copy of the classifier's answers) would wait for all the
    other had queued: the finishing thread's classifier waited for the next batch's detection,
    and the inference thread's NMS for the classifier. Frames cross between the threads only
    after the inference thread has synchronised on them, so no event is needed. Streams are
    torch's: a GPU lane without torch (ONNX Runtime or Triton only) has none to set.
    """
    if not device.startswith("cuda") or importlib.util.find_spec("torch") is None:
        return nullcontext()
    import torch

    if not torch.cuda.is_available():
        return nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(torch.device(device)))  # type: ignore[no-untyped-call]


def _wait_for_gpus(policy: SyncPolicy) -> None:
    """Set how threads wait for the GPUs; a driver that refuses leaves CUDA's default."""
    try:
        set_sync_policy(policy)
    except SyncPolicyError as exc:
        log.warning("cuda sync policy %s not set (CUDA's default stays): %s", policy, exc)


def _models_key(config: WorkerConfig) -> tuple[object, ...]:
    """What, if changed, needs the models reloaded (thresholds included: they live in them)."""
    return (config.detector, config.classifier, config.reid, config.tracker, config.pose)


class ModelUnavailable(ArtifactError):
    """A model of the config could not be loaded: which role, which variant, and why."""

    def __init__(self, role: str, variant: str, error: ArtifactError) -> None:
        super().__init__(error.reason, f"{role} {variant}: {error}")
        self.role = role
        self.variant = variant


def _fetch(model: ModelConfig, role: str, search: Sequence[Path]) -> Path:
    """The model's verified artifact file (fetched and cached on the node when remote)."""
    try:
        return resolve_artifact(model.artifact, search, model.credentials)
    except ArtifactError as exc:
        raise ModelUnavailable(role, model.variant, exc) from exc


def _roles(config: WorkerConfig) -> dict[str, str]:
    """role -> variant of every model the config runs."""
    roles = {"detector": config.detector.model.variant}
    if config.classifier is not None:
        roles["classifier"] = config.classifier.model.variant
    if config.reid is not None:
        roles["reid"] = config.reid.variant
    if config.pose is not None:
        roles["pose"] = config.pose.variant
    return roles
