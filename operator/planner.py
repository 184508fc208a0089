"""Planning a Pipeline: which cameras form which (site, hardware class) group, with which
variants and how many replicas. Pure code: the inputs are snapshots of the operator's indexes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubevision.api.camera import CameraSpec
from kubevision.api.modelvariant import HardwareClass, Task
from kubevision.api.pipeline import DegradationStep, DetectorStage, ModelRef, PipelineSpec
from kubevision.operator import conditions
from kubevision.operator.hardware import NodeInfo, nodes_for
from kubevision.operator.selection import (
    Choice,
    Variant,
    choose_variant,
    describe,
    smaller_variant,
)
from kubevision.operator.sharding import Demand, ShardPlan, plan_shards


@dataclass(frozen=True)
class Camera:
    """A Camera as the operator's index holds it."""

    name: str
    labels: dict[str, str]
    spec: CameraSpec


@dataclass(frozen=True)
class Problem:
    """Why some cameras of a Pipeline are not (fully) served."""

    reason: str
    message: str


@dataclass(frozen=True)
class GroupScaling:
    """The autoscaler's decision for a group: replicas and the degradation steps engaged."""

    replicas: int
    degradation: tuple[DegradationStep, ...] = ()
    scaled_by_metrics: bool = False
    """The autoscaler's decision raised replicas above the throughput estimate."""


@dataclass(frozen=True)
class GroupPlan:
    """One worker workload: cameras of one site on one hardware class."""

    name: str
    site: str | None
    hardware: HardwareClass
    detector: Choice | None
    """None for the workload of a cascade Pipeline (spec.source), which only classifies."""
    cameras: dict[str, Camera]
    shards: ShardPlan
    reid: Choice | None = None
    classifier: Choice | None = None
    pose: Choice | None = None
    degradation: tuple[DegradationStep, ...] = ()
    scaled_by_metrics: bool = False
    """The autoscaler's decision raised replicas above the throughput estimate."""
    track: Literal["canary"] | None = None
    """canary: the group runs a rollout's candidate (:mod:`.rollout`)."""
    detector_stage: DetectorStage | None = None
    """The detector thresholds the group runs when not spec.stages.detector's (a rollout's
    candidate)."""
    leaving: frozenset[str] = frozenset()
    """Cameras the group keeps only until their new group (the other side of a rollout) has
    taken them on: make-before-break between groups; their Camera status names the new one."""

    @property
    def main_model(self) -> Choice:
        """The detector, or a cascade workload's classifier: the variant status names."""
        choice = self.detector or self.classifier
        assert choice is not None  # planned with one of the two
        return choice


@dataclass(frozen=True)
class PipelinePlan:
    groups: list[GroupPlan] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    selected: int = 0
    """Cameras the selector matched and that are not paused."""
    cascade: bool = False
    """The plan of a Pipeline with spec.source: edge events, no Cameras."""


def group_name(
    pipeline: str, site: str | None, hardware: HardwareClass, track: str | None = None
) -> str:
    """The one place the name of a group's StatefulSet, ConfigMap and Service is made.

    Readable (pipeline, site, class) plus a short hash of exactly those three, because joining
    with "-" is ambiguous (pipeline "dock" at site "east-1" vs "dock-east" at "1") and long
    names must be cut: 52 characters is the longest StatefulSet name whose pods' labels fit.
    A rollout's canary groups (``track`` canary) get names of their own the same way.
    """
    readable = "-".join(part for part in (pipeline, site, hardware, track) if part)
    key = f"{pipeline}\0{site or ''}\0{hardware}" + (f"\0{track}" if track else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:5]
    return f"{readable[:46].rstrip('-')}-{digest}"


def plan_pipeline(
    pipeline: str,
    spec: PipelineSpec,
    cameras: Iterable[Camera],
    variants: Iterable[Variant],
    nodes: Iterable[NodeInfo],
    previous: Mapping[str, Mapping[str, int]],
    scaling: Mapping[str, GroupScaling] | None = None,
    track: Literal["canary"] | None = None,
) -> PipelinePlan:
    """Group the selected cameras, pick variants per group and shard them.

    ``previous`` maps group name -> camera -> shard from the ConfigMaps already applied, so
    cameras stay on their replica whenever they can; ``scaling`` holds the autoscaler's
    decisions by group name (groups without one are sized from expected throughput);
    ``track`` canary plans a rollout's canary groups (:mod:`.rollout`).
    """
    variant_list, node_list = list(variants), list(nodes)
    if spec.source is not None:
        return plan_cascade(pipeline, spec, variant_list, node_list)
    selected = [c for c in cameras if not c.spec.paused and spec.camera_selector.matches(c.labels)]
    members: dict[tuple[str | None, HardwareClass], list[Camera]] = {}
    detectors: dict[tuple[str | None, HardwareClass], Choice] = {}
    problems: dict[str, list[str]] = {}
    by_site: dict[str | None, tuple[tuple[str | None, HardwareClass], Choice] | Problem] = {}
    for cam in sorted(selected, key=lambda c: c.name):
        # a camera's placement depends on its site alone: once per site, not per camera
        # (10,000 cameras x 1,000 nodes made every plan a 10-million-step scan)
        site = cam.spec.site
        if site not in by_site:
            by_site[site] = _place_at_site(spec, site, variant_list, node_list)
        placed = by_site[site]
        if isinstance(placed, Problem):
            problems.setdefault(placed.reason, []).append(f"{cam.name}: {placed.message}")
            continue
        key, choice = placed
        members.setdefault(key, []).append(cam)
        detectors[key] = choice
    groups = []
    for (site, hardware), cams in sorted(
        members.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
    ):
        group = _plan_group(
            pipeline,
            spec,
            site,
            hardware,
            cams,
            detectors[(site, hardware)],
            variant_list,
            node_list,
            previous,
            (scaling or {}).get(group_name(pipeline, site, hardware, track)),
            track,
        )
        if isinstance(group, Problem):
            problems.setdefault(group.reason, []).append(group.message)
            continue
        if group.shards.overloaded:
            problems.setdefault(conditions.NO_CAPACITY, []).append(
                f"group {group.name} needs more than maxReplicas="
                f"{spec.autoscaling.max_replicas} replicas of {group.main_model.variant.name}"
            )
        groups.append(group)
    return PipelinePlan(
        groups=groups,
        problems=[Problem(reason, "; ".join(msgs)) for reason, msgs in sorted(problems.items())],
        selected=len(selected),
    )


def _allowed_nodes(
    spec: PipelineSpec, nodes: list[NodeInfo], site: str | None
) -> Iterator[tuple[HardwareClass, list[NodeInfo]]]:
    """Each allowed hardware class, in the Pipeline's order, that has schedulable nodes at
    ``site`` (None: any) matching spec.placement.nodeSelector, with those nodes."""
    for hardware in spec.placement.hardware_classes:
        group_nodes = [
            n for n in nodes_for(nodes, hardware, site) if n.matches(spec.placement.node_selector)
        ]
        if group_nodes:
            yield hardware, group_nodes


def plan_cascade(
    pipeline: str, spec: PipelineSpec, variants: list[Variant], nodes: list[NodeInfo]
) -> PipelinePlan:
    """One workload for a Pipeline with spec.source: on the first allowed hardware class that
    has nodes and a variant of spec.stages.classifier. Its replicas share a Kafka topic's
    partitions (spec.autoscaling.minReplicas of them); an MQTT source is one persistent
    session, so one replica."""
    classifier = spec.stages.classifier
    assert classifier is not None  # spec validation: a cascade Pipeline has one
    classes_with_nodes = []
    for hardware, group_nodes in _allowed_nodes(spec, nodes, None):
        classes_with_nodes.append(hardware)
        choice = choose_variant(classifier, "classify", hardware, group_nodes, variants)
        if choice is None:
            continue
        kafka = spec.source is not None and spec.source.url.startswith("kafka://")
        replicas = max(1, spec.autoscaling.min_replicas) if kafka else 1
        shards = ShardPlan([[] for _ in range(replicas)], False, replicas)
        group = GroupPlan(
            name=group_name(pipeline, None, hardware),
            site=None,
            hardware=hardware,
            detector=None,
            cameras={},
            shards=shards,
            classifier=choice,
        )
        return PipelinePlan(groups=[group], cascade=True)
    allowed = ", ".join(spec.placement.hardware_classes)
    if not classes_with_nodes:
        problem = Problem(
            conditions.NO_SCHEDULABLE_NODES, f"no schedulable node of class {allowed}"
        )
    else:
        problem = Problem(
            conditions.NO_MATCHING_VARIANT,
            f"no classifier variant of {describe(classifier)} runs on "
            f"{', '.join(classes_with_nodes)}",
        )
    return PipelinePlan(problems=[problem], cascade=True)


def _place_at_site(
    spec: PipelineSpec, site: str | None, variants: list[Variant], nodes: list[NodeInfo]
) -> tuple[tuple[str | None, HardwareClass], Choice] | Problem:
    """The first allowed hardware class at a camera's site (None: any) with a detector meeting
    the SLO."""
    classes_with_nodes = []
    for hardware, group_nodes in _allowed_nodes(spec, nodes, site):
        classes_with_nodes.append(hardware)
        choice = choose_variant(spec.detector, "detect", hardware, group_nodes, variants, spec.slo)
        if choice is not None:
            return (site, hardware), choice
    where = f"site {site}" if site else "any site"
    allowed = ", ".join(spec.placement.hardware_classes)
    if not classes_with_nodes:
        return Problem(
            conditions.NO_SCHEDULABLE_NODES, f"no schedulable node of class {allowed} at {where}"
        )
    named = spec.detector.variant
    if named and all(v.name != named for v in variants):
        return Problem(
            conditions.NO_MATCHING_VARIANT,
            f"ModelVariant {named} (spec.stages.detector.variant) does not exist",
        )
    return Problem(
        conditions.NO_MATCHING_VARIANT,
        f"no detector variant of {describe(spec.detector)} meets p99 <= "
        f"{spec.slo.p99_latency_ms:g} ms and >= {spec.slo.min_fps:g} fps on "
        f"{', '.join(classes_with_nodes)} at {where}",
    )


def _plan_group(
    pipeline: str,
    spec: PipelineSpec,
    site: str | None,
    hardware: HardwareClass,
    cams: list[Camera],
    detector: Choice,
    variants: list[Variant],
    nodes: list[NodeInfo],
    previous: Mapping[str, Mapping[str, int]],
    scaling: GroupScaling | None,
    track: Literal["canary"] | None = None,
) -> GroupPlan | Problem:
    name = group_name(pipeline, site, hardware, track)
    group_nodes = [
        n for n in nodes_for(nodes, hardware, site) if n.matches(spec.placement.node_selector)
    ]
    stages = spec.stages
    helper_stages: tuple[tuple[str, ModelRef | None, Task], ...] = (
        ("reid", stages.tracker.reid, "reid"),
        ("classifier", stages.classifier, "classify"),
        ("pose", stages.pose, "pose"),
    )
    helpers: dict[str, Choice | None] = {}
    for stage, ref, task in helper_stages:
        if ref is None:
            helpers[stage] = None
            continue
        choice = choose_variant(ref, task, hardware, group_nodes, variants)
        if choice is None:
            return Problem(
                conditions.NO_MATCHING_VARIANT,
                f"group {name}: no {stage} variant of {describe(ref)} runs on {hardware}",
            )
        helpers[stage] = choice
    degradation = scaling.degradation if scaling else ()
    if "smallerVariant" in degradation:
        detector = (
            smaller_variant(spec.detector, hardware, group_nodes, variants, detector) or detector
        )
    autoscaling = spec.autoscaling
    shards = plan_shards(
        [Demand(c.name, c.spec.effective_fps) for c in cams],
        replica_fps=detector.target.expected_fps * autoscaling.target_utilization,
        min_replicas=autoscaling.min_replicas,
        max_replicas=autoscaling.max_replicas,
        previous=previous.get(name, {}),
        streams_per_replica=autoscaling.streams_per_replica,
        fixed_replicas=scaling.replicas if scaling else None,
    )
    return GroupPlan(
        name=name,
        site=site,
        hardware=hardware,
        detector=detector,
        cameras={c.name: c for c in cams},
        shards=shards,
        degradation=degradation,
        scaled_by_metrics=scaling is not None and scaling.replicas > shards.estimated_replicas,
        track=track,
        reid=helpers["reid"],
        classifier=helpers["classifier"],
        pose=helpers["pose"],
    )
