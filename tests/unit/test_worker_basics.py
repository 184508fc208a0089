"""Worker building blocks: the detections type, config loading/reload, model artifacts, probes."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kubevision.api.modelvariant import Artifact
from kubevision.worker.config import ConfigError, ConfigWatcher, load_config, my_cameras
from kubevision.worker.detections import NO_TRACK, Detections, box_iou
from kubevision.worker.health import Health, HealthServer
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.models import ArtifactError, ArtifactStore, resolve_artifact

# -- Detections -------------------------------------------------------------------------------


def three() -> Detections:
    return Detections(
        np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 40]], np.float32),
        np.array([0.9, 0.5, 0.7], np.float32),
        np.array([0, 1, 0]),
    )


def test_detections_start_untracked_and_index_by_mask_without_touching_the_original() -> None:
    d = three()
    assert d.track_ids.tolist() == [NO_TRACK] * 3
    people = d[d.class_ids == 0]
    assert len(people) == 2
    assert people.area.tolist() == [100.0, 200.0]
    people.xyxy[0, 0] = 99
    assert d.xyxy[0, 0] == 0, "indexing copies"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": np.zeros(2)}, "scores has 2 rows"),
        ({"class_ids": np.zeros(4)}, "class_ids has 4 rows"),
        ({"embeddings": np.zeros((2, 8))}, "embeddings must be"),
    ],
)
def test_detections_reject_mismatched_shapes(kwargs: dict[str, object], message: str) -> None:
    base = {"xyxy": np.zeros((3, 4)), "scores": np.zeros(3), "class_ids": np.zeros(3)}
    with pytest.raises(ValueError, match=message):
        Detections(**{**base, **kwargs})  # type: ignore[arg-type]


def test_box_iou_is_pairwise() -> None:
    d = three()
    iou = box_iou(d.xyxy, d.xyxy)
    assert iou.shape == (3, 3)
    assert np.allclose(np.diag(iou), 1)
    assert iou[0, 1] == pytest.approx(25 / 175)
    assert iou[0, 2] == 0
    assert box_iou(d.xyxy, np.empty((0, 4), np.float32)).shape == (3, 0)


def test_merge_and_empty() -> None:
    merged = Detections.merge([three(), Detections.empty(), three()])
    assert len(merged) == 6
    assert len(Detections.merge([])) == 0


# -- config -----------------------------------------------------------------------------------

CONFIG = {
    "pipeline": "p",
    "namespace": "ns",
    "group": "p-cpu",
    "hardwareClass": "cpu",
    "detector": {
        "model": {
            "variant": "v",
            "family": "yolox-nano",
            "task": "detect",
            "format": "onnx",
            "precision": "fp32",
            "inputSize": {"width": 416, "height": 416},
            "decoder": "yolox",
            "batchMax": 8,
            "artifact": {"uri": "file:///models/m.onnx", "sha256": "0" * 64},
        },
        "confidence": 0.3,
        "nmsIou": 0.45,
    },
    "tracker": {"type": "bytetrack"},
    "slo": {"p99LatencyMs": 100, "minFps": 5},
    "shards": [
        [
            {
                "name": "a",
                "url": "file:///a.mp4",
                "timeoutSeconds": 10,
                "fps": 10,
                "sampling": {"mode": "all"},
                "priority": 100,
            }
        ],
        [],
    ],
}


def test_config_loads_and_each_shard_gets_its_cameras(tmp_path: Path) -> None:
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(CONFIG))
    config = load_config(path)
    assert [c.name for c in my_cameras(config, 0)] == ["a"]
    assert my_cameras(config, 1) == []
    assert my_cameras(config, 7) == [], "a shard that no longer exists has no cameras"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ('{"pipeline": "p"}', "is invalid at"),
        (json.dumps({**CONFIG, "surprise": 1}), "is invalid at"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "worker.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_watcher_delivers_valid_changes_and_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(CONFIG))
    seen: list[int] = []
    watcher = ConfigWatcher(path, lambda c: seen.append(len(c.shards)))
    assert not watcher.check(), "an unchanged file is not a change"
    path.write_text(json.dumps({**CONFIG, "shards": [[]]}))
    assert watcher.check()
    path.write_text("{not json")
    assert not watcher.check()
    assert seen == [1]


# -- model artifacts ----------------------------------------------------------------------------


def test_artifact_is_found_in_the_model_dir_and_its_checksum_verified(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"model bytes")
    good = hashlib.sha256(b"model bytes").hexdigest()
    found = resolve_artifact(Artifact(uri="file:///models/m.onnx", sha256=good), [tmp_path])
    assert found == tmp_path / "m.onnx"
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        resolve_artifact(Artifact(uri="file:///models/m.onnx", sha256="1" * 64), [tmp_path])
    with pytest.raises(ArtifactError, match="no such file"):
        resolve_artifact(Artifact(uri="file:///models/other.onnx", sha256=good), [tmp_path])
    with pytest.raises(ArtifactError, match="gs:// artifacts are not fetched"):
        resolve_artifact(Artifact(uri="gs://bucket/m.onnx", sha256=good), [tmp_path])


def test_an_archive_on_a_read_only_models_volume_is_unpacked_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, cache = tmp_path / "models", tmp_path / "cache"
    models.mkdir()
    member = tmp_path / "model.xml"
    member.write_text("<net/>")
    archive = models / "m_openvino.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(member, arcname=member.name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    real_access = os.access

    def read_only_models(path: str | Path, mode: int) -> bool:
        return (
            mode != os.W_OK and real_access(path, mode)
            if Path(path) == models
            else (real_access(path, mode))
        )

    # the chart mounts /models read-only (a root test process could write a 0555 folder)
    monkeypatch.setattr("kubevision.worker.models.os.access", read_only_models)
    artifact = Artifact(uri="file:///models/m_openvino.tar", sha256=digest)
    found = ArtifactStore(cache_dir=cache, search=[models]).fetch(artifact)
    assert found.read_text() == "<net/>"
    assert found.is_relative_to(cache / "sha256" / digest)
    assert list(models.iterdir()) == [archive], "nothing written beside the archive"


# -- probes and metrics endpoint ----------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_follow_readiness_and_heartbeat() -> None:
    metrics = WorkerMetrics("p")
    metrics.camera("a").processed.inc(3)
    health = Health(stall_seconds=0.0)
    server = HealthServer(metrics.registry, health, port=0, host="127.0.0.1")
    server.start()
    try:
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert 'kubevision_frames_processed_total{camera="a",pipeline="p"} 3.0' in body
        assert get(server.port, "/readyz")[0] == 503
        assert get(server.port, "/healthz")[0] == 503, "no heartbeat within 0 s: stalled"
        live = Health(stall_seconds=60)
        live.set_ready(True)
        assert live.ready
        assert live.alive
    finally:
        server.stop()
