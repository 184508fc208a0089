"""The worker runtime with several inference lanes (one per GPU on a GPU server), here on CPU
lanes: cameras are spread over the lanes, every lane batches across its own cameras, and each
camera's results come back to its own tracker."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kubevision.api.worker_config import WorkerConfig
from kubevision.worker.capture import CaptureOptions
from kubevision.worker.classifier import CropClassifier, FloatArray, Labelled
from kubevision.worker.health import Health
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import sha256_of
from kubevision.worker.nvdec import Pixels
from kubevision.worker.pending import Pending
from kubevision.worker.runtime import FrameResult, RuntimeOptions, WorkerRuntime, resolve_devices
from kubevision.worker.sinks import FanOut
from tests.assets import require
from tests.envtest.poll import WaitTimeout, wait_for
from tests.integration.helpers import file_camera, yolox_worker_config
from tests.unit.test_torch_backend import yolox_dynamic  # noqa: F401 (fixture)

CAMERAS = ("north", "south", "east", "west")


def test_two_lanes_share_the_cameras_and_batch_across_them(
    yolox_dynamic: Path,  # noqa: F811 (the imported fixture)
) -> None:
    video = require("videos/bottle-detection.mp4")
    wire = yolox_worker_config("p", "g", [[file_camera(c, video) for c in CAMERAS]], yolox_dynamic)
    wire["detector"]["model"]["batchMax"] = 4
    wire["detector"]["model"]["artifact"]["uri"] = f"file://{yolox_dynamic}"
    lanes_by_camera: dict[str, set[str]] = defaultdict(set)
    tracks_by_camera: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def on_result(result: FrameResult) -> None:
        with lock:
            lanes_by_camera[result.frame.camera].add(threading.current_thread().name)
            tracks_by_camera[result.frame.camera] += len(result.detections)

    metrics = WorkerMetrics("p")
    options = RuntimeOptions(
        capture=CaptureOptions(loop=True),
        device="cpu,cpu",
        backend="torch",
        threads=1,
        max_wait_seconds=0.05,
    )
    runtime = WorkerRuntime(
        WorkerConfig.model_validate(wire), 0, metrics, Health(), FanOut([], "p"), options, on_result
    )
    runtime.start()
    try:
        wait_for(
            lambda: all(tracks_by_camera[c] > 0 for c in CAMERAS),
            timeout=120,
            what="tracked bottles from every camera",
        )
    finally:
        runtime.stop()
    lanes = {name for names in lanes_by_camera.values() for name in names}
    assert len(lanes) == 2
    assert all(len(names) == 1 for names in lanes_by_camera.values())  # a camera stays put
    per_lane = [sum(name in names for names in lanes_by_camera.values()) for name in lanes]
    assert per_lane == [2, 2]
    batches = metrics.registry.get_sample_value("kubevision_batch_size_count", {"pipeline": "p"})
    frames = metrics.registry.get_sample_value("kubevision_batch_size_sum", {"pipeline": "p"})
    assert batches is not None
    assert frames is not None
    assert frames > batches  # some batches held frames of both of a lane's cameras


def test_a_lane_detects_the_next_batch_while_tracking_the_last_and_its_backlog_stays_bounded(
    yolox_dynamic: Path,  # noqa: F811
) -> None:
    """The finishing thread is held inside one frame's result: the inference thread must go on
    detecting (the two overlap), yet stop a few batches ahead (one being tracked, one queued,
    one waiting to be queued), leaving the backlog to the latest-frame buffers (frames
    dropped, not queued); every camera's frames stay in order."""
    video = require("videos/bottle-detection.mp4")
    cameras = [file_camera(c, video) for c in CAMERAS[:2]]
    wire = yolox_worker_config("p", "g", [cameras], yolox_dynamic)
    wire["detector"]["model"]["artifact"]["uri"] = f"file://{yolox_dynamic}"
    metrics = WorkerMetrics("p")
    indices: dict[str, list[int]] = defaultdict(list)
    seen: dict[str, object] = {}

    def dropped() -> float:
        return sum(metrics.frames_dropped_total(c["name"]) for c in cameras)

    def within(condition: Callable[[], bool], seconds: float) -> bool:
        try:
            return wait_for(condition, timeout=seconds, what="", interval=0.01)
        except WaitTimeout:
            return False

    def on_result(result: FrameResult) -> None:
        indices[result.frame.camera].append(result.frame.index)
        if seen:
            return
        seen["held"] = True
        base, dropped_before = _batches(metrics), dropped()
        seen["overlapped"] = within(lambda: _batches(metrics) > base, 30)
        seen["dropped"] = within(lambda: dropped() > dropped_before, 30)
        seen["ahead"] = _batches(metrics) - base

    options = RuntimeOptions(capture=CaptureOptions(loop=True), threads=1)
    runtime = WorkerRuntime(
        WorkerConfig.model_validate(wire), 0, metrics, Health(), FanOut([], "p"), options, on_result
    )
    runtime.start()
    try:
        wait_for(
            lambda: "ahead" in seen and all(len(indices[c["name"]]) > 5 for c in cameras),
            timeout=120,
            what="results after the held one",
        )
    finally:
        runtime.stop()
    assert seen["overlapped"], "no batch was detected while the last one was being tracked"
    assert seen["dropped"], "the held lane's cameras dropped no frames"
    assert isinstance(seen["ahead"], int)
    assert seen["ahead"] <= 3  # one tracked, awaiting its publishing; one queued; one waiting
    for camera, frames in indices.items():
        assert frames == sorted(set(frames)), f"{camera}: frames out of order"


def test_the_classifier_answers_a_batch_while_the_next_is_tracked(
    yolox_dynamic: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a batch waiting, the finishing thread tracks it before it waits for the classifier's
    answers to the last one (on a GPU the classifier then runs while the host tracks), and
    still publishes every frame with labels for its own tracks, in order."""
    video = require("videos/bottle-detection.mp4")
    wire = yolox_worker_config(
        "p", "g", [[file_camera(c, video) for c in CAMERAS[:2]]], yolox_dynamic
    )
    wire["detector"]["model"]["artifact"]["uri"] = f"file://{yolox_dynamic}"
    wire["classifier"] = _mobilenet(refresh_frames=1)
    metrics = WorkerMetrics("p")
    lock = threading.Lock()
    tracked = [0]
    overlaps: list[bool] = []
    indices: dict[str, list[int]] = defaultdict(list)
    strays: list[str] = []
    submit = CropClassifier.submit

    def counting_submit(
        self: CropClassifier, requests: Sequence[tuple[Pixels, FloatArray]]
    ) -> Pending[list[Labelled]]:
        pending = submit(self, requests)
        asked_after = tracked[0]

        def result() -> list[Labelled]:
            with lock:
                overlaps.append(tracked[0] > asked_after)  # another batch tracked meanwhile
            return pending.result()

        return Pending(result)

    monkeypatch.setattr(CropClassifier, "submit", counting_submit)

    def on_stage(stage: str, seconds: float) -> None:
        del seconds
        with lock:
            tracked[0] += stage == "track"

    def on_result(result: FrameResult) -> None:
        indices[result.frame.camera].append(result.frame.index)
        if set(result.labels) - {int(t) for t in result.detections.track_ids}:
            strays.append(result.frame.camera)
        if len(indices[result.frame.camera]) == 3:  # hold the finishing thread: a backlog forms
            base = _batches(metrics)
            wait_for(lambda: _batches(metrics) >= base + 2, timeout=60, what="two batches formed")

    options = RuntimeOptions(
        capture=CaptureOptions(loop=True),
        threads=1,
        on_stage=on_stage,
        classifier_labels=require("models/imagenet_classes.txt"),
    )
    runtime = WorkerRuntime(
        WorkerConfig.model_validate(wire),
        0,
        metrics,
        Health(),
        FanOut([], "p"),
        options,
        on_result,
    )
    runtime.start()
    try:
        wait_for(
            lambda: any(overlaps),
            timeout=120,
            what="a classification waited for after the next batch was tracked",
        )
    finally:
        runtime.stop()
    assert not strays, f"labels for tracks not in the frame: {strays}"
    for camera, frames in indices.items():
        assert frames == sorted(set(frames)), f"{camera}: frames out of order"


def test_new_tracks_of_every_camera_in_a_batch_are_classified_together(
    yolox_dynamic: Path,  # noqa: F811
) -> None:
    """The finishing thread classifies the due tracks of all the batch's cameras in one call:
    each camera's results carry labels for its own live tracks only."""
    video = require("videos/bottle-detection.mp4")
    wire = yolox_worker_config(
        "p", "g", [[file_camera(c, video) for c in CAMERAS[:2]]], yolox_dynamic
    )
    wire["detector"]["model"]["batchMax"] = 2
    wire["detector"]["model"]["artifact"]["uri"] = f"file://{yolox_dynamic}"
    wire["classifier"] = _mobilenet(refresh_frames=30)
    lock = threading.Lock()
    labelled: dict[str, set[str]] = defaultdict(set)
    strays: list[str] = []

    def on_result(result: FrameResult) -> None:
        live = {int(t) for t in result.detections.track_ids}
        with lock:
            if set(result.labels) - live:
                strays.append(result.frame.camera)
            labelled[result.frame.camera].update(c.label for c in result.labels.values())

    metrics = WorkerMetrics("p")
    options = RuntimeOptions(
        capture=CaptureOptions(loop=True),
        threads=1,
        max_wait_seconds=0.05,
        classifier_labels=require("models/imagenet_classes.txt"),
    )
    runtime = WorkerRuntime(
        WorkerConfig.model_validate(wire), 0, metrics, Health(), FanOut([], "p"), options, on_result
    )
    runtime.start()
    try:
        wait_for(
            lambda: all(labelled[c] for c in CAMERAS[:2]),
            timeout=120,
            what="classified tracks from both cameras",
        )
    finally:
        runtime.stop()
    assert not strays, f"labels for tracks not in the frame: {strays}"


def _batches(metrics: WorkerMetrics) -> int:
    """Batches the inference thread has formed and sent to the detector."""
    count = metrics.registry.get_sample_value("kubevision_batch_size_count", {"pipeline": "p"})
    return int(count or 0)


def _mobilenet(refresh_frames: int) -> dict[str, object]:
    """The worker config's classifier: the INT8 MobileNetV2 of the assets."""
    classifier = require("models/mobilenetv2_12_int8.onnx")
    return {
        "model": {
            "variant": "mobilenetv2-int8-onnx",
            "family": "mobilenetv2",
            "task": "classify",
            "format": "onnx",
            "precision": "int8",
            "inputSize": {"width": 224, "height": 224},
            "batchMax": 16,
            "artifact": {"uri": f"file://{classifier}", "sha256": sha256_of(classifier)},
        },
        "refreshFrames": refresh_frames,
    }


@pytest.mark.parametrize(
    ("device", "lanes"), [("cpu", ["cpu"]), ("cpu, cpu", ["cpu", "cpu"]), ("cuda:1", ["cuda:1"])]
)
def test_devices_name_the_lanes(device: str, lanes: list[str]) -> None:
    assert resolve_devices(device) == lanes
