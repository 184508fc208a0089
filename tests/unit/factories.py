"""Realistic inputs for the operator's pure modules: the sample manifests, the model catalog
and the simulated nodes of ``tests/envtest`` turned into what the planner and builders take.

Plain functions rather than fixtures, so table-driven tests can call them inside parameters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubevision.api.camera import CameraSpec
from kubevision.api.modelvariant import HardwareClass, ModelVariantSpec
from kubevision.api.pipeline import PipelineSpec
from kubevision.operator.hardware import NodeInfo, node_info
from kubevision.operator.planner import Camera, GroupPlan, PipelinePlan, plan_pipeline
from kubevision.operator.selection import Choice, Variant
from kubevision.operator.sharding import Demand, plan_shards
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN, SimulatedNode

REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)

SAMPLE_SECRET_VALUES = ("viewer", "change-me")
"""The username and password of the sample camera's Secret (crds/samples/camera.yaml)."""


def manifests(relative: str, kind: str) -> list[dict[str, Any]]:
    """Every object of ``kind`` in the YAML files matching ``relative`` (a glob)."""
    out: list[dict[str, Any]] = []
    for path in sorted(REPO_ROOT.glob(relative)):
        with path.open() as f:
            out.extend(d for d in yaml.safe_load_all(f) if d and d.get("kind") == kind)
    return out


def catalog() -> list[Variant]:
    """The ModelVariants of ``model_catalog/variants`` (detectors, classifier and re-id)."""
    return [
        Variant(m["metadata"]["name"], ModelVariantSpec.model_validate(m["spec"]))
        for m in manifests("model_catalog/variants/*.yaml", "ModelVariant")
    ]


def sample_cameras() -> list[Camera]:
    """lobby and parking at site-a (lobby with a credentials Secret), loading-dock at site-b."""
    return [
        Camera(
            m["metadata"]["name"],
            dict(m["metadata"].get("labels") or {}),
            CameraSpec.model_validate(m["spec"]),
        )
        for m in manifests("crds/samples/camera.yaml", "Camera")
    ]


def sample_pipeline_body() -> dict[str, Any]:
    """The sample Pipeline as the operator receives it (with namespace and uid)."""
    (body,) = manifests("crds/samples/pipeline.yaml", "Pipeline")
    body["metadata"] |= {"namespace": "vision", "uid": "0b3c6c1e-6f1d-4d8e-9d55-6a1f0c2b7e11"}
    return body


def node(sim: SimulatedNode, *, ready: bool = True, unschedulable: bool = False) -> NodeInfo:
    """A simulated node as the operator's node index holds it (arch labels included)."""
    manifest = sim.manifest()
    spec = dict(manifest["spec"], unschedulable=unschedulable)
    status = sim.status(NOW)
    if not ready:
        status["conditions"] = [
            dict(c, status="False") if c["type"] == "Ready" else c for c in status["conditions"]
        ]
    return node_info(sim.name, manifest["metadata"]["labels"], spec, status)


def simulated_nodes() -> list[NodeInfo]:
    """The GPU server and CPU node of site-a and the Jetson of site-b, all Ready."""
    return [node(GPU_SERVER), node(JETSON_ORIN), node(CPU_NODE)]


def camera(
    name: str,
    *,
    site: str | None = "site-a",
    fps: float = 30,
    labels: Mapping[str, str] | None = None,
    paused: bool = False,
    secret: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Camera:
    """A Camera labelled for the sample Pipeline unless ``labels`` says otherwise."""
    source: dict[str, Any] = {"url": f"rtsp://{name}.example:554/stream"}
    if secret:
        source["credentialsSecretRef"] = {"name": secret}
    spec: dict[str, Any] = {"source": source, "fps": fps, "paused": paused, **(extra or {})}
    if site:
        spec["site"] = site
    chosen = {"kubevision.io/pipeline": "people"} if labels is None else dict(labels)
    return Camera(name, chosen, CameraSpec.model_validate(spec))


def pipeline_spec(**overrides: Any) -> PipelineSpec:
    """The sample Pipeline's spec with top-level fields replaced by ``overrides`` (camelCase)."""
    spec = sample_pipeline_body()["spec"]
    spec.update(overrides)
    return PipelineSpec.model_validate(spec)


def variant(
    name: str,
    *,
    family: str = "synthetic",
    task: str = "detect",
    accuracy: float | None = 0.3,
    targets: Iterable[Mapping[str, Any]] = (
        {"accelerator": "nvidia-gpu", "expectedFps": 1000, "p99LatencyMs": 20},
    ),
) -> Variant:
    """A ModelVariant with only what selection looks at spelled out."""
    spec: dict[str, Any] = {
        "family": family,
        "task": task,
        "format": "onnx",
        "precision": "fp32",
        "inputSize": {"width": 416, "height": 416},
        "artifact": {"uri": f"file:///models/{name}.onnx", "sha256": "0" * 64},
        "hardware": [dict(t) for t in targets],
    }
    if task == "detect":
        spec["decoder"] = "yolox"
    if accuracy is not None:
        spec["accuracy"] = {"metric": "mAP50-95", "value": accuracy, "dataset": "coco128"}
    return Variant(name, ModelVariantSpec.model_validate(spec))


def sample_plan() -> PipelinePlan:
    """The sample Pipeline planned over the sample Cameras, the catalog and simulated nodes."""
    body = sample_pipeline_body()
    return plan_pipeline(
        body["metadata"]["name"],
        PipelineSpec.model_validate(body["spec"]),
        sample_cameras(),
        catalog(),
        simulated_nodes(),
        previous={},
    )


def group(
    hardware: HardwareClass,
    *,
    site: str | None = "site-a",
    cameras: Iterable[Camera] = (),
    detector: Variant | None = None,
    classifier: Variant | None = None,
    name: str | None = None,
) -> GroupPlan:
    """A GroupPlan built by hand, for builder tests that need a class the sample lacks."""
    cams = list(cameras) or [camera("cam-1", site=site)]
    chosen = detector or next(v for v in catalog() if v.name == "yolox-nano-416-onnx-fp32")
    target = chosen.spec.target(hardware)
    assert target is not None, f"{chosen.name} has no {hardware} target"
    helper = None
    if classifier is not None:
        helper_target = classifier.spec.target(hardware)
        assert helper_target is not None
        helper = Choice(classifier, helper_target)
    default_name = f"people-{site}-{hardware}" if site else f"people-{hardware}"
    return GroupPlan(
        name=name or default_name,
        site=site,
        hardware=hardware,
        detector=Choice(chosen, target),
        cameras={c.name: c for c in cams},
        shards=plan_shards(
            [Demand(c.name, c.spec.effective_fps) for c in cams],
            replica_fps=target.expected_fps * 0.8,
            min_replicas=1,
            max_replicas=8,
            previous={},
        ),
        classifier=helper,
    )


def assignments(plan: PipelinePlan) -> dict[str, tuple[str, int]]:
    """camera -> (group, shard) over a whole Pipeline plan."""
    return {
        cam: (g.name, shard)
        for g in plan.groups
        for shard, names in enumerate(g.shards.shards)
        for cam in names
    }
