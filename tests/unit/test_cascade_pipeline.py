"""A Pipeline with spec.source (the cloud half of a cascade): what it may hold, how it is
planned and what the operator renders for it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubevision.api.camera import CameraSpec
from kubevision.api.pipeline import PipelineSpec
from kubevision.api.worker_config import CASCADE_CONFIG_FILE, CascadeConfig
from kubevision.operator import conditions
from kubevision.operator.builders import (
    build_cascade_config,
    build_configmap,
    build_statefulset,
)
from kubevision.operator.planner import group_name, plan_pipeline
from kubevision.operator.settings import OperatorSettings
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.nodes import CPU_NODE
from tests.unit.factories import catalog, node, sample_cameras, simulated_nodes

SAMPLES = REPO_ROOT / "crds" / "samples" / "cascade"
BODY = {"metadata": {"name": "dock-cloud", "namespace": "vision", "uid": "u-1"}}


def cloud_spec(**overrides: Any) -> PipelineSpec:
    spec = yaml.safe_load((SAMPLES / "cloud.yaml").read_text())["spec"]
    spec.update(overrides)
    return PipelineSpec.model_validate(spec)


def test_the_samples_are_valid_pipelines() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((SAMPLES / "edge.yaml").read_text())}
    edge = PipelineSpec.model_validate(docs["Pipeline"]["spec"])
    assert edge.source is None
    assert edge.snapshots is not None
    assert edge.snapshots.storage == "inline"
    assert cloud_spec().source is not None
    # the motion gate the edge sample speaks of is its Camera's sampling, selected by it
    camera = CameraSpec.model_validate(docs["Camera"]["spec"])
    assert camera.sampling.mode == "motion"
    selector = docs["Pipeline"]["spec"]["cameraSelector"]["matchLabels"]
    assert selector.items() <= docs["Camera"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": {"detector": {"family": "yolox-nano"}, "classifier": {"family": "m"}}},
         "not allowed with spec.source"),
        ({"stages": {}}, "spec.stages.classifier is required with spec.source"),
        ({"rollout": {"candidate": {"variant": "x"}, "cohort": {"percent": 10}}},
         "not allowed with spec.source"),
    ],
)  # fmt: skip
def test_a_cascade_pipeline_takes_only_what_applies_to_events(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        cloud_spec(**change)


def test_a_pipeline_of_cameras_still_needs_a_detector() -> None:
    with pytest.raises(ValidationError, match=re.escape("spec.stages.detector is required")):
        PipelineSpec.model_validate({"stages": {"classifier": {"family": "mobilenetv2"}}})


def test_a_cascade_is_one_workload_on_the_first_class_with_nodes_and_cameras_are_ignored() -> None:
    plan = plan_pipeline(
        "dock-cloud", cloud_spec(), sample_cameras(), catalog(), simulated_nodes(), {}
    )
    assert plan.cascade
    assert plan.problems == []
    assert plan.selected == 0, "a cascade selects no Camera, even with an empty selector"
    (group,) = plan.groups
    assert group.name == group_name("dock-cloud", None, "nvidia-gpu")
    assert group.detector is None
    assert group.cameras == {}
    assert group.classifier is not None
    assert group.main_model.variant.spec.family == "mobilenetv2"
    assert group.shards.replicas == 1, "an MQTT source is one persistent session"


def test_a_kafka_source_runs_min_replicas_consumers_of_one_group() -> None:
    spec = cloud_spec(
        source={"url": "kafka://kafka.messaging:9092", "topic": "edge"},
        autoscaling={"minReplicas": 3, "maxReplicas": 6},
    )
    (group,) = plan_pipeline("dock-cloud", spec, [], catalog(), simulated_nodes(), {}).groups
    assert group.shards.replicas == 3
    config = build_cascade_config("dock-cloud", "vision", spec, group)
    assert config.source.group == "vision.dock-cloud", "replicas share the namespace's group"


def test_no_node_or_no_classifier_variant_is_said() -> None:
    none = plan_pipeline("dock-cloud", cloud_spec(), [], catalog(), [], {})
    assert [p.reason for p in none.problems] == [conditions.NO_SCHEDULABLE_NODES]
    spec = cloud_spec(stages={"classifier": {"family": "no-such-family"}})
    missing = plan_pipeline("dock-cloud", spec, [], catalog(), [node(CPU_NODE)], {})
    assert [p.reason for p in missing.problems] == [conditions.NO_MATCHING_VARIANT]
    assert "no classifier variant of family no-such-family" in missing.problems[0].message


def test_the_workload_runs_the_cascade_mode_with_its_config_and_spool() -> None:
    spec = cloud_spec(placement={"hardwareClasses": ["cpu"]})
    (group,) = plan_pipeline("dock-cloud", spec, [], catalog(), simulated_nodes(), {}).groups
    config = build_cascade_config("dock-cloud", "vision", spec, group)
    configmap = build_configmap(BODY, config, group)
    (key,) = configmap["data"]
    assert key == CASCADE_CONFIG_FILE
    rendered = CascadeConfig.model_validate(json.loads(configmap["data"][key]))
    assert rendered.source.url == "mqtt://mosquitto.messaging:1883"
    assert rendered.source.group == "vision.dock-cloud"
    assert rendered.classifier.variant == "mobilenetv2-int8-onnx"
    assert len(rendered.classifier.labels) == 1000, "the catalog's classifier names its classes"
    assert [o.type for o in rendered.outputs] == ["kafka"]
    assert rendered.spool.storage == "disk"
    statefulset = build_statefulset(BODY, spec, group, OperatorSettings())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "cascade",
        f"--config=/etc/kubevision/{CASCADE_CONFIG_FILE}",
        "--spool-dir=/var/spool/kubevision",
    ]
    assert statefulset["spec"]["replicas"] == 1
