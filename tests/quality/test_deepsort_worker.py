"""DeepSORT as the worker runs it: a Pipeline whose tracker stage is deepsort with the catalog's
re-id variant (person-reid-retail-0288, fetched and sha256-checked like any model), on MOT17-04's
busy street (real 1080p frames). People get tracks with ids of their own, the tracker stage is
timed, and the worker reports the re-id model it runs."""

from __future__ import annotations

from pathlib import Path

from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import sha256_of
from tests.assets import require
from tests.integration.helpers import events_until, file_camera, mot17_clip, yolox_worker_config
from tests.unit.factories import manifests


def reid_model() -> dict[str, object]:
    """The catalog's re-id variant as a worker config names it, pointing at the shared file."""
    variant = next(
        m
        for m in manifests("model_catalog/variants/classifiers.yaml", "ModelVariant")
        if m["spec"]["task"] == "reid"
    )
    path = require("models/person_reid_retail_0288.onnx")
    spec = variant["spec"]
    assert spec["artifact"]["sha256"] == sha256_of(path), "the catalog's checksum is the file's"
    return {
        "variant": variant["metadata"]["name"],
        "family": spec["family"],
        "task": "reid",
        "format": spec["format"],
        "precision": spec["precision"],
        "inputSize": spec["inputSize"],
        "batchMax": 1,
        "artifact": {"uri": path.resolve().as_uri(), "sha256": spec["artifact"]["sha256"]},
    }


def test_a_deepsort_pipeline_tracks_people_with_appearance(tmp_path: Path) -> None:
    clip = mot17_clip(tmp_path / "street.mp4")
    detector = require("models/yolox_nano_416.onnx")
    wire = yolox_worker_config("p", "g", [[file_camera("street", clip)]], detector)
    wire["detector"]["model"]["artifact"]["uri"] = detector.resolve().as_uri()
    wire["tracker"] = {"type": "deepsort", "reid": {"variant": "person-reid-retail-0288"}}
    wire["reid"] = reid_model()
    metrics = WorkerMetrics("p")
    started, _ = events_until(
        wire,
        metrics,
        lambda seen: [e for e in seen if e.kind == "track.started"][:10] or None,
        what="ten tracks started by DeepSORT",
    )
    assert len(started) == 10
    assert {e.class_name for e in started} >= {"person"}
    assert len({e.track_id for e in started}) == 10, "every track has its own id"
    tracked = metrics.registry.get_sample_value(
        "kubevision_stage_latency_seconds_count", {"pipeline": "p", "stage": "track"}
    )
    assert tracked is not None
    assert tracked > 0
    running = {e["role"]: e["running"] for e in metrics.model_status()}
    assert running["reid"] == "person-reid-retail-0288"
