"""Reconciling a Pipeline: plan → apply the groups' objects → prune → camera assignments (with
their stream health) → status.

``reconcile_pipeline`` is level-triggered and idempotent: it derives everything from the
Pipeline and snapshots of the Camera, ModelVariant and Node indexes, writes with server-side
apply (an unchanged object is a no-op), and never touches the Pipeline's spec.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from kubevision.api.camera import CameraAssignment as CameraAssignmentStatus
from kubevision.api.camera import CameraSpec, CameraStatus
from kubevision.api.common import Condition
from kubevision.api.modelvariant import ModelVariantStatus
from kubevision.api.pipeline import GroupStatus, PipelineSpec, PipelineStatus, ScalingDecision
from kubevision.api.rollout import RolloutStatus
from kubevision.api.worker_config import (
    CASCADE_CONFIG_FILE,
    CONFIG_FILE,
    CascadeConfig,
    WorkerConfig,
)
from kubevision.operator import cameras, modelvariants, rollout
from kubevision.operator import conditions as c
from kubevision.operator.applied import AppliedObjects, stamp
from kubevision.operator.builders import (
    GROUP_LABEL,
    PIPELINE_LABEL,
    POD_INDEX_LABEL,
    build_cascade_config,
    build_configmap,
    build_service,
    build_statefulset,
    build_worker_config,
)
from kubevision.operator.handover import plan_handover
from kubevision.operator.hardware import NodeInfo
from kubevision.operator.kube import (
    CAMERAS,
    CONFIGMAPS,
    MODELVARIANTS,
    OWNED_KINDS,
    PIPELINES,
    PODS,
    SERVICES,
    STATEFULSETS,
    Kind,
    Kube,
)
from kubevision.operator.planner import (
    Camera,
    GroupPlan,
    GroupScaling,
    PipelinePlan,
    Problem,
    plan_pipeline,
)
from kubevision.operator.selection import Variant
from kubevision.operator.settings import OperatorSettings
from kubevision.operator.streamhealth import (
    DISCONNECTED,
    Change,
    Reports,
    StreamLedger,
    event_message,
)

log = logging.getLogger("kubevision.operator.pipelines")
T = TypeVar("T")
R = TypeVar("R")

# When several problems exist, the Degraded condition leads with the most fundamental one.
_PROBLEM_ORDER = (c.NO_SCHEDULABLE_NODES, c.NO_MATCHING_VARIANT, c.NO_CAPACITY)


@dataclass(frozen=True)
class CameraRecord:
    """A Camera in the operator's index: what planning needs plus its current assignments."""

    camera: Camera
    assignments: dict[str, CameraAssignmentStatus]
    generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    """The Camera's generation and conditions: a Pipeline's write of its entry carries the
    Camera's summary (:func:`.cameras.entry_write`)."""
    resource_version: str | None = None
    """The version the index holds (how a reconciler tells its own write not seen yet)."""

    @classmethod
    def of(
        cls,
        meta: dict[str, Any],
        spec: CameraSpec,
        status: dict[str, Any],
    ) -> CameraRecord:
        """The record of a Camera as the API holds it (raises on a status it cannot read)."""
        observed = CameraStatus.model_validate(status)
        return cls(
            Camera(meta["name"], dict(meta.get("labels") or {}), spec),
            {a.pipeline: a for a in observed.assignments},
            meta.get("generation"),
            tuple(observed.conditions),
            meta.get("resourceVersion"),
        )

    def entry_write(self, pipeline: str, entry: CameraAssignmentStatus | None) -> dict[str, Any]:
        """The status the Pipeline applies to set (or drop) its entry."""
        status = CameraStatus(
            assignments=list(self.assignments.values()), conditions=list(self.conditions)
        )
        return cameras.entry_write(self.camera.spec, self.generation, status, pipeline, entry)


@dataclass(frozen=True)
class Snapshot:
    """Copies of the indexes taken on the event loop, handed to the reconciling thread.

    ``owned`` (the Pipeline's StatefulSets, Services and ConfigMaps) and ``pods`` (its worker
    pods by group) come from the operator's watches; None means "not cached, list them"
    (a direct call, as the tests make)."""

    cameras: list[CameraRecord]
    variants: list[Variant]
    nodes: list[NodeInfo]
    owned: Mapping[Kind, list[dict[str, Any]]] | None = None
    pods: Mapping[str, list[dict[str, Any]]] | None = None
    gpu_requests: Mapping[str, int] | None = None
    """GPUs requested by the pods on each node (for the autoscaler's capacity); None: list."""


@dataclass(frozen=True)
class ScalingView:
    """What the autoscaler decided and measured, for the plan and the status."""

    decisions: Mapping[str, GroupScaling] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    held_reason: str | None = None
    """Why decisions are on hold (signals missing); None when they are not."""
    p99_ms: float | None = None
    queue_depth: float | None = None
    streams: Reports | None = None
    """Each camera's stream health by worker pod from this tick's scrape; None when the
    workers were not scraped now (so Camera status keeps what it says)."""
    models: modelvariants.ModelReports | None = None
    """Each worker pod's models (configured and running variant, artifact verified) from this
    tick's scrape; None when not scraped now (the ModelsVerified condition keeps its say)."""
    observation: rollout.Observation | None = None
    """This tick's worker scrapes by group, for a rollout's moves and analysis; None when the
    workers were not scraped now."""


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class CameraEvent:
    """An Event about a Camera (its stream went down or came back)."""

    camera: dict[str, Any]
    """The Camera as Events refer to it: apiVersion, kind and metadata (name, namespace, uid)."""
    event: Event


@dataclass
class Outcome:
    """What a reconcile decided, for the caller to post as Kubernetes Events."""

    events: list[Event] = field(default_factory=list)
    ready_replicas: dict[str, int] | None = None
    """Ready replicas per group, for the operator's metrics; None when nothing was applied."""
    camera_events: list[CameraEvent] = field(default_factory=list)
    status: WrittenStatus | None = None
    """The status the Pipeline has now (written, or found already so), for the next pass."""


@dataclass(frozen=True)
class WrittenStatus:
    """The status a reconciler wrote (or found) last, and the Pipeline's resourceVersion its
    cached body showed then. While the cache still shows that version, our write is not in it
    yet (no second write of the same status); once the version moved, the cache is the truth:
    another writer (a shard's previous owner finishing a pass) may have written after us."""

    wire: dict[str, Any]
    seen_version: str | None

    def still_ahead_of(self, body: dict[str, Any]) -> bool:
        return self.seen_version == (body.get("metadata") or {}).get("resourceVersion")


def camera_field_manager(settings: OperatorSettings, pipeline: str) -> str:
    """Each Pipeline owns its own entry of a Camera's status.assignments (a list-map)."""
    return f"{settings.field_manager}-pipeline-{pipeline}"


def reconcile_pipeline(
    kube: Kube,
    settings: OperatorSettings,
    body: dict[str, Any],
    snapshot: Snapshot,
    scaling: ScalingView | None = None,
    ledger: StreamLedger | None = None,
    applied: AppliedObjects | None = None,
    last_status: WrittenStatus | None = None,
    rollout_memory: rollout.RolloutMemory | None = None,
) -> Outcome:
    """One level-triggered pass (see the module docstring). ``ledger``: the reconciler's memory
    of its Camera entries across ticks; a fresh one, as after a restart, when not given.
    ``applied``: what this process applied before (unchanged objects are then not applied
    again, :mod:`.applied`); ``last_status``: the status this reconciler wrote last, which the
    cached ``body`` may not show yet (no second write of the same status);
    ``rollout_memory``: the analysis window in progress of spec.rollout (:mod:`.rollout`)."""
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    ahead = last_status.wire if last_status and last_status.still_ahead_of(body) else None
    previous_status = PipelineStatus.model_validate(
        ahead if ahead is not None else body.get("status") or {}
    )
    try:
        spec = PipelineSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return _reject(kube, body, previous_status, exc)
    owned = snapshot.owned
    if owned is None:
        owned = {
            kind: kube.list_labeled(kind, namespace, f"{PIPELINE_LABEL}={name}")
            for kind in OWNED_KINDS
        }
    previous = _previous_assignments(owned[CONFIGMAPS])
    view = scaling or ScalingView()
    cams = [r.camera for r in snapshot.cameras]
    rollout_status: RolloutStatus | None = None
    rollout_events: list[rollout.Event] = []
    if spec.rollout is None:
        plan = plan_pipeline(
            name, spec, cams, snapshot.variants, snapshot.nodes, previous, view.decisions
        )
    else:
        rollout_status, rollout_events = rollout.advance_rollout(
            name, spec, cams, snapshot.variants, snapshot.nodes, previous_status.rollout,
            {g.name: g.track for g in previous_status.groups}, view.observation,
            rollout.RolloutMemory() if rollout_memory is None else rollout_memory,
            dt.datetime.now(dt.UTC).replace(microsecond=0),
        )  # fmt: skip
        plan = rollout.plan_tracks(
            name, spec, cams, snapshot.variants, snapshot.nodes, previous, view.decisions,
            rollout_status,
        )  # fmt: skip
    applied = AppliedObjects() if applied is None else applied
    pods = snapshot.pods
    ready, waiting = _apply_groups(kube, settings, body, spec, plan, owned, previous, applied, pods)
    _prune(kube, namespace, meta["uid"], owned, {g.name for g in plan.groups}, applied)
    camera_events = _update_camera_assignments(
        kube, settings, namespace, name, plan, snapshot.cameras, view.streams,
        StreamLedger() if ledger is None else ledger,
    )  # fmt: skip
    status = _status(plan, ready, waiting, generation, previous_status, view, rollout_status)
    wire = status.wire()
    current = PipelineStatus.model_validate(body.get("status") or {}).wire()
    if wire not in (current, ahead):  # coalesced: an unchanged status is not written
        kube.apply_status(PIPELINES, namespace, name, wire)
    if view.models is not None:
        _report_artifacts(kube, settings, namespace, name, plan, view.models, snapshot.variants)
    return Outcome(
        events=_decisions(previous_status, status)
        + _model_events(previous_status, status)
        + [Event(e.type, e.reason, e.message) for e in rollout_events],
        ready_replicas=ready,
        camera_events=camera_events,
        status=WrittenStatus(wire, meta.get("resourceVersion")),
    )


def _report_artifacts(
    kube: Kube,
    settings: OperatorSettings,
    namespace: str,
    pipeline: str,
    plan: PipelinePlan,
    reports: modelvariants.ModelReports,
    variants: list[Variant],
) -> None:
    """Write what this Pipeline's workers found about their variants' artifacts into those
    ModelVariants' status (per hardware class), where it changed, as the Pipeline's manager."""
    hardware_of = {g.name: g.hardware for g in plan.groups}
    found = modelvariants.observations(reports, hardware_of)
    statuses = {v.name: v.status or ModelVariantStatus() for v in variants}
    writes = modelvariants.artifact_writes(found, statuses, dt.datetime.now(dt.UTC))
    for variant, status in writes.items():
        manager = camera_field_manager(settings, pipeline)
        kube.apply_status(MODELVARIANTS, namespace, variant, status, field_manager=manager)


def _model_events(previous: PipelineStatus, status: PipelineStatus) -> list[Event]:
    """A Warning when a worker refuses a model's artifact (or the reason changes)."""
    before = next((x for x in previous.conditions if x.type == c.MODELS_VERIFIED), None)
    now = next((x for x in status.conditions if x.type == c.MODELS_VERIFIED), None)
    if now is None or now.status != "False":
        return []
    if before is not None and (before.status, before.reason) == (now.status, now.reason):
        return []
    return [Event("Warning", now.reason, now.message)]


def _previous_assignments(configmaps: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """group -> camera -> shard from the ConfigMaps already applied (the actual state)."""
    out = {}
    for cm in configmaps:
        if CASCADE_CONFIG_FILE in (cm.get("data") or {}):
            continue  # a cascade Pipeline's workload has no cameras
        try:
            config = WorkerConfig.model_validate(json.loads(cm["data"][CONFIG_FILE]))
        except (KeyError, ValueError, ValidationError):
            log.warning(
                "ConfigMap %s has no readable worker config; re-sharding its cameras",
                cm["metadata"]["name"],
            )
            continue
        out[cm["metadata"]["name"]] = config.assignments()
    return out


def _apply_groups(
    kube: Kube,
    settings: OperatorSettings,
    body: dict[str, Any],
    spec: PipelineSpec,
    plan: PipelinePlan,
    owned: Mapping[Kind, list[dict[str, Any]]],
    previous: Mapping[str, Mapping[str, int]],
    applied: AppliedObjects,
    pods: Mapping[str, list[dict[str, Any]]] | None,
) -> tuple[dict[str, int], list[str]]:
    """Apply each group's ConfigMap, Service and StatefulSet where they changed; return ready
    replicas per group and why the pods that are not ready wait.

    The ConfigMap goes first so a StatefulSet never scales onto shards its workers cannot
    read, and moves are make-before-break (:mod:`.handover`).
    """
    meta = body["metadata"]
    live = {kind: {o["metadata"]["name"]: o for o in owned[kind]} for kind in OWNED_KINDS}
    configmaps, statefulsets = live[CONFIGMAPS], live[STATEFULSETS]
    ready: dict[str, int] = {}
    waiting: list[str] = []
    for group in plan.groups:
        homes = previous.get(group.name, {})
        changed_at = _homes_changed_at(configmaps.get(group.name), homes, group)
        running = int(((statefulsets.get(group.name) or {}).get("spec") or {}).get("replicas", 0))
        group_pods = None if pods is None else pods.get(group.name, [])
        ready_ordinals, blocked = _pod_readiness(kube, meta, group, group_pods)
        waiting += blocked
        handover = plan_handover(
            group.shards.shards,
            homes,
            ready_ordinals,
            running,
            time.time() - changed_at,
            settings.handover_seconds,
        )
        config: WorkerConfig | CascadeConfig
        if group.detector is None:  # a cascade Pipeline's workload: no cameras to hand over
            config = build_cascade_config(meta["name"], meta["namespace"], spec, group)
        else:
            config = build_worker_config(
                meta["name"], meta["namespace"], spec, group, handover.copies
            )
        configmap = build_configmap(body, config, group)
        configmap["metadata"]["annotations"] = {HOMES_CHANGED_AT: f"{changed_at:.0f}"}
        statefulset = build_statefulset(body, spec, group, settings)
        statefulset["spec"]["replicas"] = handover.replicas
        current = statefulsets.get(group.name)
        for kind, desired in (
            (CONFIGMAPS, configmap),
            (SERVICES, build_service(body, group, settings)),
            (STATEFULSETS, statefulset),
        ):
            stamp(desired)
            if applied.needs_apply(kind.plural, desired, live[kind].get(group.name)):
                result = kube.apply(kind, desired)
                applied.record(kind.plural, result, meta["name"])
                if kind == STATEFULSETS:
                    current = result
        ready[group.name] = int(((current or {}).get("status") or {}).get("readyReplicas") or 0)
    return ready, waiting


HOMES_CHANGED_AT = "kubevision.io/homes-changed-at"
"""ConfigMap annotation: when (Unix seconds) the group's cameras last changed replica."""


def _homes_changed_at(
    configmap: dict[str, Any] | None, homes: Mapping[str, int], group: GroupPlan
) -> float:
    """When the group's cameras last changed replica: now if this plan moves any; else what
    the ConfigMap recorded; 0 (long ago) for a new group or a ConfigMap without the record."""
    if configmap is None:
        return 0.0
    new = {cam: i for i, shard in enumerate(group.shards.shards) for cam in shard}
    if dict(homes) != new:
        return time.time()
    annotations = configmap["metadata"].get("annotations") or {}
    return float(annotations.get(HOMES_CHANGED_AT, 0.0))


def _pod_readiness(
    kube: Kube, meta: dict[str, Any], group: GroupPlan, pods: list[dict[str, Any]] | None
) -> tuple[set[int], list[str]]:
    """Ordinals of the group's pods that report Ready (they serve their shard), and what each
    other pod's containers wait for (a missing Secret, an image pull, a crash loop). ``pods``:
    the group's pods from the operator's watch; None lists them."""
    if pods is None:
        pods = kube.list_labeled(PODS, meta["namespace"], f"{GROUP_LABEL}={group.name}")
    ready, waiting = set(), []
    for pod in pods:
        status = pod.get("status") or {}
        index = pod["metadata"].get("labels", {}).get(POD_INDEX_LABEL)
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        ):
            if index is not None:
                ready.add(int(index))
            continue
        for container in status.get("containerStatuses") or []:
            why = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if why and why not in _STARTING:
                detail = container["state"]["waiting"].get("message") or ""
                waiting.append(f"pod {pod['metadata']['name']}: {why} {detail}".strip())
    return ready, waiting


_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
"""Waiting reasons of a pod on its way up: nothing to report."""


def _prune(
    kube: Kube,
    namespace: str,
    uid: str,
    owned: Mapping[Kind, list[dict[str, Any]]],
    wanted: set[str],
    applied: AppliedObjects,
) -> None:
    """Delete what this Pipeline created for groups that no longer exist (workloads first)."""
    for kind in OWNED_KINDS:
        for obj in owned[kind]:
            refs = obj["metadata"].get("ownerReferences") or []
            mine = any(r.get("uid") == uid for r in refs)
            gone = obj["metadata"].get("deletionTimestamp")
            if mine and not gone and obj["metadata"]["name"] not in wanted:
                log.info("pruning %s %s/%s", kind.plural, namespace, obj["metadata"]["name"])
                kube.delete(kind, namespace, obj["metadata"]["name"])
                applied.forget(kind.plural, namespace, obj["metadata"]["name"])


def _update_camera_assignments(
    kube: Kube,
    settings: OperatorSettings,
    namespace: str,
    pipeline: str,
    plan: PipelinePlan,
    records: list[CameraRecord],
    streams: Reports | None,
    ledger: StreamLedger,
) -> list[CameraEvent]:
    """Write this Pipeline's entry in each Camera's status.assignments where it changed
    (placement or stream health, see :func:`.streamhealth.next_assignment`); returns the
    Events for streams seen going down or coming back (one per episode: ``ledger``)."""
    placements: dict[str, CameraAssignmentStatus] = {}
    for group in plan.groups:
        for shard, names in enumerate(group.shards.shards):
            for cam in names:
                if cam in group.leaving:  # its new group (a rollout's other side) is named
                    continue
                placements[cam] = CameraAssignmentStatus(
                    pipeline=pipeline, workload=group.name, shard=shard
                )
    manager = camera_field_manager(settings, pipeline)
    now = dt.datetime.now(dt.UTC)
    ledger.keep_only({r.camera.name for r in records})
    changes = []
    for record in records:
        name = record.camera.name
        change = ledger.change(
            name,
            record.assignments.get(pipeline),
            placements.get(name),
            streams,
            now,
            record.resource_version,
        )
        if change is not None:
            changes.append((record, change))

    def write(item: tuple[CameraRecord, Change]) -> dict[str, Any]:
        record, change = item
        status = record.entry_write(pipeline, change.entry)
        camera = apply_camera_assignment(kube, namespace, record.camera.name, status, manager)
        ledger.record(record.camera.name, change.entry, record.resource_version)
        return camera

    written = side_by_side(write, changes, settings.status_writers)
    events = []
    for (record, change), camera in zip(changes, written, strict=True):
        name = record.camera.name
        want, kind = change.entry, change.event
        if kind is not None and want is not None:
            log.info(
                "camera stream %s",
                kind.lower(),
                extra={"camera": name, "pipeline": pipeline, "error": want.last_error},
            )
            level = "Warning" if kind == DISCONNECTED else "Normal"
            events.append(CameraEvent(camera, Event(level, kind, event_message(kind, want))))
    return events


def side_by_side(call: Callable[[T], R], items: Sequence[T], most: int) -> list[R]:
    """``call`` on every item, up to ``most`` at once: each is a round trip to the apiserver,
    so a burst of Camera writes waits on the server, not on one latency after another.
    The first failure is raised (after the calls already started have finished)."""
    if len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(min(most, len(items))) as pool:
        return list(pool.map(call, items))


def apply_camera_assignment(
    kube: Kube, namespace: str, camera: str, status: dict[str, Any], manager: str
) -> dict[str, Any]:
    """Apply one Pipeline's entry write (:func:`.cameras.entry_write`); other Pipelines'
    entries stay. Returns the Camera as Events refer to it."""
    applied = kube.apply_status(CAMERAS, namespace, camera, status, field_manager=manager)
    meta = applied.get("metadata") or {}
    return {
        "apiVersion": CAMERAS.api_version,
        "kind": CAMERAS.kind,
        "metadata": {"name": camera, "namespace": namespace, "uid": meta.get("uid")},
    }


def _status(
    plan: PipelinePlan,
    ready: dict[str, int],
    waiting: list[str],
    generation: int | None,
    previous: PipelineStatus,
    scaling: ScalingView,
    rollout_status: RolloutStatus | None = None,
) -> PipelineStatus:
    groups = [
        GroupStatus(
            name=g.name,
            site=g.site,
            hardware_class=g.hardware,
            variant=g.main_model.variant.name,
            cameras=len(g.cameras),
            replicas=g.shards.replicas,
            ready_replicas=ready.get(g.name, 0),
            degradation=list(g.degradation),
            scaled_by="metrics" if g.scaled_by_metrics else "capacity",
            track=g.track,
        )
        for g in plan.groups
    ]
    desired = sum(g.replicas for g in groups)
    ready_total = sum(g.ready_replicas for g in groups)
    rollout_conditions = []
    if rollout_status is not None:
        rollout_conditions.append(
            c.condition(
                c.ROLLOUT,
                rollout.rollout_condition_status(rollout_status),
                rollout_status.reason,
                rollout_status.message,
                generation,
                previous.conditions,
            )
        )
    return PipelineStatus(
        observed_generation=generation,
        cameras=sum(g.cameras - len(p.leaving) for g, p in zip(groups, plan.groups, strict=True)),
        desired_replicas=desired,
        ready_replicas=ready_total,
        groups=groups,
        p99_latency_ms=scaling.p99_ms if scaling.p99_ms is not None else previous.p99_latency_ms,
        queue_depth=(
            scaling.queue_depth if scaling.queue_depth is not None else previous.queue_depth
        ),
        last_scaling_decision=_scaling_decision(previous, groups, scaling.reasons),
        rollout=rollout_status,
        conditions=[
            _ready_condition(plan, desired, ready_total, waiting, generation, previous.conditions),
            _degraded_condition(plan, generation, previous.conditions),
            _autoscaling_condition(scaling, generation, previous.conditions),
            modelvariants.models_condition(scaling.models, generation, previous.conditions),
            *rollout_conditions,
        ],
    )


def _ready_condition(
    plan: PipelinePlan,
    desired: int,
    ready: int,
    waiting: list[str],
    generation: int | None,
    previous: list[Condition],
) -> Condition:
    if plan.selected == 0 and not plan.cascade:
        return c.condition(
            c.READY,
            "False",
            c.NO_CAMERAS,
            "no unpaused Camera matches spec.cameraSelector",
            generation,
            previous,
        )
    if not plan.groups:
        problem = _leading_problem(plan)
        reason, message = (problem.reason, problem.message) if problem else (c.NO_CAMERAS, "")
        return c.condition(c.READY, "False", reason, message, generation, previous)
    if desired > 0 and ready >= desired:
        return c.condition(
            c.READY,
            "True",
            c.WORKERS_READY,
            f"{ready}/{desired} worker replicas ready",
            generation,
            previous,
        )
    why = f"; waiting: {'; '.join(waiting[:3])}" if waiting else ""
    return c.condition(
        c.READY,
        "False",
        c.WORKERS_STARTING,
        f"{ready}/{desired} worker replicas ready{why}",
        generation,
        previous,
    )


def _degraded_condition(
    plan: PipelinePlan, generation: int | None, previous: list[Condition]
) -> Condition:
    problem = _leading_problem(plan)
    if problem is None:
        return c.condition(
            c.DEGRADED,
            "False",
            c.AS_EXPECTED,
            "every selected camera is served",
            generation,
            previous,
        )
    message = "; ".join(f"{p.reason}: {p.message}" for p in plan.problems)
    return c.condition(c.DEGRADED, "True", problem.reason, message, generation, previous)


def _leading_problem(plan: PipelinePlan) -> Problem | None:
    ranked = sorted(
        plan.problems,
        key=lambda p: (
            _PROBLEM_ORDER.index(p.reason) if p.reason in _PROBLEM_ORDER else len(_PROBLEM_ORDER)
        ),
    )
    return ranked[0] if ranked else None


def _scaling_decision(
    previous: PipelineStatus, groups: list[GroupStatus], reasons: Mapping[str, str]
) -> ScalingDecision | None:
    before = {g.name: (g.replicas, g.degradation) for g in previous.groups}
    for g in groups:
        old_replicas, old_steps = before.get(g.name, (0, []))
        if (old_replicas, old_steps) != (g.replicas, g.degradation):
            capacity = f"capacity: {g.cameras} cameras on {g.variant} ({g.hardware_class})"
            return ScalingDecision(
                time=dt.datetime.now(dt.UTC).replace(microsecond=0),
                group=g.name,
                from_replicas=old_replicas,
                to_replicas=g.replicas,
                reason=reasons.get(g.name, capacity),
            )
    return previous.last_scaling_decision


def _autoscaling_condition(
    scaling: ScalingView, generation: int | None, previous: list[Condition]
) -> Condition:
    if scaling.held_reason:
        return c.condition(
            c.AUTOSCALING, "False", c.METRICS_UNAVAILABLE, scaling.held_reason, generation, previous
        )
    if scaling.decisions:
        return c.condition(
            c.AUTOSCALING,
            "True",
            c.SCALING_ACTIVE,
            "replicas follow the workers' measured load",
            generation,
            previous,
        )
    return c.condition(
        c.AUTOSCALING,
        "Unknown",
        c.AWAITING_METRICS,
        "no worker measurements yet; replicas sized from expected throughput",
        generation,
        previous,
    )


def _decisions(previous: PipelineStatus, status: PipelineStatus) -> list[Event]:
    """Events for what changed: variant choices, replica counts, groups, problems."""
    events = []
    before = {g.name: g for g in previous.groups}
    for g in status.groups:
        old = before.pop(g.name, None)
        if old is None or old.variant != g.variant:
            events.append(
                Event(
                    "Normal",
                    "VariantSelected",
                    f"group {g.name}: {g.variant} on {g.hardware_class}",
                )
            )
        if old is None or old.replicas != g.replicas:
            events.append(
                Event(
                    "Normal",
                    "Scaled",
                    f"group {g.name}: {old.replicas if old else 0} -> {g.replicas} "
                    f"replicas for {g.cameras} cameras",
                )
            )
    for name in before:
        events.append(Event("Normal", "GroupRemoved", f"group {name} has no cameras left"))
    old_degraded = next((x for x in previous.conditions if x.type == c.DEGRADED), None)
    new_degraded = next(x for x in status.conditions if x.type == c.DEGRADED)
    changed = old_degraded is None or (old_degraded.reason, old_degraded.message) != (
        new_degraded.reason,
        new_degraded.message,
    )
    if new_degraded.status == "True" and changed:
        events.append(Event("Warning", new_degraded.reason, new_degraded.message))
    return events


def _reject(
    kube: Kube, body: dict[str, Any], previous: PipelineStatus, exc: ValidationError
) -> Outcome:
    """A spec the API accepted but the operator cannot use: say why, do not retry hot."""
    generation = body["metadata"].get("generation")
    message = f"invalid spec: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
    status = previous.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [
                c.condition(
                    c.READY, "False", c.INVALID_SPEC, message, generation, previous.conditions
                ),
                c.condition(
                    c.DEGRADED, "True", c.INVALID_SPEC, message, generation, previous.conditions
                ),
            ],
        }
    )
    meta, wire = body["metadata"], status.wire()
    written = WrittenStatus(wire, meta.get("resourceVersion"))
    if wire == PipelineStatus.model_validate(body.get("status") or {}).wire():
        return Outcome(status=written)  # said already: no write, no second Event
    kube.apply_status(PIPELINES, meta["namespace"], meta["name"], wire)
    return Outcome(events=[Event("Warning", c.INVALID_SPEC, message)], status=written)
