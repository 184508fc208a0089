"""Benchmark: how many live 30 FPS 1080p streams one GPU carries end to end at p99 <= 100 ms.

Every stream replays 1080p frames from memory as a live camera: frame *k* of a stream exists at
``start + phase + k / 30`` and is stamped with that time, so latency is counted from the
moment the camera produced the frame (waiting for a batch included). A stream is carried
when its frames are processed, not dropped: with latest-frame buffers an overloaded worker
drops frames instead of building latency, so a run passes only when p99 <= 100 ms **and** at
least 97 % of the offered frames were processed. The pipeline is the worker's own
(:class:`~kubevision.worker.runtime.WorkerRuntime`): cross-stream batcher -> detector ->
ByteTrack per stream -> MobileNetV2 classifier per new track -> events (to no sink).

Configurations, each searched for its largest N:

* ``kubevision-gpu-frames``: frames already in GPU memory, as NVDEC delivers them; torch
  backend FP16, CUDA graphs, device letterbox + NMS, batches up to 64 across streams.
* ``kubevision-host-frames``: the same with frames in host memory (a CPU decoder's output),
  uploaded as uint8.
* ``baseline-per-stream-batch1``: the obvious loop: for each stream's new frame, CPU
  letterbox, the same ONNX model in PyTorch FP32 eager at batch 1 on the GPU, CPU decode + NMS,
  ByteTrack, classifier; host frames.

Decode included (``--video``, an H.264 file each stream sends as a camera does: its packets
paced at their timestamps, looped; latency counts from a packet's arrival, so decoding and
any lag behind the camera are in it; offered frames are what the cameras sent, 30 per second
each, whether or not the worker kept up):

* ``kubevision-nvdec``: the worker as deployed: one capture thread per camera (PyAV demux,
  NVDEC decode into GPU memory, latest-frame buffer), then the pipeline above on GPU frames.
* ``baseline-decode-per-stream-batch1``: the baseline loop fed by the same capture threads
  decoding on the CPU (FFmpeg), as the obvious loop a user writes would read its cameras.

``--detector yolov8 --input-size 640`` runs a YOLOv8-class model instead
(:mod:`benchmarks.gpu.export_yolov8`: random weights, speed only, labelled as such).

``--configs MODE:K,...`` runs each mode with K worker processes sharing the GPU (K pods on one
node, each with N/K streams), which is how a node is filled when one Python process is the
limit. Each trial also records where the time went (stage times per frame, CPU cores used).

    python -m benchmarks.gpu.density --model M.onnx --classifier C.onnx --labels L.txt --clip V.mp4

writes benchmarks/results/gpu_density.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.common import machine, write_results
from benchmarks.gpu.decode_throughput import Clip
from benchmarks.gpu.kernel_profile import profiled
from kubevision.api.camera import Sampling
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.pipeline import Slo, TrackerStage
from kubevision.api.worker_config import (
    CameraAssignment,
    ClassifierConfig,
    DetectorConfig,
    ModelConfig,
    WorkerConfig,
)
from kubevision.worker.backends.base import create_backend
from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.capture import CameraStream, CaptureOptions, Frame, StreamState
from kubevision.worker.classifier import CropClassifier
from kubevision.worker.detections import NO_TRACK
from kubevision.worker.detector import Detector
from kubevision.worker.gpu.sync_policy import SYNC_POLICIES, SyncPolicy
from kubevision.worker.health import Health
from kubevision.worker.metrics import CameraMetrics, WorkerMetrics
from kubevision.worker.models import sha256_of
from kubevision.worker.runtime import FrameResult, RuntimeOptions, WorkerRuntime
from kubevision.worker.sampling import Sampler
from kubevision.worker.sinks import FanOut
from kubevision.worker.trackers import create_tracker

FPS = 30.0
SLO_P99_MS = 100.0
MIN_DELIVERED = 0.97
CONFIDENCE, NMS_IOU = 0.3, 0.45
RESULTS = Path(__file__).resolve().parents[1] / "results"
MODES = (
    "baseline-per-stream-batch1",
    "kubevision-gpu-frames",
    "kubevision-host-frames",
    "kubevision-nvdec",
    "baseline-decode-per-stream-batch1",
)
DECODE_MODES = ("kubevision-nvdec", "baseline-decode-per-stream-batch1")
DEFAULT_CONFIGS = (
    "baseline-per-stream-batch1:1",
    "kubevision-gpu-frames:1",
    "kubevision-gpu-frames:4",
    "kubevision-host-frames:1",
    "kubevision-host-frames:4",
)


class ReplayStream:
    """A live camera replaying frames from memory; needs no thread (frames are due by time)."""

    def __init__(self, name: str, frames: Sequence[Any], offset: int, phase: float) -> None:
        self.name = name
        self._frames = frames
        self._offset = offset
        self._phase = phase
        self._t0 = 0.0
        self._wall_minus_mono = 0.0
        self._last = -1
        self.offered = 0

    def start(self) -> ReplayStream:
        self._t0 = time.monotonic() + self._phase
        self._wall_minus_mono = time.time() - time.monotonic()
        return self

    def stop(self, timeout: float | None = None) -> None:
        del timeout

    @property
    def pending(self) -> int:
        return int(self._due() > self._last)

    def _due(self) -> int:
        return math.floor((time.monotonic() - self._t0) * FPS)

    def get(self, timeout: float | None = None) -> Frame | None:
        del timeout
        due = self._due()
        if due <= self._last or due < 0:
            return None
        self.offered += due - self._last
        self._last = due
        captured = self._t0 + due / FPS
        image = self._frames[(due + self._offset) % len(self._frames)]
        return Frame(self.name, image, due, None, captured + self._wall_minus_mono, captured)


@dataclass(frozen=True)
class Setup:
    """What one worker process runs."""

    mode: str
    model: Path
    classifier: Path
    labels: Path
    clip: Path
    frames: int
    max_batch: int
    device: str = "cuda:0"
    classifier_precision: str = "int8"
    """``int8``: ONNX Runtime on the CPU (torch cannot convert it); ``fp16``: a float export
    (``prepare float``) the torch backend runs on the GPU."""
    video: Path | None = None
    """The H.264 file decode modes send as every camera's stream."""
    decoder: str = "yolox"
    """The detector's output format (``yolox`` or ``yolov8``)."""
    input_size: int = 416
    confidence: float = 0.3
    lanes: int = 1
    """Inference lanes per worker process on its one GPU (``--device cuda:0,cuda:0``): two
    lanes keep two batches in flight, so one lane's GPU wait overlaps the other's host work."""
    cuda_sync: SyncPolicy = "blocking"
    """How the worker's threads wait for the GPU (``spin``: CUDA's default busy wait)."""

    @property
    def decodes(self) -> bool:
        return self.mode in DECODE_MODES


def load_clip(clip: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of the clip, BGR uint8 in host memory."""
    capture = cv2.VideoCapture(str(clip))
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise RuntimeError(f"no frames decoded from {clip}")
    return frames


def camera_capture(setup: Setup) -> CaptureOptions:
    """Decode modes: each camera sends the file paced at its timestamps, looped; NVDEC for the
    worker, FFmpeg for the baseline."""
    if not setup.decodes:
        return CaptureOptions()
    decoder = "nvdec" if setup.mode == "kubevision-nvdec" else "cpu"
    return CaptureOptions(realtime=True, loop=True, decoder=decoder)  # type: ignore[arg-type]


def wait_streaming(streams: Iterable[Any], timeout: float = 120.0) -> None:
    """Until every camera delivers frames (opening N decoders takes a while), or fail."""
    streams = list(streams)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [s for s in streams if s.state is not StreamState.STREAMING]
        if not waiting:
            return
        time.sleep(0.1)  # polling the capture threads' state with a deadline
    raise TimeoutError(f"{len(waiting)} of {len(streams)} cameras not streaming in {timeout} s")


def model_config(
    path: Path,
    precision: str,
    batch_max: int,
    task: str = "detect",
    *,
    decoder: str = "yolox",
    size: int = 416,
) -> ModelConfig:
    if task != "detect":
        size = 224
    return ModelConfig(
        variant=path.stem,
        family=path.stem,
        task=task,  # type: ignore[arg-type]
        format="onnx",
        precision=precision,  # type: ignore[arg-type]
        input_size=InputSize(width=size, height=size),
        decoder=decoder if task == "detect" else None,
        batch_max=batch_max,
        artifact=Artifact(uri=f"file://{path.resolve()}", sha256=sha256_of(path)),
    )


def worker_config(setup: Setup, streams: int, precision: str) -> WorkerConfig:
    url = f"file://{setup.video.resolve()}" if setup.decodes and setup.video else "memory://replay"
    cameras = [
        CameraAssignment(
            name=f"cam-{i:03d}",
            url=url,
            timeout_seconds=10,
            fps=FPS,
            sampling=Sampling(),
            priority=100,
        )
        for i in range(streams)
    ]
    return WorkerConfig(
        pipeline="density",
        namespace="bench",
        group="gpu",
        hardware_class="nvidia-gpu",
        detector=DetectorConfig(
            model=model_config(
                setup.model,
                precision,
                setup.max_batch,
                decoder=setup.decoder,
                size=setup.input_size,
            ),
            confidence=setup.confidence,
            nms_iou=NMS_IOU,
        ),
        tracker=TrackerStage(type="bytetrack"),
        classifier=ClassifierConfig(
            model=model_config(
                setup.classifier, setup.classifier_precision, setup.max_batch, task="classify"
            ),
            refresh_frames=30,
        ),
        slo=Slo(),
        shards=[cameras],
    )


class Collector:
    """Latencies of frames processed after the warm-up, and where the time went: the worker's
    stage times (detector stages are GPU times from CUDA events; tracking, classification and
    publishing are host times) and the process's CPU time."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.objects = 0
        self.stages: dict[str, float] = {}
        self.batches = 0
        self.counting = False
        self._cpu_start = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.latencies, self.objects, self.stages, self.batches = [], 0, {}, 0
            self._cpu_start = time.process_time()
            self.counting = True

    def stop(self) -> dict[str, Any]:
        with self._lock:
            self.counting = False
            return {
                "latencies": list(self.latencies),
                "objects": self.objects,
                "stage_seconds": dict(self.stages),
                "batches": self.batches,
                "cpu_seconds": time.process_time() - self._cpu_start,
            }

    def __call__(self, result: FrameResult) -> None:
        if self.counting:
            with self._lock:
                self.latencies.append(result.latency_seconds)
                self.objects += len(result.detections)

    def stage(self, stage: str, seconds: float) -> None:
        if self.counting:
            with self._lock:
                self.stages[stage] = self.stages.get(stage, 0.0) + seconds
                self.batches += stage == "infer"


def _frames_for(setup: Setup) -> list[Any]:
    if setup.decodes:
        return []  # the cameras' capture threads decode them
    frames: list[Any] = load_clip(setup.clip, setup.frames)
    if setup.mode == "kubevision-gpu-frames":
        frames = [torch.from_numpy(f).to(setup.device) for f in frames]
    return frames


class KubeVisionWorker:
    """The worker runtime, loaded once; each trial applies a config with N replayed cameras."""

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        self._frames = _frames_for(setup)
        self._sources: dict[str, ReplayStream] = {}
        self._collector = Collector()
        options = RuntimeOptions(
            capture=camera_capture(setup),
            device=",".join([setup.device] * setup.lanes),
            backend="auto" if setup.device.startswith("cuda") else "torch",
            max_batch=setup.max_batch,
            max_wait_seconds=0.004,
            source_factory=CameraStream if setup.decodes else self._open,
            classifier_labels=setup.labels,
            threads=2,
            cuda_sync=setup.cuda_sync,
            on_stage=self._collector.stage,
        )
        self._runtime = WorkerRuntime(
            worker_config(setup, 0, "fp16"),
            0,
            WorkerMetrics("density"),
            Health(),
            FanOut([], "density"),
            options,
            self._collector,
        )
        self._runtime.start()

    def _open(
        self,
        assignment: CameraAssignment,
        metrics: CameraMetrics,
        options: CaptureOptions,
        sampler: Sampler,
    ) -> ReplayStream:
        del metrics, options, sampler  # every frame is analysed (sampling "all")
        index = int(assignment.name.split("-")[1])
        stream = ReplayStream(assignment.name, self._frames, index * 7, (index % 30) / FPS / 30)
        self._sources[assignment.name] = stream
        return stream

    def close(self) -> None:
        self._runtime.stop()

    def measure(self, streams: int, seconds: float, warmup: float) -> dict[str, Any]:
        self._runtime.apply(worker_config(self._setup, streams, "fp16"))
        if self._setup.decodes:
            wait_streaming(self._runtime.cameras.values())
        live = [self._sources[f"cam-{i:03d}"] for i in range(streams) if not self._setup.decodes]
        time.sleep(warmup)  # a benchmark's measuring window, not synchronisation
        offered_before = sum(s.offered for s in live)
        _mark_measuring()
        self._collector.start()
        with profiled(lambda: len(self._collector.latencies)):
            time.sleep(seconds)
        measured = self._collector.stop()
        offered = sum(s.offered for s in live) - offered_before
        if self._setup.decodes:
            offered = round(streams * FPS * seconds)  # what the cameras sent
        return {"offered": offered, **measured}


PROFILE_DIR_ENV = "DENSITY_PROFILE_DIR"
"""Where a worker process says (a file named for its pid) that its measuring window began,
so a profiler (profile_on_device.sh) samples the steady state, not model loading."""


def _mark_measuring() -> None:
    if folder := os.environ.get(PROFILE_DIR_ENV):
        Path(folder, f"measuring.{os.getpid()}").touch()


class BaselineLoop:
    """One loop, one frame at a time: CPU letterbox, FP32 eager batch 1, CPU NMS, tracker."""

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        self._frames = _frames_for(setup)
        self._config = worker_config(setup, 0, "fp32")
        backend = TorchBackend.from_onnx(
            setup.model, input_shape=(3, setup.input_size, setup.input_size), device=setup.device,
            precision="fp32",
            max_batch=1, cuda_graphs=False,
        )  # fmt: skip
        self._detector = Detector.from_config(self._config.detector, backend)
        assert self._config.classifier is not None
        model = self._config.classifier.model
        self._classifier = CropClassifier(
            model,
            create_backend(model, setup.classifier, "cpu", intra_op_threads=2),
            labels_file=setup.labels,
        )

    def close(self) -> None:
        """Nothing runs in the background."""

    def measure(self, streams: int, seconds: float, warmup: float) -> dict[str, Any]:
        if not self._setup.decodes:
            replayed = [
                ReplayStream(f"cam-{i:03d}", self._frames, i * 7, (i % 30) / FPS / 30).start()
                for i in range(streams)
            ]
            return self._loop(replayed, seconds, warmup)
        metrics = WorkerMetrics("density-baseline")
        cameras = worker_config(self._setup, streams, "fp32").shards[0]
        capture = camera_capture(self._setup)
        decoding = [CameraStream(c, metrics.camera(c.name), capture).start() for c in cameras]
        try:
            wait_streaming(decoding)
            result = self._loop(decoding, seconds, warmup)
        finally:
            for source in decoding:
                source.stop()
        result["offered"] = round(streams * FPS * seconds)  # what the cameras sent
        return result

    def _loop(self, sources: Sequence[Any], seconds: float, warmup: float) -> dict[str, Any]:
        trackers = [create_tracker(self._config.tracker, None) for _ in sources]
        seen: list[set[int]] = [set() for _ in sources]
        latencies: list[float] = []
        objects = 0
        start = time.monotonic()
        offered_before: int | None = None
        cpu_start = 0.0
        while time.monotonic() - start < warmup + seconds:
            counting = time.monotonic() - start >= warmup
            if counting and offered_before is None:
                offered_before = _offered(sources)
                cpu_start = time.process_time()
            for i, source in enumerate(sources):
                frame = source.get(0)
                if frame is None:
                    continue
                found = self._detector([frame.image])[0]
                tracked = trackers[i].update(found, frame.image)
                ids = tracked.track_ids.tolist()
                new = np.array([t != NO_TRACK and t not in seen[i] for t in ids], dtype=bool)
                if new.any():
                    self._classifier(frame.image, tracked.xyxy[new])
                    seen[i].update(ids)
                if counting:
                    latencies.append(time.time() - frame.capture_wall)
                    objects += len(tracked)
        return {
            "offered": _offered(sources) - (offered_before or 0),
            "latencies": latencies,
            "objects": objects,
            "stage_seconds": {},
            "batches": len(latencies),
            "cpu_seconds": time.process_time() - cpu_start,
        }


def _offered(sources: Sequence[Any]) -> int:
    """Frames the replayed cameras produced so far (decode modes count theirs per trial)."""
    return sum(getattr(s, "offered", 0) for s in sources)


def _child(setup: Setup, commands: Any, results: Any) -> None:
    """A worker process: load once, then measure each (streams, seconds, warmup) it is sent."""
    worker = BaselineLoop(setup) if setup.mode.startswith("baseline") else KubeVisionWorker(setup)
    results.put("ready")
    while (command := commands.get()) is not None:
        results.put(worker.measure(*command))
    worker.close()


class Fleet:
    """K worker processes sharing the GPU (K pods on one node)."""

    def __init__(self, setup: Setup, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._commands = [ctx.Queue() for _ in range(processes)]
        self._children = [
            ctx.Process(target=_child, args=(setup, commands, self._results), daemon=True)
            for commands in self._commands
        ]
        for child in self._children:
            child.start()
        try:
            for _ in self._children:
                self._receive()
        except (RuntimeError, TimeoutError):
            self.close()
            raise

    def _receive(self) -> Any:
        """The next message; fails at once when a child died instead of waiting it out."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                return self._results.get(timeout=1)
            except queue.Empty:
                dead = [c.exitcode for c in self._children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker process died (exit codes {dead})") from None
        raise TimeoutError("no answer from the worker processes in 600 s")

    def close(self) -> None:
        for commands in self._commands:
            commands.put(None)
        for child in self._children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()

    def trial(self, streams: int, seconds: float, warmup: float) -> dict[str, Any]:
        """N streams split over the processes; pooled latencies and delivery."""
        count = len(self._children)
        shares = [streams // count + (i < streams % count) for i in range(count)]
        for commands, share in zip(self._commands, shares, strict=True):
            commands.put((share, seconds, warmup))
        parts = [self._receive() for _ in shares]
        latencies = np.array([v for p in parts for v in p["latencies"]])
        offered = sum(p["offered"] for p in parts)
        processed = len(latencies)
        p99 = float(np.percentile(latencies, 99) * 1000) if processed else float("inf")
        delivered = processed / offered if offered else 0.0
        stages: dict[str, float] = {}
        for part in parts:
            for stage, spent in part["stage_seconds"].items():
                stages[stage] = stages.get(stage, 0.0) + spent
        batches = sum(p["batches"] for p in parts)
        return {
            "streams": streams,
            "processes": count,
            "offered_frames": offered,
            "processed_frames": processed,
            "processed_fps": round(processed / seconds, 1),
            "delivered": round(delivered, 4),
            "p50_ms": round(float(np.percentile(latencies, 50) * 1000), 1) if processed else None,
            "p99_ms": round(p99, 1),
            "passed": p99 <= SLO_P99_MS and delivered >= MIN_DELIVERED,
            "mean_batch": round(processed / batches, 1) if batches else None,
            "tracked_objects_per_frame": (
                round(sum(p["objects"] for p in parts) / processed, 1) if processed else None
            ),
            "stage_ms_per_frame": {
                k: round(v * 1000 / processed, 3) for k, v in stages.items() if processed
            },
            "cpu_cores": round(sum(p["cpu_seconds"] for p in parts) / seconds, 2),
            "cpu_ms_per_frame": (
                round(sum(p["cpu_seconds"] for p in parts) * 1000 / processed, 2)
                if processed
                else None
            ),
        }


def search(
    fleet: Fleet, name: str, start: int, limit: int, seconds: float, warmup: float
) -> tuple[int, list[dict[str, Any]]]:
    """Largest passing N: double from ``start`` until a failure, then bisect to a step of
    ``start / 8`` (at least 1)."""
    trials: list[dict[str, Any]] = []
    step = max(1, start // 8)
    best, low, high = 0, 0, None
    n = start
    while n <= limit:
        result = fleet.trial(n, seconds, warmup)
        trials.append(result)
        print(name, json.dumps(result), flush=True)
        if not result["passed"]:
            high = n
            break
        best = low = n
        n *= 2
    while high is not None and high - low > step:
        mid = (low + high) // 2
        result = fleet.trial(mid, seconds, warmup)
        trials.append(result)
        print(name, json.dumps(result), flush=True)
        if result["passed"]:
            best = low = mid
        else:
            high = mid
    return best, trials


def measure_mode(setup: Setup, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration's search; a configuration that fails is recorded, not fatal, so the
    others (and the baseline beside them) still come back from a scarce GPU run."""
    baseline = setup.mode.startswith("baseline")
    start = 1 if baseline else args.start * processes
    config: dict[str, Any] = {"mode": setup.mode, "processes": processes, "max_streams": 0}
    fleet = None
    try:
        fleet = Fleet(setup, processes)
        if args.streams and not baseline:  # given loads; the batch-1 loop searches from 1
            trials = [fleet.trial(n, args.seconds, args.warmup) for n in args.streams]
            for trial in trials:
                print(setup.mode, json.dumps(trial), flush=True)
            best = max((t["streams"] for t in trials if t["passed"]), default=0)
        else:
            best, trials = search(fleet, setup.mode, start, args.limit, args.seconds, args.warmup)
    except (RuntimeError, TimeoutError) as error:
        return {**config, "trials": [], "error": str(error)}
    finally:
        if fleet is not None:
            fleet.close()
    return {**config, "max_streams": best, "trials": trials}


def gpu_name() -> str:
    if not torch.cuda.is_available():
        return "none (CPU smoke run)"
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return f"{props.name}, {props.total_memory // 2**30} GiB, driver {driver}"


_SYNC_TEXT = {
    "blocking": "sleeping in the driver (blocking sync)",
    "spin": "spinning (CUDA's busy wait)",
    "auto": "CUDA's default (spinning on a host with more cores than contexts)",
}


def markdown(results: dict[str, Any]) -> str:
    """The summary table, where the time went at each configuration's best N, every trial."""
    configs = results["configs"]
    baseline = next((c["max_streams"] for c in configs if c["mode"].startswith("baseline")), 0)
    classifier = results.get("classifier", "INT8, ONNX Runtime on the CPU")  # older runs
    detector = results.get("detector", {"model": "YOLOX-nano", "input": 416})
    decoding = any(c["mode"] in DECODE_MODES for c in configs)
    title = "decode included" if decoding else "decode left out: frames replayed from memory"
    lines = [
        f"# End-to-end density on one GPU (30 FPS 1080p streams, p99 <= 100 ms; {title})",
        "",
        f"GPU: {results['gpu']}. Host: {results['host']}. torch {results['torch']}.",
        *_sources_text(results),
        f"Pipeline: {detector['model']} {detector['input']} -> ByteTrack -> MobileNetV2 "
        f"classifier ({classifier}) per new track (refresh 30 frames). "
        "Latency: frame capture time -> tracked + classified + events. "
        f"Pass: p99 <= {SLO_P99_MS:.0f} ms and >= {MIN_DELIVERED:.0%} of offered frames "
        f"processed; {results['seconds']} s measured after {results['warmup']} s warm-up. "
        "Processes: worker processes (pods) sharing the GPU, streams split evenly; they share "
        f"it by {results.get('gpu_sharing', 'time-slicing')}; "
        f"{results.get('lanes', 1)} inference lane(s) per process; the workers' threads wait "
        f"for the GPU by {_SYNC_TEXT[results.get('cuda_sync', 'auto')]}.",
        "",
        "| configuration | decode | processes | max streams | frames/s at max | p50 / p99 ms | "
        "CPU ms per frame | x baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        best = _best_trial(config)
        fps = best["processed_fps"] if best else 0
        lat = f"{best['p50_ms']} / {best['p99_ms']}" if best else config.get("error", "-")
        cpu = best.get("cpu_ms_per_frame", "-") if best else "-"
        ratio = f"{config['max_streams'] / baseline:.1f}x" if baseline else "n/a"
        lines.append(
            f"| {config['mode']} | {_decode_of(config['mode'])} | {config['processes']} | "
            f"{config['max_streams']} | {fps} | {lat} | {cpu} | {ratio} |"
        )
    lines += [
        "",
        "Where the time went at each best N, per processed frame (detector stages: GPU time "
        "from CUDA events; track/classify/publish: host time in the lane's finishing "
        "thread), with the CPU cores the worker processes used:",
        "",
        "| configuration | processes | mean batch | tracked objects per frame | "
        "stage ms per frame | CPU cores |",
        "|---|---|---|---|---|---|",
    ]
    for config in configs:
        if best := _best_trial(config):
            stages = ", ".join(f"{k} {v}" for k, v in best["stage_ms_per_frame"].items()) or "-"
            lines.append(
                f"| {config['mode']} | {config['processes']} | {best['mean_batch']} | "
                f"{best.get('tracked_objects_per_frame', 'not recorded')} | {stages} | "
                f"{best['cpu_cores']} |"
            )
    lines += [
        "",
        "Every trial:",
        "",
        "| configuration | streams | processes | frames/s | delivered | p50 ms | p99 ms | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        for t in config["trials"]:
            lines.append(
                f"| {config['mode']} | {t['streams']} | {t['processes']} | "
                f"{t['processed_fps']} | {t['delivered']:.1%} | {t['p50_ms']} | {t['p99_ms']} | "
                f"{t['passed']} |"
            )
    return "\n".join(lines) + "\n"


def _sources_text(results: dict[str, Any]) -> list[str]:
    """What the cameras sent: the decode modes' file, the replay modes' frames."""
    text = [
        f"Replay modes: frames of `{results['clip']}` (1920x1080) already decoded, from memory "
        "at 30 FPS (decode left out)."
    ]
    if video := results.get("video"):
        text.append(
            f"Decode modes: every camera sends `{Path(video['path']).name}` ({video['codec']} "
            f"{video['profile']}, {video['width']}x{video['height']} {video['pix_fmt']}, "
            f"{video['fps']:.0f} fps, GOP {video['gop']}, {video['bitrate_mbps']} Mbit/s), its "
            "packets paced at their timestamps and looped; latency counts from a packet's "
            "arrival, before decoding; offered = 30 frames/s per camera."
        )
    return text


def _decode_of(mode: str) -> str:
    if mode == "kubevision-nvdec":
        return "NVDEC"
    if mode == "baseline-decode-per-stream-batch1":
        return "CPU (FFmpeg)"
    return "none (replayed)"


def _best_trial(config: dict[str, Any]) -> dict[str, Any] | None:
    return next((t for t in config["trials"] if t["streams"] == config["max_streams"]), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="dynamic-batch YOLOX-nano ONNX")
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument(
        "--classifier-precision",
        choices=["int8", "fp16"],
        default="int8",
        help="int8: ONNX Runtime on the CPU; fp16: a `prepare float` export on the GPU",
    )
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--clip", type=Path, required=True, help="1080p video to replay")
    parser.add_argument(
        "--video", type=Path, help="H.264 file every camera sends in the decode modes"
    )
    parser.add_argument("--detector", choices=["yolox", "yolov8"], default="yolox")
    parser.add_argument("--input-size", type=int, default=416)
    parser.add_argument("--confidence", type=float, default=CONFIDENCE)
    parser.add_argument("--name", default="gpu_density", help="results file name")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument(
        "--start", type=int, default=16, help="first N per worker process for KubeVision modes"
    )
    parser.add_argument(
        "--streams",
        type=lambda text: [int(n) for n in text.split(",")],
        help="trials at these loads (comma-separated stream counts), no search (baselines search)",
    )
    parser.add_argument("--device", default="cuda:0", help="cpu only for a smoke test")
    parser.add_argument(
        "--lanes", type=int, default=1, help="inference lanes per worker process (same GPU)"
    )
    parser.add_argument(
        "--cuda-sync",
        choices=SYNC_POLICIES,
        default="blocking",
        help="how the worker's threads wait for the GPU (the baseline loop keeps CUDA's default)",
    )
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="MODE:PROCESSES pairs; modes: " + ", ".join(MODES),
    )
    parser.add_argument(
        "--gpu-sharing",
        default="time-slicing (no MPS)",
        help="how the processes share the GPU, for the report (run_on_device.sh says MPS)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    configs = []
    for pair in args.configs.split(","):
        mode, processes = pair.split(":")
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if mode in DECODE_MODES and args.video is None:
            parser.error(f"{mode} decodes: give --video")
        setup = Setup(
            mode, args.model, args.classifier, args.labels, args.clip, args.frames,
            args.max_batch, args.device, args.classifier_precision, args.video, args.detector,
            args.input_size, args.confidence, args.lanes, args.cuda_sync,
        )  # fmt: skip
        configs.append(measure_mode(setup, int(processes), args))
        # written after every configuration: a run cut short by its time limit keeps the rest
        results = {
            "gpu": gpu_name(),
            "host": machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "clip": args.clip.name,
            "video": asdict(Clip.probe(args.video)) if args.video else None,
            "detector": {
                "model": args.model.name,
                "decoder": args.detector,
                "input": args.input_size,
                "confidence": args.confidence,
                "precision": "fp16 (torch backend)",
            },
            "classifier": (
                "INT8, ONNX Runtime on the CPU"
                if args.classifier_precision == "int8"
                else "FP16, torch on the GPU"
            ),
            "gpu_sharing": args.gpu_sharing,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "max_batch": args.max_batch,
            "lanes": args.lanes,
            "cuda_sync": args.cuda_sync,
            "configs": configs,
        }
        write_results(args.out, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
