"""``kubevision-worker``: the data plane of one worker pod, or of a person's terminal.

    kubevision-worker serve --config /etc/kubevision/worker.json    # in a pod
    kubevision-worker run --source video.mp4 --detector yolox_nano_416.onnx   # standalone

``serve`` runs this replica's shard of the config, exposes ``/metrics``, ``/healthz`` and
``/readyz``, and applies config changes without a restart. ``run`` builds the same config from
flags, prints a live summary and can write an annotated video and the events.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubevision.api.camera import Sampling
from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.pipeline import Output, Slo, TrackerStage
from kubevision.api.worker_config import (
    CameraAssignment,
    ClassifierConfig,
    DetectorConfig,
    ModelConfig,
    WorkerConfig,
)
from kubevision.worker.allocator import tune_allocator
from kubevision.worker.capture import CaptureOptions
from kubevision.worker.config import ConfigError, ConfigWatcher, load_config, shard_index
from kubevision.worker.gpu.sync_policy import SYNC_POLICIES
from kubevision.worker.health import Health, HealthServer
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import MISSING, ArtifactError, sha256_of
from kubevision.worker.nvdec import DECODER_CHOICES
from kubevision.worker.runtime import RuntimeOptions, WorkerRuntime
from kubevision.worker.sinks import FanOut, SinkConfigError, build_sinks
from kubevision.worker.snapshots import SnapshotError, SnapshotMetrics, Snapshotter, build_store
from kubevision.worker.summary import LiveSummary

log = logging.getLogger("kubevision.worker")


def _wait_for_signal(
    stop: threading.Event,
    until: float | None = None,
    every: tuple[float, Callable[[], object]] | None = None,
) -> None:
    """Until SIGTERM/SIGINT (or ``until``); ``every``: (seconds, call) made meanwhile."""
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    due = time.monotonic() + every[0] if every else None
    while not stop.wait(0.5):
        now = time.monotonic()
        if until is not None and now >= until:
            return
        if every is not None and due is not None and now >= due:
            every[1]()
            due = now + every[0]


def serve(args: argparse.Namespace) -> int:
    config_path = Path(args.config)
    config = load_config(config_path)
    shard = shard_index(args.shard)
    metrics = WorkerMetrics(config.pipeline)
    health = Health()
    server = HealthServer(
        metrics.registry,
        health,
        args.port,
        host=args.host,
        cameras=metrics.camera_status,
        models=metrics.model_status,
    )
    server.start()
    sink = build_sinks(
        config.outputs,
        config.pipeline,
        metrics.registry,
        spool=config.spool,
        spool_dir=Path(args.spool_dir) if args.spool_dir else None,
    )
    snapshots = _snapshotter(config, sink, metrics, args.snapshot_dir)
    runtime = WorkerRuntime(
        config, shard, metrics, health, sink, _runtime_options(args), snapshots=snapshots
    )
    watcher = ConfigWatcher(config_path, runtime.apply)
    runtime.start()
    watcher.start()
    try:
        # a refused model artifact is tried again: it may be uploaded or fixed in place
        _wait_for_signal(threading.Event(), every=(args.model_retry_seconds, runtime.retry_models))
    finally:
        watcher.stop()
        runtime.stop()
        server.stop()
    return 0


def cascade(args: argparse.Namespace) -> int:
    """The cloud half of the cascade (:mod:`.cascade`): edge events in, enriched events out."""
    from kubevision.worker.cascade import (
        Cascade,
        CascadeMetrics,
        build_classifier,
        load_cascade_config,
    )

    config = load_cascade_config(Path(args.config))
    classifier = build_classifier(
        config,
        model_search=[Path(p) for p in args.model_dir],
        device=args.device,
        threads=args.threads,
        backend=args.backend,
        labels_file=Path(args.classifier_labels) if args.classifier_labels else None,
    )
    metrics = WorkerMetrics(config.pipeline)
    health = Health()
    server = HealthServer(metrics.registry, health, args.port, host=args.host)
    server.start()
    sink = build_sinks(
        config.outputs,
        config.pipeline,
        metrics.registry,
        spool=config.spool,
        spool_dir=Path(args.spool_dir) if args.spool_dir else None,
    )
    worker = Cascade(
        config, classifier, sink, CascadeMetrics(metrics.registry, config.pipeline), health
    )
    worker.start()
    try:
        _wait_for_signal(threading.Event())
    finally:
        worker.stop()
        server.stop()
    return 0


def _snapshotter(
    config: WorkerConfig, sink: FanOut, metrics: WorkerMetrics, snapshot_dir: str | None
) -> Snapshotter | None:
    """The config's snapshot store behind an encoder thread, or None without snapshots."""
    if config.snapshots is None:
        return None
    folder = Path(snapshot_dir) if snapshot_dir else None
    counters = SnapshotMetrics(metrics.registry, config.pipeline)
    try:
        store = build_store(config.snapshots, counters, folder)
    except SnapshotError:
        sink.close()
        raise
    return Snapshotter(sink, store, config.snapshots, counters)


def run(args: argparse.Namespace) -> int:
    config = standalone_config(args)
    metrics = WorkerMetrics(config.pipeline)
    health = Health()
    sink = build_sinks(config.outputs, config.pipeline, metrics.registry)
    summary = LiveSummary(
        metrics, annotate=Path(args.annotate) if args.annotate else None, max_frames=args.max_frames
    )
    capture = _capture_options(args, loop=not args.once)
    runtime = WorkerRuntime(
        config,
        0,
        metrics,
        health,
        sink,
        _runtime_options(args, capture=capture),
        on_result=summary.on_result,
    )
    stop = summary.done
    until = time.monotonic() + args.duration if args.duration else None
    runtime.start()
    try:
        with summary.live():
            _wait_for_signal(stop, until)
    finally:
        runtime.stop()
        summary.close()
    summary.print_final()
    return 0


def _capture_options(args: argparse.Namespace, **fields: Any) -> CaptureOptions:
    """Decoding on the worker's GPU (NVDEC) when it has one and ``--video-decoder`` allows."""
    gpu = int(args.device.split(":", 1)[1]) if args.device.startswith("cuda:") else 0
    return CaptureOptions(decoder=args.video_decoder, gpu=gpu, **fields)


def _runtime_options(args: argparse.Namespace, **overrides: Any) -> RuntimeOptions:
    overrides.setdefault("capture", _capture_options(args))
    return RuntimeOptions(
        model_search=tuple(Path(p) for p in args.model_dir),
        device=args.device,
        backend=args.backend,
        triton_url=args.triton_url,
        threads=args.threads,
        cuda_sync=args.cuda_sync,
        classifier_labels=Path(args.classifier_labels) if args.classifier_labels else None,
        **overrides,
    )


def _local_model(path: str, **fields: Any) -> ModelConfig:
    """A ModelConfig for a local ONNX file (its checksum taken now, verified at load)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise ArtifactError(MISSING, f"{path}: no such model file")
    return ModelConfig(
        variant=file.stem,
        family=file.stem,
        format="onnx",
        precision="fp32",
        artifact=Artifact(uri=f"file://{file}", sha256=sha256_of(file)),
        **fields,
    )


def standalone_config(args: argparse.Namespace) -> WorkerConfig:
    """The WorkerConfig ``run``'s flags describe: one shard with every source."""
    size = InputSize(width=args.input_size, height=args.input_size)
    detector = DetectorConfig(
        model=_local_model(
            args.detector,
            task="detect",
            input_size=size,
            decoder=args.decoder,
            batch_max=args.batch,
        ),
        confidence=args.confidence,
        nms_iou=args.nms_iou,
        classes=args.classes or [],
    )
    classifier = None
    if args.classifier:
        classifier = ClassifierConfig(
            model=_local_model(
                args.classifier,
                task="classify",
                input_size=InputSize(width=224, height=224),
                batch_max=64,
            ),
            refresh_frames=args.refresh_frames,
        )
    reid = None
    if args.reid:
        reid = _local_model(
            args.reid, task="reid", input_size=InputSize(width=128, height=256), batch_max=64
        )
    cameras = [
        CameraAssignment(
            name=f"cam{i}",
            url=_as_url(src),
            timeout_seconds=10,
            fps=args.fps,
            sampling=Sampling(),
            priority=100,
        )
        for i, src in enumerate(args.source)
    ]
    outputs = [Output(type="stdout")] if args.events == "-" else []
    if args.events and args.events != "-":
        outputs.append(Output(type="file", path=args.events))
    return WorkerConfig(
        pipeline="standalone",
        namespace="local",
        group="local",
        hardware_class="cpu",
        detector=detector,
        tracker=TrackerStage(type=args.tracker, reid=None),
        reid=reid,
        classifier=classifier,
        slo=Slo(),
        outputs=outputs,
        shards=[cameras],
    )


def _as_url(source: str) -> str:
    return source if "://" in source else f"file://{Path(source).resolve()}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubevision-worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=importlib.metadata.version("kubevision")
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model-dir",
        action="append",
        default=[],
        help="folder holding model files (repeatable; also KUBEVISION_MODEL_DIR)",
    )
    common.add_argument(
        "--device",
        default=os.environ.get("KUBEVISION_DEVICE", "cpu"),
        help="cpu, cuda:N, or cuda for every visible GPU, one inference lane each "
        "(default: KUBEVISION_DEVICE or cpu)",
    )
    common.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "torch"],
        help="runtime for ONNX models (auto: torch on a GPU when installed, else ONNX Runtime)",
    )
    common.add_argument(
        "--video-decoder",
        default="auto",
        choices=DECODER_CHOICES,
        help="auto: NVDEC on the GPU where available, else CPU threads",
    )
    common.add_argument(
        "--triton-url",
        help="Triton gRPC host:port for triton:// models (default: KUBEVISION_TRITON_URL)",
    )
    common.add_argument("--threads", type=int, help="inference threads (default: runtime's)")
    common.add_argument(
        "--cuda-sync",
        default="blocking",
        choices=SYNC_POLICIES,
        help="how threads wait for a GPU: blocking sleeps (frees cores), spin is CUDA's busy wait",
    )
    common.add_argument("--classifier-labels", help="class names file for the classifier")

    s = sub.add_parser("serve", parents=[common], help="run a shard of the operator's config")
    s.add_argument("--config", default="/etc/kubevision/worker.json")
    s.add_argument("--shard", type=int, help="default: KUBEVISION_SHARD (the pod index)")
    s.add_argument("--port", type=int, default=9090, help="metrics and probes")
    s.add_argument(
        "--model-retry-seconds",
        type=float,
        default=30.0,
        help="how often a model whose artifact was refused is tried again",
    )
    s.add_argument("--spool-dir", help="folder of the outputs' disk spools (the spool volume)")
    s.add_argument("--snapshot-dir", help="folder of node snapshots (the snapshot volume)")
    s.add_argument(
        "--host", default="0.0.0.0", help="address the metrics and probe server binds to"
    )

    c = sub.add_parser(
        "cascade", parents=[common], help="classify the crops of edge events (cloud side)"
    )
    c.add_argument("--config", default="/etc/kubevision/cascade.json")
    c.add_argument("--port", type=int, default=9090, help="metrics and probes")
    c.add_argument("--spool-dir", help="folder of the outputs' disk spools")
    c.add_argument("--host", default="0.0.0.0", help="address the metrics server binds to")

    r = sub.add_parser("run", parents=[common], help="analyse sources from the command line")
    r.add_argument(
        "--source",
        action="append",
        required=True,
        help="video file or URL (rtsp://, http(s)://, rtmp://); repeatable",
    )
    r.add_argument("--detector", required=True, help="detector ONNX file")
    r.add_argument("--decoder", default="yolox", choices=["yolox", "yolov8", "nanodet"])
    r.add_argument("--input-size", type=int, default=416)
    r.add_argument("--batch", type=int, default=8, help="most frames per inference call")
    r.add_argument("--confidence", type=float, default=0.3)
    r.add_argument("--nms-iou", type=float, default=0.45)
    r.add_argument("--classes", nargs="*", help="class names to keep (default: all)")
    r.add_argument("--tracker", default="bytetrack", choices=["sort", "bytetrack", "deepsort"])
    r.add_argument("--reid", help="re-id ONNX file (deepsort)")
    r.add_argument("--classifier", help="crop classifier ONNX file")
    r.add_argument("--refresh-frames", type=int, default=30)
    r.add_argument("--fps", type=float, default=30)
    r.add_argument("--events", help="write events as JSON lines to this file ('-': stdout)")
    r.add_argument("--annotate", help="write an annotated video of the first source here")
    r.add_argument("--once", action="store_true", help="stop files at their end (no loop)")
    r.add_argument("--max-frames", type=int, help="stop after this many frames in all")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if applied := tune_allocator():
        log.debug("malloc tuned %s", applied, extra={"malloc": applied})
    try:
        commands = {"serve": serve, "cascade": cascade, "run": run}
        return commands[args.command](args)
    except (ConfigError, ArtifactError, SinkConfigError, SnapshotError, ValueError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
