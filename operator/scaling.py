"""The autoscaling step of a Pipeline: read each worker group's signals, decide, and hand the
decisions to the next reconcile. Runs in the Pipeline's reconciler thread.

Decisions live in memory (one :class:`PipelineScaler` per Pipeline, in kopf's memo) and in the
Pipeline's status (``groups[].replicas`` / ``groups[].degradation``), from which they are
restored after an operator restart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubevision.api.pipeline import Autoscaling, GroupStatus, PipelineSpec
from kubevision.api.worker_config import CONFIG_FILE, WorkerConfig
from kubevision.operator.autoscaler import Autoscaler, Decision, Policy
from kubevision.operator.builders import GROUP_LABEL
from kubevision.operator.hardware import GPU_RESOURCE, NodeInfo
from kubevision.operator.kube import CONFIGMAPS, PODS, Kube
from kubevision.operator.planner import GroupScaling
from kubevision.operator.signals import (
    CameraHealth,
    GroupSignals,
    PrometheusSource,
    Scrape,
    combine,
    read_status,
    scrape,
)

log = logging.getLogger("kubevision.operator.scaling")
_SCRAPE_THREADS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class ScalingEvent:
    group: str
    decision: Decision
    before: GroupScaling


ReconciledKind = Literal["camera", "pipeline", "modelvariant"]


class OperatorMetrics:
    """The operator's own metrics about its decisions and reconciles (labels: pipeline, group,
    direction, kind, result; groups of a Pipeline are forgotten when they go, so the label sets
    stay those of live groups)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "kubevision_operator_reconciles",
            "Reconciles by kind (camera, pipeline, modelvariant) and result (ok, error).",
            ["kind", "result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "kubevision_operator_reconcile_duration_seconds",
            "Time one reconcile took, by kind (a Pipeline's includes its autoscaling step).",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        for kind in get_args(ReconciledKind):  # exported at 0, so an error rate is never empty
            for result in ("ok", "error"):
                self.reconciles.labels(kind, result)
        self.ready = Gauge(
            "kubevision_operator_ready_replicas",
            "Ready worker replicas per group (its StatefulSet's readyReplicas).",
            ["pipeline", "group"],
            registry=registry,
        )
        self.capacity_short = Gauge(
            "kubevision_operator_capacity_short_replicas",
            "Replicas the autoscaler wants beyond what maxReplicas and free nvidia.com/gpu "
            "allow (0 when none).",
            ["pipeline", "group"],
            registry=registry,
        )
        self.decisions = Counter(
            "kubevision_operator_scaling_decisions",
            "Scaling decisions that changed a group.",
            ["pipeline", "direction"],
            registry=registry,
        )
        self.desired = Gauge(
            "kubevision_operator_desired_replicas",
            "Replicas the autoscaler wants per group.",
            ["pipeline", "group"],
            registry=registry,
        )
        self.degradation = Gauge(
            "kubevision_operator_degradation_steps",
            "Degradation steps engaged per group.",
            ["pipeline", "group"],
            registry=registry,
        )
        self._groups: dict[str, set[str]] = {}

    @contextmanager
    def reconciling(self, kind: ReconciledKind) -> Iterator[None]:
        """Count the enclosed reconcile as ok, or as error when it raises (re-raised; a
        cancellation, which is no failure, counts as neither)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.reconciles.labels(kind, "error").inc()
            raise
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)
        self.reconciles.labels(kind, "ok").inc()

    def observe_groups(self, pipeline: str, ready: Mapping[str, int]) -> None:
        """Ready replicas of the Pipeline's current groups; series of its gone groups go."""
        for group, replicas in ready.items():
            self.ready.labels(pipeline, group).set(replicas)
        for gone in self._groups.get(pipeline, set()) - set(ready):
            self._remove(pipeline, gone)
        self._groups[pipeline] = set(ready)

    def forget(self, pipeline: str) -> None:
        """The Pipeline is gone: drop every per-group series it had."""
        for group in self._groups.pop(pipeline, set()):
            self._remove(pipeline, group)

    def _remove(self, pipeline: str, group: str) -> None:
        for gauge in (self.ready, self.capacity_short, self.desired, self.degradation):
            with suppress(KeyError):  # prometheus-client < 0.22 raises for a series never set
                gauge.remove(pipeline, group)


def policy(autoscaling: Autoscaling, target_p99_ms: float, ladder: tuple[Any, ...]) -> Policy:
    return Policy(
        target_p99_ms=target_p99_ms,
        min_replicas=max(autoscaling.min_replicas, 1),
        max_replicas=autoscaling.max_replicas,
        ladder=ladder,
        tolerance=autoscaling.tolerance,
        max_step=autoscaling.max_step,
        scale_up_window=autoscaling.scale_up_stabilization_seconds,
        scale_down_window=autoscaling.scale_down_stabilization_seconds,
    )


@dataclass
class PipelineScaler:
    """Per-Pipeline autoscaling state: scalers and last scrapes by group, and the decisions."""

    decisions: dict[str, GroupScaling] = field(default_factory=dict)
    scalers: dict[str, Autoscaler] = field(default_factory=dict)
    scrapes: dict[str, dict[str, Scrape]] = field(default_factory=dict)
    last_run: float = 0.0
    held_reason: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    """The latest changed decision's reason per group (for status and events)."""
    observed: dict[str, GroupSignals] = field(default_factory=dict)

    def restore(self, groups: list[GroupStatus]) -> None:
        """After a restart: continue from what the status says measured load decided."""
        for g in groups:
            if g.scaled_by == "metrics" or g.degradation:
                self.decisions.setdefault(g.name, GroupScaling(g.replicas, tuple(g.degradation)))

    @property
    def p99_ms(self) -> float | None:
        """The worst group's end-to-end p99 (what the Pipeline's printer column shows)."""
        values = [s.p99_ms for s in self.observed.values() if s.p99_ms is not None]
        return round(max(values), 1) if values else None

    @property
    def queue_depth(self) -> float | None:
        return sum(s.queue_depth for s in self.observed.values()) if self.observed else None

    def due(self, spec: PipelineSpec, now: float) -> bool:
        return now - self.last_run >= spec.autoscaling.metrics_interval_seconds

    def step(
        self,
        kube: Kube,
        namespace: str,
        pipeline: str,
        spec: PipelineSpec,
        groups: list[GroupStatus],
        nodes: list[NodeInfo],
        metrics: OperatorMetrics,
        prometheus_url: str | None,
        pods: Mapping[str, list[dict[str, Any]]] | None = None,
        gpu_requests: Mapping[str, int] | None = None,
    ) -> list[ScalingEvent]:
        """Read signals and decide for every group; returns the decisions that changed.
        ``pods`` (worker pods by group) and ``gpu_requests`` (GPUs requested per node) come
        from the operator's watches; None lists them."""
        now = time.monotonic()
        self.last_run = now
        ladder = tuple(spec.degradation.allowed)
        events, held = [], []
        url = spec.autoscaling.prometheus_url or prometheus_url
        for group in groups:
            scaler = self.scalers.get(group.name)
            wanted_policy = policy(spec.autoscaling, spec.slo.p99_latency_ms, ladder)
            if scaler is None or scaler.policy != wanted_policy:
                scaler = self.scalers[group.name] = Autoscaler(wanted_policy)
            current = self.decisions.get(group.name, GroupScaling(group.replicas))
            group_pods = None if pods is None else pods.get(group.name, [])
            signals = self._signals(kube, namespace, pipeline, group, url, group_pods)
            if signals is not None:
                self.observed[group.name] = signals
            capacity = (
                _capacity(kube, group, nodes, gpu_requests)
                if group.hardware_class == "nvidia-gpu"
                else None
            )
            decision = scaler.decide(now, current.replicas, current.degradation, signals, capacity)
            if decision.held:
                held.append(f"{group.name}: {decision.reason}")
            metrics.desired.labels(pipeline, group.name).set(decision.replicas)
            metrics.degradation.labels(pipeline, group.name).set(len(decision.degradation))
            if not decision.held:  # a hold knows nothing new about capacity
                metrics.capacity_short.labels(pipeline, group.name).set(decision.short)
            if decision.changed_from(current.replicas, current.degradation):
                self.decisions[group.name] = GroupScaling(decision.replicas, decision.degradation)
                self.reasons[group.name] = decision.reason
                direction = (
                    "up"
                    if decision.replicas > current.replicas
                    else "down"
                    if decision.replicas < current.replicas
                    else "degradation"
                )
                metrics.decisions.labels(pipeline, direction).inc()
                events.append(ScalingEvent(group.name, decision, current))
        self.held_reason = "; ".join(held) or None
        live = {g.name for g in groups}
        for stale in [g for g in self.scalers if g not in live]:  # bounded by live groups
            self.scalers.pop(stale)
            self.scrapes.pop(stale, None)
            self.decisions.pop(stale, None)
            self.reasons.pop(stale, None)
            self.observed.pop(stale, None)
        return events

    def _signals(
        self,
        kube: Kube,
        namespace: str,
        pipeline: str,
        group: GroupStatus,
        prometheus_url: str | None,
        pods: list[dict[str, Any]] | None,
    ) -> GroupSignals | None:
        if prometheus_url:
            cameras = _group_cameras(kube, namespace, group.name)
            return PrometheusSource(prometheus_url).signals(pipeline, cameras)
        urls = worker_urls(kube, namespace, group.name, "/metrics", pods)
        scraped = fetch_each(urls, scrape)
        current = {pod: s for pod, s in scraped.items() if s is not None}
        previous = self.scrapes.get(group.name, {})
        # each ready pod keeps its last good scrape as its baseline, so one missed scrape does
        # not turn a long-running pod's whole lifetime into "the last window"
        self.scrapes[group.name] = {
            pod: current.get(pod) or previous[pod]
            for pod in scraped
            if pod in current or pod in previous
        }
        if not previous:
            return None  # the first look only sets the baseline for the next window
        return combine(previous, current)


def worker_urls(
    kube: Kube,
    namespace: str,
    group: str,
    path: str,
    pods: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Each ready worker pod of ``group`` -> the URL of ``path`` on its metrics port
    (``pods``: the group's pods from the operator's watch; None lists them)."""
    if pods is None:
        pods = kube.list_labeled(PODS, namespace, f"{GROUP_LABEL}={group}")
    return {
        p["metadata"]["name"]: f"http://{p['status']['podIP']}:9090{path}"
        for p in pods
        if _ready(p) and p["status"].get("podIP")
    }


def fetch_each(urls: Mapping[str, str], read: Callable[[str], T]) -> dict[str, T]:
    """``read`` of every URL, in parallel (bounded): one slow pod must not hold up the tick."""
    with ThreadPoolExecutor(max_workers=min(_SCRAPE_THREADS, max(len(urls), 1))) as pool:
        return dict(zip(urls, pool.map(read, urls.values()), strict=True))


def stream_reports(
    kube: Kube,
    namespace: str,
    groups: list[GroupStatus],
    pods: Mapping[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Mapping[str, CameraHealth] | None]:
    """Stream health by ready worker pod from their ``/status`` (when signals come from
    Prometheus, which has no error text, so the workers' /metrics are not scraped)."""
    urls = {
        pod: url
        for g in groups
        for pod, url in worker_urls(
            kube, namespace, g.name, "/status", None if pods is None else pods.get(g.name, [])
        ).items()
    }
    return fetch_each(urls, read_status)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _group_cameras(kube: Kube, namespace: str, group: str) -> list[str]:
    """The group's cameras, as its ConfigMap assigns them (the labels Prometheus has)."""
    configmap = kube.get(CONFIGMAPS, namespace, group)
    if configmap is None:
        return []
    config = WorkerConfig.model_validate(json.loads(configmap["data"][CONFIG_FILE]))
    return sorted(config.assignments())


def _capacity(
    kube: Kube,
    group: GroupStatus,
    nodes: list[NodeInfo],
    gpu_requests: Mapping[str, int] | None = None,
) -> int:
    """Replicas the GPU nodes of the group's class and site can hold: its current replicas
    plus the GPUs not yet requested by any pod on those nodes (``gpu_requests``: per node,
    from the operator's pod watch; None lists the nodes' pods)."""
    candidates = {
        n.name: n.gpus
        for n in nodes
        if n.schedulable
        and n.hardware_class == "nvidia-gpu"
        and (group.site is None or n.site == group.site)
    }
    if gpu_requests is not None:
        used = sum(gpu_requests.get(name, 0) for name in candidates)
        return group.replicas + max(sum(candidates.values()) - used, 0)
    used = 0
    for name in candidates:
        for pod in kube.list_all(PODS, field_selector=f"spec.nodeName={name}"):
            for container in pod["spec"].get("containers", []):
                limits = (container.get("resources") or {}).get("limits") or {}
                used += int(limits.get(GPU_RESOURCE, 0))
    return group.replicas + max(sum(candidates.values()) - used, 0)
