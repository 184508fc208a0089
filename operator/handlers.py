"""kopf registrations: start-up, indexes of the cluster's actual state, and the triggers that
wake each Pipeline's reconciler.

Index functions only project objects onto small frozen records (they are never retried, so
they never raise). Reconciles run in worker threads with snapshots of the indexes; everything
touching asyncio state stays on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import ModuleType
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY, start_http_server
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from kubevision.api import GROUP, VERSION
from kubevision.api.camera import CameraSpec
from kubevision.api.modelvariant import ModelVariantSpec, ModelVariantStatus
from kubevision.api.pipeline import PipelineSpec, PipelineStatus
from kubevision.operator import cameras, modelvariants, streamhealth
from kubevision.operator.builders import MANAGED_BY, PIPELINE_LABEL
from kubevision.operator.hardware import NodeInfo, node_info
from kubevision.operator.kube import CAMERAS, MODELVARIANTS, PIPELINES, Kind, Kube
from kubevision.operator.pipelines import (
    CameraRecord,
    Event,
    ScalingView,
    Snapshot,
    apply_camera_assignment,
    camera_field_manager,
    reconcile_pipeline,
)
from kubevision.operator.planner import Camera
from kubevision.operator.scaling import OperatorMetrics, PipelineScaler, stream_reports
from kubevision.operator.selection import Variant
from kubevision.operator.settings import OperatorSettings
from kubevision.operator.triggers import Triggers, pipeline_key

log = logging.getLogger("kubevision.operator")
NODES = "nodes"
"""The single key of the node index: placement looks at every node."""
_MAX_BACKOFF = 60.0
_MIN_WAKE_SECONDS = 0.2


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
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
    memo.kube = Kube.connect(operator_settings.field_manager)
    memo.triggers = Triggers()
    memo.node_facts = {}
    memo.camera_facts = {}
    memo.operator_metrics = OperatorMetrics(REGISTRY)
    if operator_settings.operator_metrics_port:
        start_http_server(operator_settings.operator_metrics_port)


# -- indexes: the actual state, kept current by kopf's watches -------------------------------


@kopf.index(GROUP, VERSION, "cameras")
def camera_index(
    namespace: str,
    name: str,
    labels: kopf.Labels,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[str, CameraRecord]:
    try:
        parsed = CameraSpec.model_validate(dict(spec))
    except ValidationError as exc:
        log.warning("camera %s/%s ignored: %s", namespace, name, exc.errors()[0]["msg"])
        return {}
    record = CameraRecord(Camera(name, dict(labels), parsed), cameras.assignments(dict(status)))
    return {namespace: record}


@kopf.index(GROUP, VERSION, "modelvariants")
def variant_index(
    namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, Variant]:
    try:
        parsed = ModelVariantSpec.model_validate(dict(spec))
        observed = ModelVariantStatus.model_validate(dict(status))
    except ValidationError as exc:
        log.warning("modelvariant %s/%s ignored: %s", namespace, name, exc.errors()[0]["msg"])
        return {}
    return {namespace: Variant(name, parsed, observed)}


@kopf.index(GROUP, VERSION, "pipelines")
def pipeline_index(namespace: str, name: str, **_: Any) -> dict[str, str]:
    """Pipelines that exist, so Camera status can shed entries of deleted ones."""
    return {namespace: name}


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
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    camera_index: kopf.Index[str, CameraRecord],
    variant_index: kopf.Index[str, Variant],
    node_index: kopf.Index[str, NodeInfo],
    **_: Any,
) -> None:
    """Reconcile on every trigger and at least every resync period; back off on errors."""
    key = pipeline_key(namespace, name)
    triggers: Triggers = memo.triggers
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    scaler = PipelineScaler()
    ledger = streamhealth.StreamLedger()
    metrics: OperatorMetrics = memo.operator_metrics
    triggers.register(key)
    backoff, interval = 1.0, settings.resync_seconds
    try:
        while not stopped:
            await triggers.wait(key, timeout=interval if backoff == 1.0 else backoff)
            snapshot = Snapshot(
                cameras=list(camera_index.get(namespace, [])),
                variants=list(variant_index.get(namespace, [])),
                nodes=list(node_index.get(NODES, [])),
            )
            try:
                with metrics.reconciling("pipeline"):
                    body = await asyncio.to_thread(kube.get, PIPELINES, namespace, name)
                    if body is None:
                        return  # deleted; kopf stops this daemon too
                    view, scaled = await asyncio.to_thread(
                        _autoscale, kube, settings, scaler, body, snapshot, metrics
                    )
                    outcome = await asyncio.to_thread(
                        reconcile_pipeline, kube, settings, body, snapshot, view, ledger
                    )
            except (ApiException, OSError, HTTPError) as exc:  # the API is away, not a bug
                backoff = min(backoff * 2, _MAX_BACKOFF)
                logger.warning("reconcile failed (%s); retrying in %.0fs", exc, backoff)
                continue
            except Exception:  # a bug must not kill the reconciler or make it spin
                backoff = min(backoff * 2, _MAX_BACKOFF)
                logger.exception("reconcile crashed; retrying in %.0fs", backoff)
                continue
            backoff = 1.0
            if outcome.ready_replicas is not None:
                metrics.observe_groups(name, outcome.ready_replicas)
            # wake exactly when the next autoscaling step is due (never later); a Pipeline
            # without groups has nothing to scale and waits for the resync (else a hot loop)
            interval = settings.resync_seconds
            if outcome.ready_replicas:
                until_due = _metrics_interval(body) - (time.monotonic() - scaler.last_run)
                interval = min(interval, max(_MIN_WAKE_SECONDS, until_due))
            for event in [*scaled, *outcome.events]:
                kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            for about in outcome.camera_events:
                kopf.event(about.camera, type=about.event.type, reason=about.event.reason,
                           message=about.event.message)  # fmt: skip
    finally:
        triggers.unregister(key)
        metrics.forget(name)


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
    streams = models = None
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
        ):
            kind = (
                "Degraded" if change.decision.degradation != change.before.degradation else "Scaled"
            )
            events.append(Event("Normal", kind, f"group {change.group}: {change.decision.reason}"))
        if spec.autoscaling.prometheus_url or settings.prometheus_url:
            streams = stream_reports(kube, meta["namespace"], status.groups)
        else:  # the step scraped every ready worker pod: their pages are this tick's health
            streams = streamhealth.reports(scaler.scrapes, since=scaler.last_run)
            models = modelvariants.reports(scaler.scrapes, since=scaler.last_run)
    view = ScalingView(
        decisions=dict(scaler.decisions),
        reasons=dict(scaler.reasons),
        held_reason=scaler.held_reason,
        p99_ms=scaler.p99_ms,
        queue_depth=scaler.queue_depth,
        streams=streams,
        models=models,
    )
    return view, events


# -- triggers: changes that can alter a Pipeline's plan ---------------------------------------


@kopf.on.event(GROUP, VERSION, "pipelines")
async def pipeline_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.fire(pipeline_key(namespace, name))


@kopf.on.event(GROUP, VERSION, "cameras")
async def camera_changed(
    type: str,
    namespace: str,
    name: str,
    labels: kopf.Labels,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Only what plans depend on (spec, labels, placements) wakes the namespace's Pipelines:
    the stream health they write themselves must not start a reconcile of every Pipeline."""
    key = (namespace, name)
    if type == "DELETED":
        memo.camera_facts.pop(key, None)
    else:
        facts = _camera_facts(labels, meta, status)
        if memo.camera_facts.get(key) == facts:
            return
        memo.camera_facts[key] = facts
    memo.triggers.fire_namespace(namespace)


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


def _sync_status(kube: Kube, kind: Kind, body: kopf.Body, owner: ModuleType) -> None:
    """Apply ``owner.desired_status`` when it differs from what is there (else no write, so
    our own status updates, which come back as events, do not loop)."""
    obj = dict(body)
    desired = owner.desired_status(obj)
    if desired != owner.current_status(obj):
        meta = obj["metadata"]
        kube.apply_status(kind, meta["namespace"], meta["name"], desired)


@kopf.on.event(GROUP, VERSION, "cameras", when=lambda type, **_: type != "DELETED")
def camera_status(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    pipeline_index: kopf.Index[str, str],
    **_: Any,
) -> None:
    """Keep sourceHost, observedGeneration and Ready current, and drop the assignments of
    Pipelines that are gone (their deletion may have happened while no operator ran, or
    between kopf releasing the finalizer and :func:`pipeline_deleted`; kopf lists every Camera
    again after a restart, so this heals them)."""
    live = set(pipeline_index.get(namespace, []))
    with memo.operator_metrics.reconciling("camera"):
        for pipeline in set(cameras.assignments(dict(body.get("status") or {}))) - live:
            manager = camera_field_manager(memo.settings, pipeline)
            apply_camera_assignment(memo.kube, namespace, name, None, manager)
        _sync_status(memo.kube, CAMERAS, body, cameras)


@kopf.on.event(GROUP, VERSION, "modelvariants", when=lambda type, **_: type != "DELETED")
def variant_status(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the hardware summary, observedGeneration and Ready current."""
    with memo.operator_metrics.reconciling("modelvariant"):
        _sync_status(memo.kube, MODELVARIANTS, body, modelvariants)


@kopf.on.event(GROUP, VERSION, "pipelines", when=lambda type, **_: type == "DELETED")
def pipeline_deleted(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    camera_index: kopf.Index[str, CameraRecord],
    **_: Any,
) -> None:
    """Drop the deleted Pipeline's entries from Camera status (its objects are GC'd)."""
    manager = camera_field_manager(memo.settings, name)
    with memo.operator_metrics.reconciling("pipeline"):
        for record in list(camera_index.get(namespace, [])):
            if name in record.assignments:
                apply_camera_assignment(memo.kube, namespace, record.camera.name, None, manager)
