"""Operator settings, read once at start-up from ``KUBEVISION_*`` environment variables."""

from __future__ import annotations

import importlib.metadata
import os
import socket

from pydantic import BaseModel, Field, model_validator

from kubevision.api.modelvariant import HardwareClass

_VERSION = importlib.metadata.version("kubevision")
_IMAGE = "ghcr.io/kubevision/worker"
_IMAGES: dict[HardwareClass, str] = {
    "cpu": f"{_IMAGE}:{_VERSION}",
    "nvidia-gpu": f"{_IMAGE}:{_VERSION}-cuda",
    "jetson": f"{_IMAGE}:{_VERSION}-l4t-r36",  # arm64, JetPack 6 base
}


class OperatorSettings(BaseModel):
    """What the chart (or a developer) may change without touching code."""

    worker_images: dict[HardwareClass, str] = Field(default_factory=lambda: dict(_IMAGES))
    """Worker image per hardware class (a Pipeline's spec.workerImage overrides it)."""
    field_manager: str = "kubevision-operator"
    """Server-side apply field manager for everything the operator writes."""
    resync_seconds: float = Field(default=60, gt=0)
    """Reconcile every Pipeline at least this often, even without a change."""
    metrics_port: int = 9090
    """Port of the workers' metrics endpoint (what the autoscaler scrapes)."""
    operator_metrics_port: int | None = 8081
    """Where the operator serves its own metrics (None: not at all)."""
    handover_seconds: float = Field(default=90, ge=0)
    """How long retiring replicas keep serving after their cameras got new homes: a worker's
    config poll plus the kubelet's ConfigMap refresh (about a minute by default)."""
    prometheus_url: str | None = None
    """Read workers' signals from this Prometheus instead of scraping them (a Pipeline's
    spec.autoscaling.prometheusUrl wins)."""
    jetson_runtime_class: str = "nvidia"
    engine_cache_host_path: str | None = None
    """Keep GPU workers' TensorRT engines in this node folder (hostPath), so each node builds an
    engine once. None (the default): a per-pod emptyDir, as Pod Security "restricted" allows
    no hostPath volumes."""
    spool_host_path: str | None = None
    """Keep disk spools in this node folder (hostPath; it must exist, writable by UID 65532),
    so a worker's undelivered events outlive its pod on that node. None (the default): an
    emptyDir, or a Pipeline's spec.spool.persistentVolumeClaim."""
    models_claim_name: str | None = None
    """A PersistentVolumeClaim of model files, mounted read-only at ``/models`` in every worker
    pod (where ``file:///models/...`` artifact URIs point). None (the default): no volume."""
    models_host_path: str | None = None
    """A node folder of model files (hostPath, read-only at ``/models``), for nodes
    provisioned with their models; it needs a namespace Pod Security "baseline" admits."""
    artifact_cache_host_path: str | None = None
    """Keep downloaded (http(s)://, s3://) artifacts in this node folder (hostPath; it must
    exist, writable by UID 65532), so each node fetches a model once, for every hardware class.
    None (the default): a per-pod emptyDir (or the engine cache on GPU and Jetson workers)."""
    snapshot_host_path: str | None = None
    """Keep node snapshots (a Pipeline's spec.snapshots storage node) in this node folder
    (hostPath; it must exist, writable by UID 65532). None (the default): a per-pod emptyDir
    as large as the Pipeline's spec.snapshots.maxBytes."""

    shards: int = Field(default=1, ge=1, le=1024)
    """How many shards the Pipelines, Cameras and ModelVariants are split into; with more than
    one, each replica reconciles the shards it holds a Lease for (:mod:`.shards`)."""
    shard_lease_seconds: float = Field(default=15, ge=3)
    """A shard Lease's duration: a dead replica's shards move after about this long."""
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This replica's name among the shard members (the pod name in a cluster)."""
    lease_namespace: str = "kubevision-system"
    """Where the shard Leases live (the operator's namespace)."""
    status_coalesce_seconds: float = Field(default=1.0, ge=0)
    """Camera status writes wait this long, so a burst of changes to one Camera (created,
    then assigned) becomes one write."""
    max_concurrent_reconciles: int = Field(default=4, ge=1)
    """Pipeline reconciles running at once (each Pipeline has at most one pending trigger, so
    the work queue is bounded by the number of Pipelines)."""
    status_writers: int = Field(default=8, ge=1)
    """Camera status writes in flight at once (each a round trip to the apiserver: written one
    after another, a burst of thousands of Cameras waits on latency, not on the server)."""

    @model_validator(mode="after")
    def _one_models_volume(self) -> OperatorSettings:
        if self.models_claim_name and self.models_host_path:
            raise ValueError(
                "models come from a PersistentVolumeClaim or a node folder, not both "
                f"(claim {self.models_claim_name!r}, hostPath {self.models_host_path!r})"
            )
        return self

    @classmethod
    def from_env(cls) -> OperatorSettings:
        images = cls().worker_images
        for hardware, var in (
            ("cpu", "KUBEVISION_WORKER_IMAGE"),
            ("nvidia-gpu", "KUBEVISION_WORKER_IMAGE_GPU"),
            ("jetson", "KUBEVISION_WORKER_IMAGE_JETSON"),
        ):
            if os.environ.get(var):
                images[hardware] = os.environ[var]  # type: ignore[index]
        resync = float(os.environ.get("KUBEVISION_RESYNC_SECONDS", "60"))
        port = os.environ.get("KUBEVISION_OPERATOR_METRICS_PORT", "8081")
        return cls(
            worker_images=images,
            resync_seconds=resync,
            operator_metrics_port=int(port) if port else None,
            prometheus_url=os.environ.get("KUBEVISION_PROMETHEUS_URL") or None,
            handover_seconds=float(os.environ.get("KUBEVISION_HANDOVER_SECONDS", "90")),
            engine_cache_host_path=os.environ.get("KUBEVISION_ENGINE_CACHE_HOST_PATH") or None,
            spool_host_path=os.environ.get("KUBEVISION_SPOOL_HOST_PATH") or None,
            snapshot_host_path=os.environ.get("KUBEVISION_SNAPSHOT_HOST_PATH") or None,
            models_claim_name=os.environ.get("KUBEVISION_MODELS_CLAIM") or None,
            models_host_path=os.environ.get("KUBEVISION_MODELS_HOST_PATH") or None,
            artifact_cache_host_path=(
                os.environ.get("KUBEVISION_ARTIFACT_CACHE_HOST_PATH") or None
            ),
            jetson_runtime_class=os.environ.get("KUBEVISION_JETSON_RUNTIME_CLASS") or "nvidia",
            shards=int(os.environ.get("KUBEVISION_SHARDS") or 1),
            shard_lease_seconds=float(os.environ.get("KUBEVISION_SHARD_LEASE_SECONDS") or 15),
            identity=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            lease_namespace=os.environ.get("POD_NAMESPACE") or "kubevision-system",
            status_coalesce_seconds=float(
                os.environ.get("KUBEVISION_STATUS_COALESCE_SECONDS") or 1.0
            ),
            max_concurrent_reconciles=int(os.environ.get("KUBEVISION_MAX_RECONCILES") or 4),
            status_writers=int(os.environ.get("KUBEVISION_STATUS_WRITERS") or 8),
        )
