"""Helpers shared by the integration tests: kubectl in one namespace, and what the operator
made there."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import yaml

from benchmarks.cascade_bandwidth import VIDEOS
from kubevision.api.worker_config import CONFIG_FILE, WorkerConfig
from kubevision.worker.events import Snapshot, TrackEvent
from kubevision.worker.health import Health
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import sha256_of
from kubevision.worker.runtime import FrameResult, RuntimeOptions, WorkerRuntime
from kubevision.worker.sinks import FanOut
from kubevision.worker.snapshots import InlineStore, crop, encode_jpeg
from tests.assets import read_image, require
from tests.envtest.cluster import LocalCluster
from tests.envtest.poll import wait_for
from tests.envtest.sinks import track_event

T = TypeVar("T")


def condition_of(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The ``type_`` condition of an object as read (None: no such condition)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return None


class Namespace:
    """kubectl in one test namespace, plus readers for what the operator produced."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = self.cluster.control_plane.kubectl("-n", self.name, *args, input=input, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def apply(self, *paths: Path, docs: list[dict[str, Any]] | None = None) -> None:
        for path in paths:
            self.kubectl("apply", "-f", str(path))
        if docs:
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args.append(f"-l={selector}")
        out = self.kubectl(*args, check=False)
        return json.loads(out) if out else None

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        result = self.get(kind, selector=selector)
        return list(result["items"]) if result else []

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        return condition_of(self.get(kind, name), type_)

    def worker_config(self, name: str) -> WorkerConfig:
        cm = self.get("configmap", name)
        return WorkerConfig.model_validate(json.loads(cm["data"][CONFIG_FILE]))


def optimistic_cpu_detector(name: str, model: Path) -> dict[str, Any]:
    """A YOLOX-nano ModelVariant for the CPU whose optimistic figures make the plan ask for one
    replica and pass any SLO at selection: what the workers then measure drives scaling."""
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "ModelVariant",
        "metadata": {"name": name},
        "spec": {
            "family": "yolox-nano",
            "task": "detect",
            "format": "onnx",
            "precision": "fp32",
            "decoder": "yolox",
            "inputSize": {"width": 416, "height": 416},
            "artifact": {"uri": f"file:///models/{model.name}", "sha256": sha256_of(model)},
            "hardware": [{"accelerator": "cpu", "expectedFps": 1000, "p99LatencyMs": 1}],
        },
    }


def file_camera(name: str, path: Path) -> dict[str, Any]:
    """A worker-config camera reading a video file (wire format)."""
    return {
        "name": name,
        "url": f"file://{path}",
        "timeoutSeconds": 5,
        "fps": 30,
        "sampling": {"mode": "all"},
        "priority": 100,
    }


def mot17_clip(out: Path, sequence: str = "MOT17-04-FRCNN", fps: int = 10) -> Path:
    """A real 1080p street clip (H.264) of a MOT17-mini sequence's frames, for a file camera."""
    frames = sorted(require(f"mot/MOT17-mini/{sequence}/img1").glob("*.jpg"))
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        first = read_image(frames[0])
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        for path in frames:
            frame = av.VideoFrame.from_ndarray(read_image(path), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out


def events_until(
    wire: dict[str, Any],
    metrics: WorkerMetrics,
    pick: Callable[[list[TrackEvent]], T | None],
    what: str,
    timeout: float = 120,
) -> tuple[T, list[TrackEvent]]:
    """Run a worker config in this process (no sinks) until ``pick`` finds what it wants in the
    events so far; that, and every event by then."""
    events: list[TrackEvent] = []
    lock = threading.Lock()

    def on_result(result: FrameResult) -> None:
        with lock:
            events.extend(result.events)

    def picked() -> T | None:
        with lock:
            return pick(list(events))

    config = WorkerConfig.model_validate(wire)
    sink = FanOut([], config.pipeline)
    runtime = WorkerRuntime(
        config, 0, metrics, Health(), sink, RuntimeOptions(threads=2), on_result
    )
    runtime.start()
    try:
        found = wait_for(picked, timeout=timeout, what=what)
    finally:
        runtime.stop()
    with lock:
        return found, list(events)


def yolox_worker_config(
    pipeline: str,
    group: str,
    shards: list[list[dict[str, Any]]],
    model: Path,
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A worker config (wire format) running the shared YOLOX-nano ONNX file with ByteTrack."""
    return {
        "pipeline": pipeline,
        "namespace": "ns",
        "group": group,
        "hardwareClass": "cpu",
        "detector": {
            "model": {
                "variant": "yolox-nano-416-onnx-fp32",
                "family": "yolox-nano",
                "task": "detect",
                "format": "onnx",
                "precision": "fp32",
                "inputSize": {"width": 416, "height": 416},
                "decoder": "yolox",
                "batchMax": 1,
                "artifact": {
                    "uri": "file:///models/yolox_nano_416.onnx",
                    "sha256": sha256_of(model),
                },
            },
            "confidence": 0.3,
            "nmsIou": 0.45,
        },
        "tracker": {"type": "bytetrack"},
        "slo": {"p99LatencyMs": 100, "minFps": 5},
        "outputs": outputs or [],
        "shards": shards,
    }


def edge_events(start: int, count: int) -> list[TrackEvent]:
    """What an edge Pipeline sends upstream: events of two cameras, every other one a
    track.started with a real inline JPEG crop (cut from the shared parking-lot video)."""
    with av.open(str(require(VIDEOS["parking"]))) as video:
        frame = next(video.decode(video=0)).to_ndarray(format="bgr24").astype(np.uint8)
    events = []
    for n in range(start, start + count):
        event = track_event("edge", f"gate-{n % 2}", n, "track.started" if n % 2 else "track.ended")
        if n % 2:
            box = (100.0 + 10 * (n % 20), 120.0, 260.0 + 10 * (n % 20), 260.0)
            cut = crop(frame, box, 0.1)
            assert cut is not None
            data = encode_jpeg(cut, 85)
            snapshot = Snapshot(
                uri=InlineStore().put("", data),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                width=cut.shape[1],
                height=cut.shape[0],
            )
            event = event.model_copy(update={"box": box, "snapshot": snapshot})
        events.append(event)
    return events
