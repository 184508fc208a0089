"""kopf registrations: start-up, indexes of the cluster's actual state, and the triggers that
wake each Pipeline's reconciler.

Index functions only project objects onto small frozen records (they are never retried, so
they never raise). Reconciles run in worker threads with snapshots of the indexes; everything
touching asyncio state stays on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY, start_http_server
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from kubevision.api import GROUP, VERSION
from kubevision.api.camera import CameraSpec
from kubevision.api.common import LabelSelector
from kubevision.api.modelvariant import ModelVariantSpec, ModelVariantStatus
from kubevision.api.pipeline import PipelineSpec, PipelineStatus
from kubevision.operator import cameras, modelvariants, streamhealth
from kubevision.operator.applied import AppliedObjects
from kubevision.operator.builders import GROUP_LABEL, MANAGED_BY, PIPELINE_LABEL
from kubevision.operator.hardware import GPU_RESOURCE, NodeInfo, node_info
from kubevision.operator.kube import (
    CAMERAS,
    CONFIGMAPS,
    MODELVARIANTS,
    SERVICES,
    STATEFULSETS,
    Kind,
    Kube,
)
from kubevision.operator.pipelines import (
    CameraRecord,
    Event,
    ScalingView,
    Snapshot,
    apply_camera_assignment,
    camera_field_manager,
    reconcile_pipeline,
    side_by_side,
)
from kubevision.operator.rollout import Observation, RolloutMemory
from kubevision.operator.scaling import (
    OperatorMetrics,
    PipelineScaler,
    fetch_each,
    stream_reports,
    worker_urls,
)
from kubevision.operator.selection import Variant
from kubevision.operator.settings import OperatorSettings
from kubevision.operator.shards import ShardMembership
from kubevision.operator.signals import scrape
from kubevision.operator.statusqueue import StatusQueue
from kubevision.operator.triggers import Triggers, pipeline_key

log = logging.getLogger("kubevision.operator")
NODES = "nodes"
"""The single key of the node index: placement looks at every node."""
_MAX_BACKOFF = 60.0
_MIN_WAKE_SECONDS = 0.2


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Clients, settings and runtime state live in kopf's memo (no module-level state)."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # decisions are posted explicitly, not log lines
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    operator_settings = OperatorSettings.from_env()
    memo.settings = operator_settings
    # blocking calls run in the loop's default executor: each reconcile slot, the camera
    # status flusher and the shard loop need a thread (asyncio's default is cores + 4); the
    # slots and the flusher write Cameras side by side (pipelines.side_by_side), so each may
    # hold status_writers connections at once
    threads = operator_settings.max_concurrent_reconciles + 2
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(threads, thread_name_prefix="kubevision")
    )
    connections = (threads - 1) * operator_settings.status_writers + 1
    memo.kube = Kube.connect(operator_settings.field_manager, connections=connections)
    memo.triggers = Triggers()
    memo.node_facts = {}
    memo.camera_facts = {}
    memo.operator_metrics = OperatorMetrics(REGISTRY)
    memo.applied = AppliedObjects()
    memo.reconcile_slots = asyncio.Semaphore(operator_settings.max_concurrent_reconciles)
    memo.camera_queue = StatusQueue()
    memo.camera_wake = asyncio.Event()
    memo.pipelines_seen = {}
    memo.shards = ShardMembership(
        memo.kube,
        operator_settings.lease_namespace,
        operator_settings.identity,
        operator_settings.shards,
        operator_settings.shard_lease_seconds,
    )
    memo.background = [asyncio.create_task(_flush_camera_status(memo))]
    if memo.shards.sharded:
        memo.background.append(asyncio.create_task(_keep_shards(memo)))
    if operator_settings.operator_metrics_port:
        start_http_server(operator_settings.operator_metrics_port)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop the background loops; hand our shards back so the others need not wait."""
    for task in memo.background:
        task.cancel()
    for task in memo.background:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(ApiException, OSError, HTTPError):
        await asyncio.to_thread(memo.shards.release_all)


async def _keep_shards(memo: kopf.Memo) -> None:
    """Renew and rebalance the shard Leases; on a change, wake every Pipeline (ours reconcile,
    the others idle) and queue the status of every Camera and ModelVariant we took over."""
    membership: ShardMembership = memo.shards
    while True:
        try:
            changed = await asyncio.to_thread(membership.tick)
            if changed:
                memo.triggers.fire_all()
                await asyncio.to_thread(_take_over_statuses, memo)
        except (ApiException, OSError, HTTPError) as exc:
            log.warning("shard leases not renewed (%s); retrying", exc)
        except Exception:  # a bug must not end the loop: the shards would expire
            log.exception("shard lease loop failed; retrying")
        await asyncio.sleep(membership.lease_seconds / 3)


def _take_over_statuses(memo: kopf.Memo) -> None:
    """Shards we now own may hold Cameras whose events went to another replica: look at each
    once (a paged list, only on a rebalance) and queue the ones of our shards."""
    for kind, queue_it in ((CAMERAS, True), (MODELVARIANTS, False)):
        for obj in memo.kube.list_pages(kind):
            meta = obj["metadata"]
            if not memo.shards.owns(meta["namespace"], meta["name"]):
                continue
            if queue_it:
                # never over a body an event queued meanwhile: the event's is as new or newer
                memo.camera_queue.requeue(
                    (meta["namespace"], meta["name"]), obj, time.monotonic(), 0.0
                )
            else:
                _sync_status(memo.kube, MODELVARIANTS, obj, modelvariants)


# -- indexes: the actual state, kept current by kopf's watches -------------------------------


@kopf.index(GROUP, VERSION, "cameras")
def camera_index(
    namespace: str,
    name: str,
    labels: kopf.Labels,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[str, CameraRecord]:
    try:
        parsed = CameraSpec.model_validate(dict(spec))
        record = CameraRecord.of(dict(meta), parsed, dict(status))
    except ValidationError as exc:
        log.warning("camera %s/%s ignored: %s", namespace, name, exc.errors()[0]["msg"])
        return {}
    keys: list[Any] = [namespace]
    keys += [("label", namespace, k, v) for k, v in labels.items()]
    keys += [("assigned", namespace, pipeline) for pipeline in record.assignments]
    return dict.fromkeys(keys, record)


@kopf.index(GROUP, VERSION, "modelvariants")
def variant_index(
    namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, Variant]:
    try:
        parsed = ModelVariantSpec.model_validate(dict(spec))
    except ValidationError as exc:
        log.warning("modelvariant %s/%s ignored: %s", namespace, name, exc.errors()[0]["msg"])
        return {}
    try:  # only the workers' reports are read from it: an odd status must not hide the spec
        observed: ModelVariantStatus | None = ModelVariantStatus.model_validate(dict(status))
    except ValidationError:
        observed = None
    return {namespace: Variant(name, parsed, observed)}


@kopf.index(GROUP, VERSION, "pipelines")
def pipeline_index(namespace: str, name: str, **_: Any) -> dict[str, str]:
    """Pipelines that exist, so Camera status can shed entries of deleted ones."""
    return {namespace: name}


_OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY, PIPELINE_LABEL: kopf.PRESENT}


def _owned_record(body: kopf.Body) -> dict[Any, dict[str, Any]]:
    """The parts of a StatefulSet, ConfigMap or Service the reconcile reads, by Pipeline."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "labels", "annotations", "ownerReferences", "resourceVersion",
            "generation", "deletionTimestamp")  # fmt: skip
    record: dict[str, Any] = {"metadata": {k: meta[k] for k in keep if k in meta}}
    if "data" in body:
        record["data"] = dict(body.get("data") or {})
    if body.get("kind") == "StatefulSet":
        record["spec"] = {"replicas": (body.get("spec") or {}).get("replicas", 0)}
        record["status"] = {"readyReplicas": (body.get("status") or {}).get("readyReplicas", 0)}
    return {(meta.get("namespace"), (meta.get("labels") or {}).get(PIPELINE_LABEL)): record}


@kopf.index("apps", "v1", "statefulsets", labels=_OWNED)
def statefulset_index(body: kopf.Body, **_: Any) -> dict[Any, dict[str, Any]]:
    return _owned_record(body)


@kopf.index("", "v1", "configmaps", labels=_OWNED)
def configmap_index(body: kopf.Body, **_: Any) -> dict[Any, dict[str, Any]]:
    return _owned_record(body)


@kopf.index("", "v1", "services", labels=_OWNED)
def service_index(body: kopf.Body, **_: Any) -> dict[Any, dict[str, Any]]:
    return _owned_record(body)


@kopf.index("", "v1", "pods")
def pod_index(
    namespace: str, name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    """Worker pods by (namespace, group), as readiness and scraping need them; and the GPUs
    every running pod requests, by node (the autoscaler's free-capacity check)."""
    out: dict[Any, Any] = {}
    if labels.get("app.kubernetes.io/managed-by") == MANAGED_BY and GROUP_LABEL in labels:
        conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        waiting = [
            {"state": {"waiting": (c.get("state") or {})["waiting"]}}
            for c in status.get("containerStatuses") or []
            if (c.get("state") or {}).get("waiting")
        ]
        out[(namespace, labels[GROUP_LABEL])] = {
            "metadata": {"name": name, "labels": dict(labels)},
            "status": {
                "podIP": status.get("podIP"),
                "conditions": conditions,
                "containerStatuses": waiting,
            },
        }
    node = spec.get("nodeName")
    if node and status.get("phase") not in ("Succeeded", "Failed"):
        gpus = sum(
            int(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0))
            for c in spec.get("containers") or []
        )
        if gpus:
            out[("node", node, "gpus")] = gpus
    return out


@kopf.index("", "v1", "nodes")
def node_index(
    name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, NodeInfo]:
    return {NODES: node_info(name, dict(labels), spec, status)}


# -- the reconciler: one daemon per Pipeline --------------------------------------------------


# cancellation_timeout: kopf cancels the sleeping reconciler when the Pipeline is deleted or
# the operator stops (without it kopf waits for the daemon to exit by itself, forever).
@kopf.daemon(GROUP, VERSION, "pipelines", cancellation_timeout=5.0)
async def pipeline_reconciler(
    namespace: str,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    camera_index: kopf.Index[Any, CameraRecord],
    variant_index: kopf.Index[str, Variant],
    node_index: kopf.Index[str, NodeInfo],
    statefulset_index: kopf.Index[Any, dict[str, Any]],
    configmap_index: kopf.Index[Any, dict[str, Any]],
    service_index: kopf.Index[Any, dict[str, Any]],
    pod_index: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """Reconcile on every trigger and at least every resync period; back off on errors.

    Everything comes from kopf's watches (``body`` is kopf's live view of the Pipeline, the
    indexes hold the rest): a reconcile that changes nothing makes no API call. With shards,
    a Pipeline of a shard this replica does not hold waits here until the shards move."""
    key = pipeline_key(namespace, name)
    triggers: Triggers = memo.triggers
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    membership: ShardMembership = memo.shards
    applied: AppliedObjects = memo.applied
    metrics: OperatorMetrics = memo.operator_metrics
    scaler, ledger, last_status = PipelineScaler(), streamhealth.StreamLedger(), None
    rollout_memory = RolloutMemory()
    triggers.register(key)
    backoff, interval, mine = 1.0, settings.resync_seconds, False
    try:
        while not stopped:
            await triggers.wait(key, timeout=interval if backoff == 1.0 else backoff)
            if not membership.owns(namespace, name):
                if mine:  # handed to another replica: what we remember may go stale there
                    scaler, ledger, last_status = (
                        PipelineScaler(),
                        streamhealth.StreamLedger(),
                        None,
                    )
                    rollout_memory = RolloutMemory()
                    applied.forget_pipeline(namespace, name)
                    metrics.forget(name)
                mine, interval = False, settings.resync_seconds
                continue
            mine = True
            current = copy.deepcopy(dict(body))
            if (current.get("metadata") or {}).get("deletionTimestamp"):
                continue  # being deleted; kopf stops this daemon
            selector = _selector(current)
            triggers.interest(key, selector)
            statefulsets = list(statefulset_index.get(key, []))
            snapshot = Snapshot(
                cameras=(
                    []  # a cascade Pipeline (spec.source) analyses edge events, not Cameras
                    if (current.get("spec") or {}).get("source")
                    else _candidates(camera_index, namespace, name, selector)
                ),
                variants=list(variant_index.get(namespace, [])),
                nodes=list(node_index.get(NODES, [])),
                owned={
                    STATEFULSETS: statefulsets,
                    CONFIGMAPS: list(configmap_index.get(key, [])),
                    SERVICES: list(service_index.get(key, [])),
                },
                pods=_pods_by_group(pod_index, namespace, statefulsets),
                gpu_requests=_gpu_requests(pod_index, node_index.get(NODES, [])),
            )
            try:
                async with memo.reconcile_slots:
                    if not membership.owns(namespace, name):
                        continue  # the shard moved while we queued for a slot
                    with metrics.reconciling("pipeline"):
                        view, scaled = await asyncio.to_thread(
                            _autoscale, kube, settings, scaler, current, snapshot, metrics
                        )
                        outcome = await asyncio.to_thread(
                            reconcile_pipeline, kube, settings, current, snapshot, view, ledger,
                            applied, last_status, rollout_memory,
                        )  # fmt: skip
            except (ApiException, OSError, HTTPError) as exc:  # the API is away, not a bug
                backoff = min(backoff * 2, _MAX_BACKOFF)
                last_status = None  # a write may have failed half-way: trust the cache again
                logger.warning("reconcile failed (%s); retrying in %.0fs", exc, backoff)
                continue
            except Exception:  # a bug must not kill the reconciler or make it spin
                backoff = min(backoff * 2, _MAX_BACKOFF)
                logger.exception("reconcile crashed; retrying in %.0fs", backoff)
                continue
            backoff, last_status = 1.0, outcome.status
            if outcome.ready_replicas is not None:
                metrics.observe_groups(name, outcome.ready_replicas)
            # wake exactly when the next autoscaling step is due (never later); a Pipeline
            # without groups has nothing to scale and waits for the resync (else a hot loop)
            interval = settings.resync_seconds
            if outcome.ready_replicas:
                until_due = _metrics_interval(current) - (time.monotonic() - scaler.last_run)
                interval = min(interval, max(_MIN_WAKE_SECONDS, until_due))
            for event in [*scaled, *outcome.events]:
                kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            for about in outcome.camera_events:
                kopf.event(about.camera, type=about.event.type, reason=about.event.reason,
                           message=about.event.message)  # fmt: skip
    finally:
        triggers.unregister(key)
        metrics.forget(name)


def _selector(body: dict[str, Any]) -> LabelSelector | None:
    try:
        return LabelSelector.model_validate((body.get("spec") or {}).get("cameraSelector") or {})
    except ValidationError:
        return None


def _candidates(
    index: kopf.Index[Any, CameraRecord],
    namespace: str,
    pipeline: str,
    selector: LabelSelector | None,
) -> list[CameraRecord]:
    """The Cameras the Pipeline may select (the smallest label bucket its matchLabels name,
    else the namespace) plus those it has assigned (so it can drop what it no longer
    selects): at 10,000 Cameras in a namespace a Pipeline looks at its own, not at all."""
    buckets: list[Any] = [
        index.get(("label", namespace, k, v), [])
        for k, v in (selector.match_labels if selector else {}).items()
    ]
    candidates = min(buckets, key=len) if buckets else index.get(namespace, [])
    records = {r.camera.name: r for r in candidates}
    for r in index.get(("assigned", namespace, pipeline), []):
        records.setdefault(r.camera.name, r)
    return list(records.values())


def _pods_by_group(
    index: kopf.Index[Any, Any], namespace: str, statefulsets: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """The pods of each group that has a StatefulSet (a group without one has none)."""
    names = [o["metadata"]["name"] for o in statefulsets]
    return {group: list(index.get((namespace, group), [])) for group in names}


def _gpu_requests(index: kopf.Index[Any, Any], nodes: Any) -> dict[str, int]:
    return {
        n.name: sum(index.get(("node", n.name, "gpus"), []))
        for n in nodes
        if n.hardware_class == "nvidia-gpu"
    }


def _metrics_interval(body: dict[str, Any]) -> float:
    autoscaling = (body.get("spec") or {}).get("autoscaling") or {}
    return float(autoscaling.get("metricsIntervalSeconds", 5))


def _autoscale(
    kube: Kube,
    settings: OperatorSettings,
    scaler: PipelineScaler,
    body: dict[str, Any],
    snapshot: Snapshot,
    metrics: OperatorMetrics,
) -> tuple[ScalingView, list[Event]]:
    """One autoscaling step when due; the decisions so far otherwise (runs in a thread)."""
    try:
        spec = PipelineSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return ScalingView(), []  # the reconcile reports the invalid spec
    status = PipelineStatus.model_validate(body.get("status") or {})
    scaler.restore(status.groups)
    events = []
    streams = models = observation = None
    if status.groups and scaler.due(spec, time.monotonic()):
        meta = body["metadata"]
        for change in scaler.step(
            kube,
            meta["namespace"],
            meta["name"],
            spec,
            status.groups,
            snapshot.nodes,
            metrics,
            settings.prometheus_url,
            snapshot.pods,
            snapshot.gpu_requests,
        ):
            kind = (
                "Degraded" if change.decision.degradation != change.before.degradation else "Scaled"
            )
            events.append(Event("Normal", kind, f"group {change.group}: {change.decision.reason}"))
        if spec.autoscaling.prometheus_url or settings.prometheus_url:
            streams = stream_reports(kube, meta["namespace"], status.groups, snapshot.pods)
            if spec.rollout is not None:  # a rollout compares the workers' own counters
                observation = _scrape_workers(kube, meta["namespace"], status, snapshot)
        else:  # the step scraped every ready worker pod: their pages are this tick's health
            streams = streamhealth.reports(scaler.scrapes, since=scaler.last_run)
            models = modelvariants.reports(scaler.scrapes, since=scaler.last_run)
            observation = Observation(
                {g: dict(pods) for g, pods in scaler.scrapes.items()},
                scaler.last_run,
                time.monotonic(),
            )
    view = ScalingView(
        decisions=dict(scaler.decisions),
        reasons=dict(scaler.reasons),
        held_reason=scaler.held_reason,
        p99_ms=scaler.p99_ms,
        queue_depth=scaler.queue_depth,
        streams=streams,
        models=models,
        observation=observation,
    )
    return view, events


def _scrape_workers(
    kube: Kube, namespace: str, status: PipelineStatus, snapshot: Snapshot
) -> Observation:
    """Every ready worker's ``/metrics`` by group, for a rollout whose autoscaling reads
    Prometheus (which the scaler then does not scrape)."""
    started = time.monotonic()
    scrapes = {}
    for group in status.groups:
        pods = None if snapshot.pods is None else snapshot.pods.get(group.name, [])
        urls = worker_urls(kube, namespace, group.name, "/metrics", pods)
        found = fetch_each(urls, scrape)
        scrapes[group.name] = {pod: s for pod, s in found.items() if s is not None}
    return Observation(scrapes, started, time.monotonic())


# -- triggers: changes that can alter a Pipeline's plan ---------------------------------------


@kopf.on.event(GROUP, VERSION, "pipelines")
async def pipeline_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.fire(pipeline_key(namespace, name))


@kopf.on.event(GROUP, VERSION, "cameras")
async def camera_event(
    type: str,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    pipeline_index: kopf.Index[str, str],
    **_: Any,
) -> None:
    """Every Camera event: wake the Pipelines it concerns, queue its status. One handler, not
    two: each replica sees every Camera event of a burst (tens of thousands at 10,000 Cameras)
    and kopf spends its own time on every handler call."""
    _wake_pipelines(type, body, memo)
    _queue_status(type, body, namespace, name, memo, pipeline_index)


def _wake_pipelines(type: str, body: kopf.Body, memo: kopf.Memo) -> None:
    """Only what plans depend on (spec, labels, placements) wakes Pipelines, and only those
    that select the Camera (before or after the change) or have it assigned: the stream health
    they write themselves must not start a reconcile of every Pipeline, nor one Camera of
    10,000 a reconcile of all of them."""
    namespace = body.metadata.namespace
    key = (namespace, body.metadata.name)
    before = memo.camera_facts.get(key)
    if type == "DELETED":
        memo.camera_facts.pop(key, None)
        after = None
    else:
        after = _camera_facts(body.metadata.labels, body.meta, body.status)
        if before == after:
            return
        memo.camera_facts[key] = after
    seen = [f for f in (before, after) if f is not None]
    memo.triggers.fire_selecting(
        namespace,
        [dict(f[1]) for f in seen],
        {placement[0] for f in seen for placement in f[2]},
    )


def _camera_facts(labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status) -> tuple[Any, ...]:
    placements = sorted(
        (a.pipeline, a.workload, a.shard) for a in cameras.assignments(dict(status)).values()
    )
    return (meta.get("generation"), tuple(sorted(dict(labels).items())), tuple(placements))


@kopf.on.event(GROUP, VERSION, "modelvariants")
async def variant_changed(namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.fire_namespace(namespace)


@kopf.on.event("", "v1", "nodes")
async def node_changed(
    name: str,
    type: str,
    labels: kopf.Labels,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Only placement facts matter: a kubelet heartbeat must not wake every Pipeline."""
    facts = None if type == "DELETED" else node_info(name, dict(labels), spec, status)
    if memo.node_facts.get(name) != facts:
        memo.node_facts[name] = facts
        memo.triggers.fire_all()


@kopf.on.event(
    "apps",
    "v1",
    "statefulsets",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, PIPELINE_LABEL: kopf.PRESENT},
)
async def workload_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """Ready replicas changed, or someone edited or deleted a workload: reconcile its owner."""
    memo.triggers.fire(pipeline_key(namespace, labels[PIPELINE_LABEL]))


# -- status of Cameras and ModelVariants -------------------------------------------------------


def _sync_status(kube: Kube, kind: Kind, body: Any, owner: ModuleType) -> None:
    """Apply ``owner.desired_status`` when it differs from what is there (else no write, so
    our own status updates, which come back as events, do not loop). Only onto the version
    ``body`` shows: a body that went stale while queued (a Pipeline placed the Camera
    meanwhile) must not overwrite the newer status; its event brings the object again."""
    obj = dict(body)
    desired = owner.desired_status(obj)
    if desired != owner.current_status(obj):
        meta = obj["metadata"]
        version = meta.get("resourceVersion")
        try:
            kube.apply_status(kind, meta["namespace"], meta["name"], desired, None, version)
        except ApiException as exc:
            if exc.status != 409:
                raise


def _queue_status(
    type: str,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    pipeline_index: kopf.Index[str, str],
) -> None:
    """Queue the Camera for :func:`_flush_camera_status` (its shard's replica only)."""
    # a live view, complete before any handler runs; kopf gives each handler a shallow copy
    # of the memo, so it is shared through a dict made at start-up
    memo.pipelines_seen["index"] = pipeline_index
    queue: StatusQueue = memo.camera_queue
    if type == "DELETED" or not memo.shards.owns(namespace, name):
        queue.discard((namespace, name))  # its shard's owner writes it (from newer events)
    else:
        obj = dict(body)  # each event brings a fresh body: nothing mutates this one later
        if queue.put((namespace, name), obj, time.monotonic(), _hold(memo, obj)):
            memo.camera_wake.set()  # nothing more to wait for: write it now


_AWAIT_ASSIGNMENT_SECONDS = 30.0
"""How long a new Camera (or one a Pipeline selects) waits for its assignment before its
status says NoPipeline: the assignment normally comes within seconds (within ten, in a 500-Camera
burst on two loaded cores), and writing Ready=False first would double the Camera's status
writes."""

_BURST_QUEUED_CAMERAS = 200
"""Queued Cameras from which a replica is in a burst (a GitOps sync of a fleet)."""

_AWAIT_ASSIGNMENT_IN_BURST_SECONDS = 180.0
"""The wait for an assignment during a burst: the Pipelines' assignment writes queue behind
thousands of others (at 10,000 Cameras they came ~2 minutes after the Camera), and a
NoPipeline write for each Camera meanwhile would add a third of the burst's writes, slowing
every assignment further."""


def _hold(memo: kopf.Memo, body: dict[str, Any]) -> float:
    """How long a Camera's status may wait for more changes: none once it is assigned (the
    change a new Camera waits for came); a new Camera that a Pipeline selects waits for its
    assignment (so created + assigned is one write), longer in a burst; any other change a
    short while."""
    settings: OperatorSettings = memo.settings
    if (body.get("status") or {}).get("assignments"):
        return 0.0
    if _awaiting_assignment(memo, body):
        burst = len(memo.camera_queue) >= _BURST_QUEUED_CAMERAS
        wait = _AWAIT_ASSIGNMENT_IN_BURST_SECONDS if burst else _AWAIT_ASSIGNMENT_SECONDS
        return max(settings.status_coalesce_seconds, wait)
    return settings.status_coalesce_seconds


async def _flush_camera_status(memo: kopf.Memo) -> None:
    """Write the queued Cameras' status, coalesced: a Camera is written once its first queued
    change is ``status_coalesce_seconds`` old (with its latest body), so a burst of changes to
    one Camera is one write. The queue holds one entry per Camera (bounded)."""
    settings: OperatorSettings = memo.settings
    queue: StatusQueue = memo.camera_queue
    tick = max(settings.status_coalesce_seconds / 2, 0.05)
    while True:
        with contextlib.suppress(TimeoutError):  # every tick, or when one is due at once
            await asyncio.wait_for(memo.camera_wake.wait(), tick)
        memo.camera_wake.clear()
        now = time.monotonic()
        # a shard handed over meanwhile: its new owner lists and writes its Cameras
        due = [(key, body) for key, body in queue.take(now) if memo.shards.owns(*key)]
        index: kopf.Index[str, str] | None = memo.pipelines_seen.get("index")
        if due and index is None:  # no Camera event yet (only a takeover's list): next tick
            for key, body in due:
                queue.put(key, body, now, tick)
        elif due and index is not None:
            live = {(ns, p) for ns in {key[0] for key, _ in due} for p in index.get(ns, [])}
            try:
                failed = await asyncio.to_thread(
                    side_by_side,
                    functools.partial(_write_camera_status, memo, live),
                    due,
                    settings.status_writers,
                )
            except Exception:  # a bug must not end the flusher: try them all again later
                log.exception("camera status flush failed")
                failed = [True] * len(due)
            for (key, body), failure in zip(due, failed, strict=True):
                if failure:
                    queue.requeue(key, body, time.monotonic(), _RETRY_SECONDS)


def _awaiting_assignment(memo: kopf.Memo, body: dict[str, Any]) -> bool:
    """A Camera with no assignment yet (and not paused) that some live Pipeline selects, or
    that is new: a GitOps sync applies Pipelines and Cameras together, and the Pipelines'
    events may reach the operator after their Cameras'."""
    status = body.get("status") or {}
    if status.get("assignments") or (body.get("spec") or {}).get("paused"):
        return False
    if not status.get("conditions"):
        return True
    meta = body["metadata"]
    triggers: Triggers = memo.triggers
    return triggers.selected(meta["namespace"], meta.get("labels") or {})


_RETRY_SECONDS = 1.0
"""How long a Camera whose status write failed waits before the next try."""


def _write_camera_status(
    memo: kopf.Memo, live: set[tuple[str, str]], due: tuple[Any, dict[str, Any]]
) -> bool:
    """Keep sourceHost, observedGeneration and Ready current, and drop the assignments of
    Pipelines that are gone (their deletion may have happened while no operator ran, or
    between kopf releasing the finalizer and :func:`pipeline_deleted`; kopf lists every Camera
    again after a restart, so this heals them). Runs in a worker thread; returns whether the
    write failed, for the event loop to queue the Camera again."""
    (namespace, name), body = due
    try:
        with memo.operator_metrics.reconciling("camera"):
            assigned = set(cameras.assignments(dict(body.get("status") or {})))
            for pipeline in assigned - {p for ns, p in live if ns == namespace}:
                manager = camera_field_manager(memo.settings, pipeline)
                status = cameras.entry_write_for(body, pipeline, None)
                body = memo.kube.apply_status(CAMERAS, namespace, name, status, manager)
            _sync_status(memo.kube, CAMERAS, body, cameras)
    except ApiException as exc:
        if exc.status == 404:
            return False
        log.warning("camera %s/%s status not written (%s); retrying", namespace, name, exc.status)
        return True
    except (OSError, HTTPError) as exc:
        log.warning("camera %s/%s status not written (%s); retrying", namespace, name, exc)
        return True
    return False


@kopf.on.event(GROUP, VERSION, "modelvariants", when=lambda type, **_: type != "DELETED")
def variant_status(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Keep the hardware summary, observedGeneration and Ready current."""
    if not memo.shards.owns(namespace, name):
        return
    with memo.operator_metrics.reconciling("modelvariant"):
        _sync_status(memo.kube, MODELVARIANTS, body, modelvariants)


@kopf.on.event(GROUP, VERSION, "pipelines", when=lambda type, **_: type == "DELETED")
def pipeline_deleted(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    camera_index: kopf.Index[Any, CameraRecord],
    **_: Any,
) -> None:
    """Drop the deleted Pipeline's entries from Camera status (its objects are GC'd)."""
    memo.applied.forget_pipeline(namespace, name)
    if not memo.shards.owns(namespace, name):
        return
    manager = camera_field_manager(memo.settings, name)
    with memo.operator_metrics.reconciling("pipeline"):
        for record in list(camera_index.get(("assigned", namespace, name), [])):
            if name in record.assignments:
                status = record.entry_write(name, None)
                try:
                    apply_camera_assignment(
                        memo.kube, namespace, record.camera.name, status, manager
                    )
                except ApiException as exc:
                    if exc.status != 404:  # gone too (its namespace is being deleted): done
                        raise
