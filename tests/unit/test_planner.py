"""Planning a Pipeline: which cameras, grouped how, on which hardware, and why some are unserved."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from kubevision.api.modelvariant import HardwareClass
from kubevision.operator import conditions
from kubevision.operator.hardware import NodeInfo
from kubevision.operator.planner import Camera, PipelinePlan, group_name, plan_pipeline
from kubevision.operator.selection import Variant
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN
from tests.unit.factories import (
    assignments,
    camera,
    catalog,
    node,
    pipeline_spec,
    sample_cameras,
    sample_plan,
    simulated_nodes,
    variant,
)

PIPELINE_40 = "a-pipeline-name-of-the-longest-length-40"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def plan(
    cameras: list[Camera],
    *,
    nodes: list[NodeInfo] | None = None,
    variants: list[Variant] | None = None,
    previous: dict[str, dict[str, int]] | None = None,
    pipeline: str = "people",
    **spec: Any,
) -> PipelinePlan:
    return plan_pipeline(
        pipeline,
        pipeline_spec(**spec),
        cameras,
        catalog() if variants is None else variants,
        simulated_nodes() if nodes is None else nodes,
        previous or {},
    )


def reasons(result: PipelinePlan) -> list[str]:
    return [p.reason for p in result.problems]


def relabel(info: NodeInfo, **labels: str) -> NodeInfo:
    return dataclasses.replace(info, labels={**info.labels, **labels})


def test_sample_pipeline_groups_by_site_and_hardware() -> None:
    result = sample_plan()
    assert result.problems == []
    assert result.selected == 3
    assert [(g.name, g.site, g.hardware) for g in result.groups] == [
        (group_name("people", "site-a", "nvidia-gpu"), "site-a", "nvidia-gpu"),
        (group_name("people", "site-b", "jetson"), "site-b", "jetson"),
    ]
    assert assignments(result) == {
        "lobby": (group_name("people", "site-a", "nvidia-gpu"), 0),
        "parking": (group_name("people", "site-a", "nvidia-gpu"), 0),
        "loading-dock": (group_name("people", "site-b", "jetson"), 0),
    }
    for g in result.groups:
        assert g.main_model.variant.name == "yolox-nano-416-trt-fp16"
        assert g.classifier is not None
        assert g.classifier.variant.name == "mobilenetv2-int8-onnx"
        assert g.reid is None
        assert g.pose is None


@pytest.mark.parametrize(
    ("extra", "selected"),
    [
        pytest.param(camera("paused", paused=True), 3, id="paused-camera"),
        pytest.param(
            camera("other", labels={"kubevision.io/pipeline": "cars"}), 3, id="unlabelled"
        ),
        pytest.param(camera("fresh"), 4, id="matching-camera"),
    ],
)
def test_only_selected_unpaused_cameras_are_planned(extra: Camera, selected: int) -> None:
    result = plan([*sample_cameras(), extra])
    assert result.selected == selected
    assert (extra.name in assignments(result)) is (selected == 4)
    assert result.problems == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param({}, {"a", "b", "c"}, id="empty-selects-all"),
        pytest.param({"matchLabels": {"zone": "east"}}, {"a", "b"}, id="match-labels"),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["east"]}]},
            {"c"},
            id="not-in",
        ),
        pytest.param(
            {
                "matchLabels": {"zone": "east"},
                "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}],
            },
            {"a"},
            id="labels-and-expressions",
        ),
    ],
)
def test_camera_selector(selector: dict[str, Any], expected: set[str]) -> None:
    cams = [
        camera("a", labels={"zone": "east"}),
        camera("b", labels={"zone": "east", "tier": "gold"}),
        camera("c", labels={"zone": "west"}),
    ]
    result = plan(cams, cameraSelector=selector)
    assert set(assignments(result)) == expected
    assert result.selected == len(expected)


@pytest.mark.parametrize(
    ("classes", "site", "nodes", "expected"),
    [
        pytest.param(
            None,
            "site-a",
            None,
            (group_name("people", "site-a", "nvidia-gpu"), "nvidia-gpu"),
            id="gpu",
        ),
        pytest.param(
            None,
            "site-b",
            None,
            (group_name("people", "site-b", "jetson"), "jetson"),
            id="jetson-only",
        ),
        pytest.param(
            None, None, None, (group_name("people", None, "nvidia-gpu"), "nvidia-gpu"), id="no-site"
        ),
        pytest.param(
            ["cpu", "nvidia-gpu"],
            "site-a",
            None,
            (group_name("people", "site-a", "cpu"), "cpu"),
            id="cpu-first",
        ),
        pytest.param(
            ["jetson", "cpu"],
            "site-a",
            None,
            (group_name("people", "site-a", "cpu"), "cpu"),
            id="skip-absent",
        ),
        pytest.param(
            None,
            "site-a",
            [node(GPU_SERVER, unschedulable=True), node(CPU_NODE)],
            (group_name("people", "site-a", "cpu"), "cpu"),
            id="cordoned-gpu",
        ),
        pytest.param(
            None,
            "site-a",
            [node(GPU_SERVER, ready=False), node(CPU_NODE)],
            (group_name("people", "site-a", "cpu"), "cpu"),
            id="gpu-not-ready",
        ),
        pytest.param(["jetson"], "site-a", None, None, id="class-absent-at-site"),
        pytest.param(None, "site-c", None, None, id="site-without-nodes"),
        pytest.param(None, "site-b", [node(JETSON_ORIN, ready=False)], None, id="jetson-down"),
    ],
)
def test_hardware_class_is_the_first_allowed_one_with_nodes_at_the_site(
    classes: list[HardwareClass] | None,
    site: str | None,
    nodes: list[NodeInfo] | None,
    expected: tuple[str, HardwareClass] | None,
) -> None:
    placement: dict[str, Any] = {"placement": {"hardwareClasses": classes}} if classes else {}
    result = plan([camera("cam", site=site)], nodes=nodes, **placement)
    if expected is None:
        assert result.groups == []
        assert reasons(result) == [conditions.NO_SCHEDULABLE_NODES]
        assert "cam:" in result.problems[0].message
        assert (site or "any site") in result.problems[0].message
    else:
        ((g),) = result.groups
        assert (g.name, g.hardware) == expected
        assert g.site == site
        assert result.problems == []


def test_placement_node_selector_restricts_the_nodes() -> None:
    result = plan(
        [camera("cam")],
        placement={"nodeSelector": {"node.kubernetes.io/instance-type": "c7i.4xlarge"}},
    )
    assert [g.hardware for g in result.groups] == ["cpu"]


def test_slo_met_only_on_a_later_class_moves_the_camera_there() -> None:
    # cpu is preferred, but its only detector has p99 40 ms > 30 ms
    result = plan(
        [camera("cam")],
        placement={"hardwareClasses": ["cpu", "nvidia-gpu"]},
        slo={"p99LatencyMs": 30, "minFps": 10},
    )
    assert [g.hardware for g in result.groups] == ["nvidia-gpu"]


@pytest.mark.parametrize(
    ("site", "objective"),
    [
        pytest.param("site-a", {"p99LatencyMs": 5}, id="latency-nobody-meets"),
        pytest.param("site-b", {"minFps": 240, "p99LatencyMs": 11}, id="jetson-too-slow"),
    ],
)
def test_impossible_slo_is_no_matching_variant(site: str, objective: dict[str, float]) -> None:
    result = plan([camera("cam", site=site)], slo=objective)
    assert result.groups == []
    assert result.selected == 1
    assert reasons(result) == [conditions.NO_MATCHING_VARIANT]
    assert "family yolox-nano" in result.problems[0].message


@pytest.mark.parametrize(
    ("stages", "stage"),
    [
        pytest.param(
            {
                "detector": {"family": "yolox-nano"},
                "classifier": {"family": "resnet-does-not-exist"},
            },
            "classifier",
            id="classifier-family-missing",
        ),
        pytest.param(
            {"detector": {"family": "yolox-nano"}, "pose": {"variant": "no-such-pose-model"}},
            "pose",
            id="pose-variant-missing",
        ),
        pytest.param(
            {
                "detector": {"family": "yolox-nano"},
                "tracker": {"type": "deepsort", "reid": {"family": "mobilenetv2"}},
            },
            "reid",
            id="reid-family-of-wrong-task",
        ),
    ],
)
def test_missing_helper_model_is_no_matching_variant(stages: dict[str, Any], stage: str) -> None:
    result = plan(sample_cameras(), stages=stages)
    assert result.groups == []
    assert result.selected == 3
    assert reasons(result) == [conditions.NO_MATCHING_VARIANT]
    message = result.problems[0].message
    assert f"no {stage} variant" in message
    assert group_name("people", "site-a", "nvidia-gpu") in message
    assert group_name("people", "site-b", "jetson") in message


def test_deepsort_gets_a_reid_model() -> None:
    result = plan(
        sample_cameras(),
        stages={
            "detector": {"family": "yolox-nano"},
            "tracker": {"type": "deepsort", "reid": {"family": "person-reid"}},
        },
    )
    assert result.problems == []
    assert [g.reid.variant.name if g.reid else None for g in result.groups] == [
        "person-reid-retail-0288",
        "person-reid-retail-0288",
    ]


def test_served_and_unserved_cameras_are_reported_together() -> None:
    result = plan([*sample_cameras(), camera("nowhere", site="site-c")])
    assert set(assignments(result)) == {"lobby", "parking", "loading-dock"}
    assert reasons(result) == [conditions.NO_SCHEDULABLE_NODES]
    assert result.problems[0].message.startswith("nowhere:")
    assert result.selected == 4


def test_more_load_than_max_replicas_is_no_capacity_but_every_camera_is_served() -> None:
    # cpu: 45 fps per replica at 80 % -> 36 fps; five 30 fps cameras need five replicas
    cams = [camera(f"cam-{i}") for i in range(5)]
    result = plan(
        cams,
        placement={"hardwareClasses": ["cpu"]},
        autoscaling={"minReplicas": 1, "maxReplicas": 2},
    )
    ((g),) = result.groups
    assert g.shards.overloaded
    assert g.shards.replicas == 2
    assert set(assignments(result)) == {c.name for c in cams}
    assert reasons(result) == [conditions.NO_CAPACITY]
    assert "maxReplicas=2" in result.problems[0].message


@pytest.mark.parametrize(
    ("sampling", "replicas"),
    [
        pytest.param(None, 3, id="all-frames"),
        pytest.param({"mode": "everyN", "everyN": 2}, 2, id="every-2nd-frame"),
        pytest.param({"mode": "adaptive", "maxFps": 12}, 1, id="adaptive-capped"),
    ],
)
def test_replicas_are_sized_by_frames_reaching_inference(
    sampling: dict[str, Any] | None, replicas: int
) -> None:
    # cpu replica: 36 fps; three 30 fps cameras
    extra = {"sampling": sampling} if sampling else None
    cams = [camera(f"cam-{i}", extra=extra) for i in range(3)]
    result = plan(cams, placement={"hardwareClasses": ["cpu"]})
    assert [g.shards.replicas for g in result.groups] == [replicas]


def test_previous_assignments_are_kept() -> None:
    group = group_name("people", "site-a", "nvidia-gpu")
    fresh = plan(sample_cameras(), autoscaling={"minReplicas": 2})
    assert assignments(fresh)["lobby"] == (group, 0)
    previous = {group: {"lobby": 1, "parking": 1}}
    again = plan(sample_cameras(), previous=previous, autoscaling={"minReplicas": 2})
    assert assignments(again)["lobby"] == (group, 1)
    assert assignments(again)["parking"] == (group, 1)


def test_planning_is_deterministic_whatever_the_index_order() -> None:
    cams = [*sample_cameras(), *(camera(f"extra-{i}", fps=25) for i in range(12))]
    first = plan(cams)
    assert plan(cams) == first
    assert plan(cams[::-1], variants=catalog()[::-1], nodes=simulated_nodes()[::-1]) == first


@pytest.mark.parametrize("hardware", ["nvidia-gpu", "jetson", "cpu"])
@pytest.mark.parametrize(
    "site",
    [None, "site-a", "warehouse-north-entrance", "s" * 63],
    ids=["no-site", "short-site", "long-site", "63-char-site"],
)
def test_group_names_fit_a_statefulset_for_40_char_pipelines(
    site: str | None, hardware: HardwareClass
) -> None:
    name = group_name(PIPELINE_40, site, hardware)
    assert len(PIPELINE_40) == 40
    assert len(name) <= 52
    assert DNS_LABEL.match(name), name
    assert name.startswith(PIPELINE_40)


def test_group_names_in_a_plan_of_a_40_char_pipeline() -> None:
    cams = [camera("a", site="site-a"), camera("b", site="site-b"), camera("c", site=None)]
    result = plan(cams, pipeline=PIPELINE_40)
    assert len(result.groups) == 3
    assert all(len(g.name) <= 52 and DNS_LABEL.match(g.name) for g in result.groups)


def test_group_name_of_a_short_pipeline_is_readable() -> None:
    assert group_name("people", "site-a", "nvidia-gpu").startswith("people-site-a-nvidia-gpu-")
    assert group_name("people", None, "cpu").startswith("people-cpu-")


def test_groups_of_a_40_char_pipeline_at_different_sites_have_different_names() -> None:
    cams = [camera("a", site="warehouse-north-1"), camera("b", site="warehouse-north-2")]
    nodes = [
        dataclasses.replace(node(CPU_NODE), name=f"cpu-{s}", site=s)
        for s in ("warehouse-north-1", "warehouse-north-2")
    ]
    result = plan(cams, pipeline=PIPELINE_40, nodes=nodes)
    assert len({g.name for g in result.groups}) == len(result.groups) == 2


def test_group_names_of_two_pipelines_never_collide() -> None:
    assert group_name("dock", "east-1", "cpu") != group_name("dock-east", "1", "cpu")


def test_classifier_is_chosen_only_for_nodes_the_workers_may_use() -> None:
    vision_h100 = relabel(node(GPU_SERVER), pool="vision")
    other_a100 = dataclasses.replace(
        relabel(node(GPU_SERVER), **{"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
        name="gpu-server-2",
    )
    a100_classifier = variant(
        "clf-a100-trt",
        family="clf",
        task="classify",
        targets=[
            {
                "accelerator": "nvidia-gpu",
                "expectedFps": 3000,
                "p99LatencyMs": 5,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            }
        ],
    )
    result = plan(
        [camera("cam")],
        nodes=[vision_h100, other_a100],
        variants=[*catalog(), a100_classifier],
        placement={"hardwareClasses": ["nvidia-gpu"], "nodeSelector": {"pool": "vision"}},
        stages={"detector": {"family": "yolox-nano"}, "classifier": {"family": "clf"}},
    )
    assert result.groups == []
    assert reasons(result) == [conditions.NO_MATCHING_VARIANT]
