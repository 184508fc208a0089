"""The pose stage on a real keypoint model (YOLOv8n-pose INT8, OpenVINO IR: AGPL test data from
the shared assets, never bundled), checked as ``model_catalog/tools/pose_eval.py`` describes:
against an independent re-implementation of Ultralytics' decode of the same model (OKS), and
against coco128's labelled person boxes. Then through the worker: keypoints reach the person
tracks' events. ``benchmarks/results/pose_stage.md`` has the full-size figures and the cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kubevision.api.modelvariant import Artifact, InputSize
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends import create_backend
from kubevision.worker.detections import Detections
from kubevision.worker.events import EventBuilder
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import ArtifactStore
from kubevision.worker.pose import KEYPOINTS, PoseEstimator, Poses
from model_catalog.tools.coco_eval import read_frame
from model_catalog.tools.ir_archive import archive
from model_catalog.tools.pose_eval import (
    ReferenceDecode,
    agreement,
    keypoints_inside,
    labelled_people,
    person_ap,
    person_images,
)
from tests.assets import require
from tests.integration.helpers import (
    events_until,
    file_camera,
    mot17_clip,
    yolox_worker_config,
)
from tests.unit.factories import manifests

POSE_XML = "models/yolov8n_agpl/yolov8n-pose_int8_openvino_model/yolov8n-pose.xml"
IMAGES = "coco128/images/val2017"
LABELS = "coco128/object_detection/labels/val2017"
COUNT = 24
"""Of coco128's 73 images with people (the benchmark takes all)."""


def pose_model(xml: Path) -> ModelConfig:
    return ModelConfig(
        variant="yolov8n-pose-640-openvino-int8",
        family="yolov8n-pose",
        task="pose",
        format="openvino",
        precision="int8",
        input_size=InputSize(width=640, height=640),
        batch_max=1,
        artifact=Artifact(uri=xml.resolve().as_uri()),
    )


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> PoseEstimator:
    """The model as the catalog ships it: one reproducible .tar of the IR, verified against
    the manifest's sha256 and unpacked by the worker's artifact store."""
    work = tmp_path_factory.mktemp("pose")
    sha = archive(require(POSE_XML).parent, work / "yolov8n-pose_int8_openvino.tar")
    manifest = next(
        m for m in manifests("model_catalog/variants/pose.yaml", "ModelVariant")
        if m["metadata"]["name"] == "yolov8n-pose-640-openvino-int8"
    )  # fmt: skip
    assert sha == manifest["spec"]["artifact"]["sha256"], "the catalog's checksum reproduces"
    artifact = Artifact(uri=(work / "yolov8n-pose_int8_openvino.tar").as_uri(), sha256=sha)
    xml = ArtifactStore(cache_dir=work / "cache").fetch(artifact)
    model = pose_model(xml)
    return PoseEstimator(model, create_backend(model, xml, intra_op_threads=2))


@pytest.fixture(scope="module")
def people() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, labelled person boxes) of the first coco128 images with people."""
    paths = person_images(require(IMAGES), require(LABELS))[:COUNT]
    frames = [read_frame(p) for p in paths]
    boxes = [
        labelled_people(require(LABELS) / f"{p.stem}.txt", f.shape[1], f.shape[0])
        for p, f in zip(paths, frames, strict=True)
    ]
    return frames, boxes


def test_keypoints_agree_with_the_reference_decode(
    estimator: PoseEstimator, people: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    frames, _ = people
    reference = ReferenceDecode(require(POSE_XML))
    ours = [estimator([f])[0] for f in frames]
    result = agreement(ours, [reference(f) for f in frames])
    assert result.people >= 50, "the images must hold real people"
    assert result.matched == result.people
    assert result.mean_oks >= 0.99, result
    assert result.min_oks >= 0.95, result
    assert all(p.keypoints.shape == (len(p), len(KEYPOINTS), 3) for p in ours)


def test_people_and_keypoints_against_the_labelled_boxes(
    estimator: PoseEstimator, people: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    frames, boxes = people
    ours = [estimator([f])[0] for f in frames]
    ap, ap50 = person_ap(ours, [(f.shape[1], f.shape[0]) for f in frames], boxes)
    assert ap >= 0.35, f"person box AP50-95 {ap:.3f}"
    assert ap50 >= 0.5, f"person box AP50 {ap50:.3f}"
    inside, total = keypoints_inside(ours, boxes)
    assert total > 500
    assert inside / total >= 0.97, f"{inside}/{total} visible keypoints inside their person"


def test_keypoints_reach_the_person_tracks_events(
    estimator: PoseEstimator, people: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    """A tracked person gets the pose whose box matches it; a non-person track gets none."""
    frames, _ = people
    frame = frames[0]
    found: Poses = estimator([frame])[0]
    assert len(found) > 0
    person_box = found.xyxy[0] + np.float32(2)  # a tracker's box is never the pose's exactly
    tracked = Detections(
        np.stack([person_box, np.array([0, 0, 10, 10], np.float32)]),
        np.array([0.9, 0.8], np.float32),
        np.array([0, 2]),  # person, car
        np.array([7, 8]),
    )
    keypoints = estimator.attach(tracked, found, person=0)
    assert set(keypoints) == {7}
    np.testing.assert_array_equal(keypoints[7], found.keypoints[0])
    builder = EventBuilder("p", "cam", ["person", "bicycle", "car"])
    events = builder.update(tracked, 1_700_000_000.0, keypoints=keypoints)
    wire = {e.track_id: json.loads(e.to_json()) for e in events}
    assert len(wire[7]["keypoints"]) == len(KEYPOINTS)
    x, y, _visibility = wire[7]["keypoints"][0]
    assert (x, y) == pytest.approx(tuple(found.keypoints[0][0][:2]), abs=0.06)
    assert "keypoints" not in wire[8]


def test_the_worker_attaches_keypoints_to_person_track_events(
    tmp_path: Path, estimator: PoseEstimator
) -> None:
    """A Pipeline with a pose stage, as the worker runs it: MOT17-04's busy street (real
    frames, 1080p) through detector, ByteTrack and the pose stage; person tracks' events carry
    17 keypoints inside their box, and the pose stage's latency is measured."""
    clip = mot17_clip(tmp_path / "street.mp4")
    detector_model = require("models/yolox_nano_416.onnx")
    wire = yolox_worker_config("p", "g", [[file_camera("street", clip)]], detector_model)
    wire["pose"] = estimator.model.model_dump(by_alias=True, mode="json")
    wire["detector"]["model"]["artifact"]["uri"] = detector_model.resolve().as_uri()
    metrics = WorkerMetrics("p")
    posed, events = events_until(
        wire,
        metrics,
        lambda seen: [e for e in seen if e.keypoints is not None][:5] or None,
        what="person track events with keypoints",
    )
    assert {e.class_name for e in posed} == {"person"}
    for event in posed:
        assert event.keypoints is not None
        x1, y1, x2, y2 = event.box
        points = np.array(event.keypoints)
        seen = points[:, 2] >= 0.5
        margin_x, margin_y = (x2 - x1) * 0.25, (y2 - y1) * 0.25
        assert seen.sum() >= 5, "a tracked pedestrian shows most of its keypoints"
        assert (points[seen, 0] >= x1 - margin_x).all()
        assert (points[seen, 0] <= x2 + margin_x).all()
        assert (points[seen, 1] >= y1 - margin_y).all()
        assert (points[seen, 1] <= y2 + margin_y).all()
    assert all(e.keypoints is None for e in events if e.class_name != "person")
    timed = metrics.registry.get_sample_value(
        "kubevision_stage_latency_seconds_count", {"pipeline": "p", "stage": "pose"}
    )
    assert timed is not None
    assert timed > 0, "the pose stage's latency is measured"
    running = {e["role"]: e["running"] for e in metrics.model_status()}
    assert running["pose"] == "yolov8n-pose-640-openvino-int8"
