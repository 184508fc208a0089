"""The generated CRDs, installed in the real API server, accept every shipped manifest and reject
invalid ones with a message that names the field to fix.

Each invalid manifest is a valid sample with exactly one thing changed or removed, so each case
exercises the one rule it is named after. Bounds, enums and patterns are enforced by the OpenAPI
schema (``spec.fps: Invalid value: 0: spec.fps in body should be greater than 0``); rules across
fields are CEL (``x-kubernetes-validations``) whose messages the cases match in part.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT

CRD_DIR = REPO_ROOT / "crds"
SAMPLE_DIR = CRD_DIR / "samples"
CATALOG_DIR = REPO_ROOT / "model_catalog" / "variants"
MANIFESTS = sorted([*SAMPLE_DIR.glob("**/*.yaml"), *CATALOG_DIR.glob("*.yaml")])

Manifest = dict[str, Any]


def documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of one file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def sample(path: Path, name: str) -> Manifest:
    """The kubevision.io object called ``name`` in ``path`` (camera.yaml also holds a Secret)."""
    for doc in documents(path):
        if doc["apiVersion"].startswith("kubevision.io/") and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"no kubevision.io object {name!r} in {path}")


def _parent(doc: Manifest, path: str) -> tuple[Any, str | int]:
    """The container holding the last segment of a dotted ``path`` and that key (or index)."""
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, int(last) if isinstance(node, list) else last


def edit(doc: Manifest, path: str, value: Any) -> Manifest:
    """A deep copy of ``doc`` with ``path`` (dots; digits index lists) set to ``value``."""
    out = copy.deepcopy(doc)
    node, key = _parent(out, path)
    node[key] = value
    return out


def remove(doc: Manifest, path: str) -> Manifest:
    """A deep copy of ``doc`` without ``path`` (which must exist)."""
    out = copy.deepcopy(doc)
    node, key = _parent(out, path)
    del node[key]
    return out


LOBBY = sample(SAMPLE_DIR / "camera.yaml", "lobby")  # rtsp, transport tcp, one zone
PARKING = sample(SAMPLE_DIR / "camera.yaml", "parking")  # file://, sampling everyN
LOADING_DOCK = sample(SAMPLE_DIR / "camera.yaml", "loading-dock")  # sampling motion
PIPELINE = sample(SAMPLE_DIR / "pipeline.yaml", "people")  # outputs: stdout, mqtt
MODEL = sample(SAMPLE_DIR / "modelvariant.yaml", "yolox-nano-416-onnx-fp32")
TRT_INT8 = sample(CATALOG_DIR / "yolox-nano.yaml", "yolox-nano-416-trt-int8")
CLASSIFIER = sample(CATALOG_DIR / "classifiers.yaml", "mobilenetv2-int8-onnx")
CLOUD = sample(SAMPLE_DIR / "cascade" / "cloud.yaml", "dock-cloud")  # spec.source: edge events

ENTRANCE = LOBBY["spec"]["zones"][0]
GATE = PARKING["spec"]["lines"][0]

INVALID = [
    # -- Camera ---------------------------------------------------------------------------------
    pytest.param(
        edit(LOBBY, "spec.source.url", "rtsp://admin:secret@lobby-cam.site-a.example/stream1"),
        ("spec.source.url: Invalid value", "must not carry a password", "credentialsSecretRef"),
        id="camera-url-with-password",
    ),
    pytest.param(
        edit(PARKING, "spec.source.url", "udp://239.0.0.1:1234"),
        (
            'spec.source.url: Invalid value: "udp://239.0.0.1:1234"',
            "should match '^(rtsp|rtsps|http|https|rtmp|rtmps|file|v4l2)://.+$'",
        ),
        id="camera-url-unsupported-scheme",
    ),
    pytest.param(
        edit(LOBBY, "spec.fps", 0),
        ("spec.fps: Invalid value: 0", "should be greater than 0"),
        id="camera-fps-zero",
    ),
    pytest.param(
        edit(LOBBY, "spec.fps", 241),
        ("spec.fps: Invalid value: 241", "should be less than or equal to 240"),
        id="camera-fps-above-bound",
    ),
    pytest.param(
        remove(PARKING, "spec.sampling.everyN"),
        ("spec.sampling.everyN: Invalid value", "is required with mode everyN"),
        id="sampling-everyN-mode-without-everyN",
    ),
    pytest.param(
        edit(PARKING, "spec.sampling.mode", "all"),
        ("spec.sampling.everyN: Invalid value", "and not allowed otherwise"),
        id="sampling-everyN-with-mode-all",
    ),
    pytest.param(
        edit(LOADING_DOCK, "spec.sampling.mode", "all"),
        (
            "spec.sampling.motionThreshold: Invalid value",
            "applies to modes motion and adaptive only",
        ),
        id="sampling-motionThreshold-with-mode-all",
    ),
    pytest.param(
        edit(LOADING_DOCK, "spec.sampling", {"mode": "adaptive", "minFps": 20, "maxFps": 5}),
        ("spec.sampling.minFps: Invalid value", "must not exceed spec.sampling.maxFps"),
        id="sampling-adaptive-minFps-above-maxFps",
    ),
    pytest.param(
        edit(PARKING, "spec.source.transport", "tcp"),
        ("spec.source.transport: Invalid value", "applies to rtsp:// and rtsps:// sources only"),
        id="camera-transport-on-file-source",
    ),
    pytest.param(
        edit(LOBBY, "spec.zones.0.points", [[0.1, 0.5], [0.4, 0.5]]),
        ("spec.zones[0].points: Invalid value: 2", "should have at least 3 items"),
        id="zone-with-two-points",
    ),
    pytest.param(
        edit(LOBBY, "spec.zones", [ENTRANCE, ENTRANCE]),
        ("spec.zones: Invalid value", "names must be unique"),
        id="zone-names-duplicated",
    ),
    pytest.param(
        edit(LOBBY, "spec.zones.0.points.0.0", 1.5),
        ("spec.zones[0].points[0][0]: Invalid value: 1.5", "should be less than or equal to 1"),
        id="zone-point-coordinate-above-one",
    ),
    pytest.param(
        edit(LOADING_DOCK, "spec.sampling.minFps", 2),
        ("spec.sampling.mode: Invalid value", "minFps/maxFps apply to mode adaptive only"),
        id="sampling-minFps-with-mode-motion",
    ),
    pytest.param(
        edit(PARKING, "spec.lines", [GATE, GATE]),
        ("spec.lines: Invalid value", "names must be unique"),
        id="line-names-duplicated",
    ),
    # -- Pipeline -------------------------------------------------------------------------------
    pytest.param(
        edit(PIPELINE, "spec.autoscaling.minReplicas", 9),
        (
            "spec.autoscaling.minReplicas: Invalid value",
            "must not exceed spec.autoscaling.maxReplicas",
        ),
        id="pipeline-minReplicas-above-maxReplicas",
    ),
    pytest.param(
        edit(PIPELINE, "spec.stages.detector.variant", "yolox-nano-416-onnx-fp32"),
        ("spec.stages.detector: Invalid value", "set exactly one of variant"),
        id="detector-with-variant-and-family",
    ),
    pytest.param(
        remove(PIPELINE, "spec.stages.detector.family"),
        ("spec.stages.detector: Invalid value", "set exactly one of variant"),
        id="detector-with-neither-variant-nor-family",
    ),
    pytest.param(
        edit(PIPELINE, "spec.stages.tracker.type", "deepsort"),
        ("spec.stages.tracker.reid: Invalid value", "is required for deepsort"),
        id="tracker-deepsort-without-reid",
    ),
    pytest.param(
        remove(PIPELINE, "spec.outputs.1.topic"),
        ("spec.outputs[1].topic: Invalid value", "is required for mqtt and kafka outputs"),
        id="output-mqtt-without-topic",
    ),
    pytest.param(
        edit(PIPELINE, "spec.outputs.1", {"type": "kafka", "url": "https://b:9092", "topic": "e"}),
        ("spec.outputs[1].url: Invalid value", "url of a kafka output is kafka://host:port"),
        id="output-kafka-with-an-http-url",
    ),
    pytest.param(
        edit(PIPELINE, "spec.outputs.1", {"type": "webhook"}),
        ("spec.outputs[1].url: Invalid value", "is required for webhook, mqtt and kafka"),
        id="output-webhook-without-url",
    ),
    pytest.param(
        edit(PIPELINE, "spec.outputs.1.url", "mqtt://kubevision:secret@mosquitto.messaging:1883"),
        ("spec.outputs[1].url: Invalid value", "must not carry a password"),
        id="output-url-with-password",
    ),
    pytest.param(
        edit(CLOUD, "spec.stages.detector", {"family": "yolox-nano"}),
        ("spec.stages.detector: Invalid value", "not allowed with spec.source"),
        id="cascade-with-a-detector",
    ),
    pytest.param(
        remove(PIPELINE, "spec.stages.detector"),
        ("spec.stages.detector: Invalid value", "is required for a Pipeline of Cameras"),
        id="pipeline-of-cameras-without-a-detector",
    ),
    pytest.param(
        remove(CLOUD, "spec.stages.classifier"),
        ("spec.stages.classifier: Invalid value", "is required with spec.source"),
        id="cascade-without-a-classifier",
    ),
    pytest.param(
        edit(CLOUD, "spec.rollout", {"candidate": {"variant": "x"}}),
        ("spec.source: Invalid value", "not allowed with spec.source"),
        id="cascade-with-a-rollout",
    ),
    pytest.param(
        edit(CLOUD, "spec.source.url", "mqtt://user:pw@mosquitto.messaging:1883"),
        ("spec.source.url: Invalid value", "^(mqtt|tcp|kafka)://[^/@]+/?$"),
        id="cascade-source-with-credentials",
    ),
    pytest.param(
        edit(PIPELINE, "metadata.name", "p" * 41),
        ("metadata.name must be at most 40 characters",),
        id="pipeline-name-over-40-characters",
    ),
    pytest.param(
        edit(PIPELINE, "spec.degradation.allowed", ["frameSkip", "resolution", "frameSkip"]),
        ("spec.degradation.allowed: Invalid value", "must not repeat a step"),
        id="degradation-step-repeated",
    ),
    pytest.param(
        edit(PIPELINE, "spec.degradation.allowed.1", "dropFrames"),
        (
            'spec.degradation.allowed[1]: Unsupported value: "dropFrames"',
            'supported values: "frameSkip"',
        ),
        id="degradation-step-unknown",
    ),
    pytest.param(
        edit(PIPELINE, "spec.stages.tracker.reid", {"variant": "person-reid-retail-0288"}),
        ("spec.stages.tracker.reid: Invalid value", "is required for deepsort and only allowed"),
        id="tracker-bytetrack-with-reid",
    ),
    pytest.param(
        remove(PIPELINE, "spec.stages.classifier.variant"),
        ("spec.stages.classifier: Invalid value", "set exactly one of variant"),
        id="classifier-with-neither-variant-nor-family",
    ),
    pytest.param(
        edit(PIPELINE, "spec.outputs.1", {"type": "file"}),
        ("spec.outputs[1].path: Invalid value", "is required for file outputs"),
        id="output-file-without-path",
    ),
    pytest.param(
        edit(PIPELINE, "spec.outputs.1", {"type": "stdout"}),
        ("spec.outputs: Invalid value", "may contain at most one stdout output"),
        id="output-stdout-twice",
    ),
    # -- ModelVariant ---------------------------------------------------------------------------
    pytest.param(
        edit(MODEL, "spec.artifact.endpoint", "http://minio.storage:9000"),
        ("spec.artifact: Invalid value", "endpoint and credentialsSecretRef are only for s3://"),
        id="modelvariant-s3-endpoint-on-a-file-artifact",
    ),
    pytest.param(
        remove(TRT_INT8, "spec.calibration"),
        ("spec.calibration: Invalid value", "INT8 TensorRT/OpenVINO/Triton variants must name"),
        id="modelvariant-int8-tensorrt-without-calibration",
    ),
    pytest.param(
        edit(MODEL, "spec.artifact.sha256", "695E750A5D5754BB"),
        (
            'spec.artifact.sha256: Invalid value: "695E750A5D5754BB"',
            "should match '^[a-f0-9]{64}$'",
        ),
        id="modelvariant-bad-sha256",
    ),
    pytest.param(
        edit(MODEL, "spec.format", "triton"),
        ("spec.artifact.uri: Invalid value", "uses triton:// exactly when spec.format is triton"),
        id="modelvariant-triton-with-file-uri",
    ),
    pytest.param(
        edit(MODEL, "spec.artifact.uri", "triton://yolox-nano"),
        ("spec.artifact.uri: Invalid value", "uses triton:// exactly when spec.format is triton"),
        id="modelvariant-onnx-with-triton-uri",
    ),
    pytest.param(
        edit(MODEL, "spec.tracking.lowScore", 0.5),
        ("spec.tracking: Invalid value", "lowScore < highScore <= newTrackScore"),
        id="modelvariant-tracking-low-above-high",
    ),
    pytest.param(
        edit(
            CLASSIFIER, "spec.tracking", {"highScore": 0.3, "lowScore": 0.1, "newTrackScore": 0.3}
        ),
        ("spec.tracking: Invalid value", "only allowed on detect models"),
        id="modelvariant-tracking-on-a-classifier",
    ),
    pytest.param(
        remove(MODEL, "spec.artifact.sha256"),
        ("spec.artifact.sha256: Invalid value", "is required for files"),
        id="modelvariant-file-without-sha256",
    ),
    pytest.param(
        edit(MODEL, "spec.batch.min", 16),
        ("spec.batch: Invalid value", "must satisfy min <= opt <= max"),
        id="modelvariant-batch-min-above-opt",
    ),
    pytest.param(
        edit(MODEL, "spec.batch.opt", 64),
        ("spec.batch: Invalid value", "must satisfy min <= opt <= max"),
        id="modelvariant-batch-opt-above-max",
    ),
    pytest.param(
        remove(MODEL, "spec.decoder"),
        ("spec.decoder: Invalid value", "is required for detect models"),
        id="modelvariant-detect-without-decoder",
    ),
    pytest.param(
        edit(MODEL, "spec.hardware", []),
        ("spec.hardware: Invalid value: 0", "should have at least 1 items"),
        id="modelvariant-hardware-empty",
    ),
    pytest.param(
        edit(MODEL, "spec.hardware.1.accelerator", "cpu"),
        ("spec.hardware: Invalid value", "lists each accelerator at most once"),
        id="modelvariant-hardware-accelerator-duplicated",
    ),
    # -- rules added after the first review -------------------------------------------------------
    pytest.param(
        edit(LOBBY, "spec.source.url", "http://lobby-cam.site-a.example/video.cgi?user=a&pwd=s"),
        ("spec.source.url: Invalid value", "must not carry a password in its query"),
        id="camera-url-with-password-in-query",
    ),
    pytest.param(
        edit(
            PIPELINE,
            "spec.cameraSelector",
            {"matchExpressions": [{"key": "zone", "operator": "In"}]},
        ),
        ("spec.cameraSelector.matchExpressions[0].values", "must be non-empty for In"),
        id="selector-in-without-values",
    ),
    pytest.param(
        edit(PIPELINE, "spec.placement", {"tolerations": [{"operator": "Equal", "value": "x"}]}),
        ("spec.placement.tolerations[0].key", "need a key with operator Equal"),
        id="toleration-equal-without-key",
    ),
    pytest.param(
        edit(
            PIPELINE,
            "spec.placement",
            {"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 30}]},
        ),
        ("spec.placement.tolerations[0].tolerationSeconds", "effect NoExecute only"),
        id="toleration-seconds-without-noexecute",
    ),
    pytest.param(
        edit(PIPELINE, "spec.placement", {"hardwareClasses": ["cpu", "cpu"]}),
        ("spec.placement.hardwareClasses[1]", "Duplicate value"),
        id="hardware-classes-repeated",
    ),
    pytest.param(
        edit(CLASSIFIER, "spec.decoder", "yolox"),
        ("spec.decoder: Invalid value", "only allowed there"),
        id="decoder-on-a-classifier",
    ),
]


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> list[str]:
    """Install the generated CRDs (not the samples below crds/) and wait until they are served."""
    kubectl = cluster.control_plane.kubectl
    # --force-conflicts: these files win even if another test (the chart) created the CRDs first
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    names = [doc["metadata"]["name"] for path in CRD_DIR.glob("*.yaml") for doc in documents(path)]
    for name in names:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return names


def test_all_three_crds_are_installed(crds: list[str]) -> None:
    assert sorted(crds) == [
        "cameras.kubevision.io",
        "modelvariants.kubevision.io",
        "pipelines.kubevision.io",
    ]


@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_the_api_server_stores_each_schema_as_written(
    cluster: LocalCluster, crds: list[str], path: Path
) -> None:
    """A keyword the API server drops (``const``) makes the stored CRD differ from the file, and
    the next server-side apply of the same file by another manager (Helm) fails on a conflict."""
    (crd,) = documents(path)
    live = cluster.control_plane.kubectl("get", "crd", crd["metadata"]["name"], "-o", "json")
    assert json.loads(live.stdout)["spec"]["versions"] == crd["spec"]["versions"]


@pytest.mark.parametrize(
    "manifest", MANIFESTS, ids=[str(p.relative_to(REPO_ROOT)) for p in MANIFESTS]
)
def test_shipped_manifest_is_accepted(
    cluster: LocalCluster, crds: list[str], namespace: str, manifest: Path
) -> None:
    out = cluster.control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(manifest), check=False
    )
    assert out.returncode == 0, out.stderr


def test_pipeline_name_of_exactly_40_characters_is_accepted(
    cluster: LocalCluster, crds: list[str], namespace: str
) -> None:
    longest = edit(PIPELINE, "metadata.name", "p" * 40)
    out = cluster.control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(longest),
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("manifest", "expected"), INVALID)
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: LocalCluster,
    crds: list[str],
    namespace: str,
    manifest: Manifest,
    expected: tuple[str, ...],
) -> None:
    out = cluster.control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert out.returncode != 0, f"accepted:\n{yaml.safe_dump(manifest)}"
    for text in expected:
        assert text in out.stderr
