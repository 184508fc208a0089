"""Pure builders of the objects the operator applies for each worker group (no I/O).

Per group: a ConfigMap with the :class:`~kubevision.api.worker_config.WorkerConfig`, a
headless metrics Service (also the StatefulSet's governing Service) and a StatefulSet whose
replica ``i`` processes shard ``i`` of the config. StatefulSet rather than Deployment because
the pod ordinal is a stable shard index: scaling down removes the highest shards, exactly the
ones the sharder empties first, and a restarted pod gets its own cameras back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from kubevision.api import API_VERSION
from kubevision.api.camera import CameraSpec, Sampling
from kubevision.api.common import SecretKeyNames
from kubevision.api.modelvariant import InputSize
from kubevision.api.pipeline import PipelineSpec
from kubevision.api.worker_config import (
    CASCADE_CONFIG_FILE,
    CONFIG_FILE,
    SNAPSHOT_CREDENTIAL_ENV,
    CameraAssignment,
    CascadeConfig,
    ClassifierConfig,
    CredentialEnv,
    DetectorConfig,
    ModelConfig,
    SnapshotConfig,
    SpoolConfig,
    WorkerConfig,
    artifact_credential_env,
    output_credential_env,
)
from kubevision.operator.hardware import (
    ACCELERATOR_LABEL,
    ARCH_LABEL,
    GPU_PRESENT_LABEL,
    GPU_RESOURCE,
    SITE_LABEL,
)
from kubevision.operator.planner import GroupPlan
from kubevision.operator.selection import Choice
from kubevision.operator.settings import OperatorSettings

MANAGED_BY = "kubevision-operator"
PIPELINE_LABEL = "kubevision.io/pipeline"
GROUP_LABEL = "kubevision.io/group"
HARDWARE_LABEL = "kubevision.io/hardware-class"
CONFIG_DIR = "/etc/kubevision"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def labels(pipeline: str, group: GroupPlan) -> dict[str, str]:
    """Labels on every object of a group; the operator finds its objects by these."""
    out = {
        "app.kubernetes.io/name": "kubevision-worker",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        PIPELINE_LABEL: pipeline,
        GROUP_LABEL: group.name,
        HARDWARE_LABEL: group.hardware,
    }
    if group.site:
        out[SITE_LABEL] = group.site
    return out


def owner_reference(pipeline: dict[str, Any]) -> dict[str, Any]:
    """Makes the Pipeline the controller of an object, so deleting it garbage-collects all."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Pipeline",
        "name": pipeline["metadata"]["name"],
        "uid": pipeline["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def credential_env(camera: str) -> CredentialEnv:
    """Env var names for a camera's credentials (derived from its name, never its secret)."""
    stem = re.sub(r"[^A-Z0-9]", "_", camera.upper())
    digest = hashlib.sha256(camera.encode()).hexdigest()[:6].upper()
    base = f"KUBEVISION_CAMERA_{stem}_{digest}"  # the digest keeps a-b and a.b apart
    return CredentialEnv(username_env=f"{base}_USERNAME", password_env=f"{base}_PASSWORD")


def _model(choice: Choice) -> ModelConfig:
    spec = choice.variant.spec
    return ModelConfig(
        variant=choice.variant.name,
        family=spec.family,
        task=spec.task,
        format=spec.format,
        precision=spec.precision,
        input_size=spec.input_size,
        decoder=spec.decoder,
        batch_max=spec.batch.max,
        labels=spec.labels,
        # the worker gets the env var names below, not which Secret holds its keys
        artifact=spec.artifact.model_copy(update={"credentials_secret_ref": None}),
        tracking=spec.tracking,
        credentials=(
            artifact_credential_env(choice.variant.name)
            if spec.artifact.credentials_secret_ref is not None
            else None
        ),
    )


def _skip_frames(sampling: Sampling) -> Sampling:
    """The ladder's frameSkip step: half the frames of every camera that samples by count."""
    if sampling.mode == "all":
        return Sampling(mode="everyN", every_n=2)
    if sampling.mode == "everyN" and sampling.every_n:
        return sampling.model_copy(update={"every_n": min(sampling.every_n * 2, 1000)})
    return sampling  # motion/adaptive/keyframes already follow activity


def _smaller_input(size: InputSize) -> InputSize:
    """The ladder's resolution step: 3/4 of the input side, a multiple of 32, at least 160."""
    side = max(160, int(min(size.width, size.height) * 0.75) // 32 * 32)
    return InputSize(width=side, height=side)


def _assignment(name: str, spec: CameraSpec, frame_skip: bool) -> CameraAssignment:
    source = spec.source
    return CameraAssignment(
        name=name,
        url=source.url,
        transport=source.transport,
        timeout_seconds=source.timeout_seconds,
        fps=spec.fps,
        sampling=_skip_frames(spec.sampling) if frame_skip else spec.sampling,
        priority=spec.priority,
        credentials=credential_env(name) if source.credentials_secret_ref else None,
        zones=spec.zones or [],
        lines=spec.lines or [],
    )


def build_worker_config(
    pipeline: str,
    namespace: str,
    spec: PipelineSpec,
    group: GroupPlan,
    handover: Sequence[Sequence[str]] = (),
) -> WorkerConfig:
    """The group's worker config; ``handover[i]`` are cameras replica ``i`` keeps serving as
    handover copies (:mod:`.handover`), shards past the plan's replicas included."""
    assert group.detector is not None  # a camera group (cascade groups: build_cascade_config)
    frame_skip = "frameSkip" in group.degradation
    detector = _model(group.detector)
    if "resolution" in group.degradation and group.detector.variant.spec.dynamic_input_size:
        detector = detector.model_copy(update={"input_size": _smaller_input(detector.input_size)})
    stages, detector_stage = spec.stages, group.detector_stage or spec.detector
    classifier = None
    if group.classifier is not None and stages.classifier is not None:
        classifier = ClassifierConfig(
            model=_model(group.classifier), refresh_frames=stages.classifier.refresh_frames
        )
    return WorkerConfig(
        pipeline=pipeline,
        namespace=namespace,
        group=group.name,
        hardware_class=group.hardware,
        site=group.site,
        detector=DetectorConfig(
            model=detector,
            confidence=detector_stage.confidence,
            nms_iou=detector_stage.nms_iou,
            classes=detector_stage.classes,
        ),
        tracker=stages.tracker,
        reid=_model(group.reid) if group.reid else None,
        classifier=classifier,
        pose=_model(group.pose) if group.pose else None,
        slo=spec.slo,
        outputs=spec.outputs,
        spool=_spool(spec),
        snapshots=_snapshots(spec),
        shards=[
            [_assignment(cam, group.cameras[cam].spec, frame_skip) for cam in home]
            + [
                _assignment(cam, group.cameras[cam].spec, frame_skip).model_copy(
                    update={"handover": True}
                )
                for cam in (handover[i] if i < len(handover) else ())
                if cam in group.cameras
            ]
            for i, home in enumerate(_padded(group.shards.shards, len(handover)))
        ],
    )


def build_cascade_config(
    pipeline: str, namespace: str, spec: PipelineSpec, group: GroupPlan
) -> CascadeConfig:
    """The config of a cascade Pipeline's workers (spec.source): the edge events in, the
    classifier on their crops, the Pipeline's outputs and spool."""
    assert spec.source is not None
    assert group.classifier is not None
    source = spec.source
    group_id = source.group or f"{namespace}.{pipeline}"
    return CascadeConfig(
        pipeline=pipeline,
        source=source.model_copy(update={"group": group_id}),
        classifier=_model(group.classifier),
        outputs=spec.outputs,
        spool=_spool(spec),
    )


def _spool(spec: PipelineSpec) -> SpoolConfig:
    spool = spec.spool
    return SpoolConfig(
        storage=spool.storage, max_events=spool.max_events, max_bytes=spool.max_bytes
    )


def _snapshots(spec: PipelineSpec) -> SnapshotConfig | None:
    """spec.snapshots for the worker: the Secret becomes the names of its env vars."""
    snap = spec.snapshots
    if snap is None:
        return None
    return SnapshotConfig(
        storage=snap.storage,
        events=snap.events,
        jpeg_quality=snap.jpeg_quality,
        margin=snap.margin,
        max_files=snap.max_files,
        max_bytes=snap.max_bytes,
        url=snap.url,
        endpoint=snap.endpoint,
        credentials=SNAPSHOT_CREDENTIAL_ENV if snap.credentials_secret_ref else None,
    )


def _padded(shards: list[list[str]], length: int) -> list[list[str]]:
    """Shards, extended with empty ones up to ``length`` (retiring replicas during handover)."""
    return shards + [[] for _ in range(length - len(shards))]


def _metadata(pipeline: dict[str, Any], group: GroupPlan) -> dict[str, Any]:
    return {
        "name": group.name,
        "namespace": pipeline["metadata"]["namespace"],
        "labels": labels(pipeline["metadata"]["name"], group),
        "ownerReferences": [owner_reference(pipeline)],
    }


def build_configmap(
    pipeline: dict[str, Any], config: WorkerConfig | CascadeConfig, group: GroupPlan
) -> dict[str, Any]:
    body = json.dumps(config.wire(), indent=1, sort_keys=True)
    key = CONFIG_FILE if isinstance(config, WorkerConfig) else CASCADE_CONFIG_FILE
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(pipeline, group),
        "data": {key: body},
    }


def build_service(
    pipeline: dict[str, Any], group: GroupPlan, settings: OperatorSettings
) -> dict[str, Any]:
    """Headless: Prometheus and the autoscaler scrape each worker pod, not a load balancer."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pipeline, group),
        "spec": {
            "clusterIP": "None",
            "selector": {GROUP_LABEL: group.name},
            "ports": [{"name": "metrics", "port": settings.metrics_port, "targetPort": "metrics"}],
            "publishNotReadyAddresses": True,
        },
    }


def _model_node_selector(group: GroupPlan) -> dict[str, str]:
    """Node labels every model of the group needs (detector, re-id, classifier, pose)."""
    merged: dict[str, str] = {}
    for choice in (group.detector, group.reid, group.classifier, group.pose):
        if choice is not None:
            merged.update(choice.target.node_selector)
    return merged


def _placement(spec: PipelineSpec, group: GroupPlan, settings: OperatorSettings) -> dict[str, Any]:
    """Node affinity, tolerations, runtime class and GPU requests for the group's hardware."""
    terms: list[dict[str, Any]] = []
    tolerations = [t.wire() for t in spec.placement.tolerations]
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }
    extra: dict[str, Any] = {}
    if group.hardware == "nvidia-gpu":
        terms.append({"key": GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]})
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        resources["limits"][GPU_RESOURCE] = "1"
    elif group.hardware == "jetson":
        terms.append({"key": ACCELERATOR_LABEL, "operator": "In", "values": ["jetson"]})
        terms.append({"key": ARCH_LABEL, "operator": "In", "values": ["arm64"]})
        resources["requests"] = {"cpu": "500m", "memory": "512Mi"}
        extra["runtimeClassName"] = settings.jetson_runtime_class
    else:
        # NotIn also matches an absent label, and the GPU operator sets gpu.present=false on a
        # node that lost its GPUs: exactly the nodes hardware_class() calls cpu.
        terms.append({"key": ACCELERATOR_LABEL, "operator": "NotIn", "values": ["jetson"]})
        terms.append({"key": GPU_PRESENT_LABEL, "operator": "NotIn", "values": ["true"]})
    if group.site:
        terms.append({"key": SITE_LABEL, "operator": "In", "values": [group.site]})
    for key, value in sorted(_model_node_selector(group).items()):
        terms.append({"key": key, "operator": "In", "values": [value]})
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": terms}],
            }
        }
    }
    pod: dict[str, Any] = {"affinity": affinity, "tolerations": tolerations, **extra}
    if spec.placement.node_selector:
        pod["nodeSelector"] = dict(spec.placement.node_selector)
    return {"pod": pod, "resources": resources}


def _secret_env(names: CredentialEnv, ref: SecretKeyNames) -> list[dict[str, Any]]:
    """Two env vars read from a Secret by the kubelet: the operator never sees the values."""
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}}
        for var, key in (
            (names.username_env, ref.username_key),
            (names.password_env, ref.password_key),
        )
    ]


ENGINE_CACHE_DIR = "/var/cache/kubevision/engines"
"""Where GPU workers keep built TensorRT engines: an emptyDir by default (restarted containers
of a pod reuse them), or a node folder (``engine_cache_host_path``) shared by a node's pods."""
SCRATCH_DIR = "/tmp"
"""The worker's only writable folder besides the engine cache (the root filesystem is
read-only): temporary files and, as ``$HOME``, library caches (CUDA's JIT cache, torch)."""
WORKER_UID = 65532
"""The distroless ``nonroot`` user the worker images run as."""
SPOOL_DIR = "/var/spool/kubevision"
"""Where a disk spool's files live: an emptyDir by default (kept across container restarts),
a PersistentVolumeClaim per replica (``spec.spool.persistentVolumeClaim``: outlives the pod),
or a node folder (``spool_host_path``; each pod writes in ``<namespace>/<pod>`` under it)."""
SPOOL_VOLUME = "spool"
SNAPSHOT_DIR = "/var/lib/kubevision/snapshots"
"""Where node snapshots are written: an emptyDir as large as spec.snapshots.maxBytes, or a
node folder (``snapshot_host_path``; each pod writes in ``<namespace>/<pod>`` under it)."""
SNAPSHOT_VOLUME = "snapshots"
MODELS_DIR = "/models"
"""Where the chart's volume of model files (``models_claim_name`` or ``models_host_path``) is
mounted read-only: the folder ``file:///models/...`` artifact URIs name, and the worker's
default model folder."""
MODELS_VOLUME = "models"
ARTIFACT_CACHE_DIR = "/var/cache/kubevision/artifacts"
"""Where downloaded artifacts are cached when the chart sets ``artifact_cache_host_path``."""
ARTIFACT_CACHE_VOLUME = "artifacts"


def _accelerator_env(group: GroupPlan) -> list[dict[str, Any]]:
    """GPU and Jetson workers use every GPU they are given, keep engines in the engine cache
    and (on NVIDIA GPU nodes) ask the container runtime for the video engines (NVDEC)."""
    if group.hardware == "cpu":
        return []
    env = [
        {"name": "KUBEVISION_DEVICE", "value": "cuda"},
        {"name": "KUBEVISION_ENGINE_CACHE", "value": ENGINE_CACHE_DIR},
    ]
    if group.hardware == "nvidia-gpu":
        env.append({"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility,video"})
    return env


def _engine_cache(settings: OperatorSettings) -> dict[str, Any]:
    if settings.engine_cache_host_path:
        path = settings.engine_cache_host_path
        return {"name": "engines", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}
    return {"name": "engines", "emptyDir": {}}


def _models_volume(settings: OperatorSettings) -> dict[str, Any] | None:
    """The read-only volume of model files, if the chart names one."""
    if settings.models_claim_name:
        claim = {"claimName": settings.models_claim_name, "readOnly": True}
        return {"name": MODELS_VOLUME, "persistentVolumeClaim": claim}
    if settings.models_host_path:
        path = settings.models_host_path
        return {"name": MODELS_VOLUME, "hostPath": {"path": path, "type": "Directory"}}
    return None


def _artifact_cache_volume(settings: OperatorSettings) -> dict[str, Any] | None:
    """A node folder for downloaded artifacts, shared by the node's pods of every class.
    "Directory", not "DirectoryOrCreate": a folder the kubelet creates belongs to root, and
    the worker (UID 65532) could not write it; the node's admin creates it."""
    if not settings.artifact_cache_host_path:
        return None
    path = settings.artifact_cache_host_path
    return {"name": ARTIFACT_CACHE_VOLUME, "hostPath": {"path": path, "type": "Directory"}}


def _spool_volume(spec: PipelineSpec, settings: OperatorSettings) -> dict[str, Any] | None:
    """The pod volume of a disk spool; None for a memory spool, or a claim (which the
    StatefulSet's volumeClaimTemplates provide, :func:`_spool_claims`)."""
    if spec.spool.storage != "disk" or spec.spool.persistent_volume_claim is not None:
        return None
    if settings.spool_host_path:
        # "Directory", not "DirectoryOrCreate": a folder the kubelet creates belongs to root,
        # and the worker (UID 65532) could not write it; the node's admin creates it
        return {
            "name": SPOOL_VOLUME,
            "hostPath": {"path": settings.spool_host_path, "type": "Directory"},
        }
    return {"name": SPOOL_VOLUME, "emptyDir": {}}


def _spool_claims(spec: PipelineSpec) -> dict[str, Any]:
    """StatefulSet fields for a spool on a PersistentVolumeClaim per replica: a replica gets
    its claim (and its spooled events) back wherever it is rescheduled; the claims are
    deleted with the StatefulSet (the Pipeline), kept when it scales down."""
    claim = spec.spool.persistent_volume_claim
    if spec.spool.storage != "disk" or claim is None:
        return {}
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": claim.size}},
    }
    if claim.storage_class_name:
        claim_spec["storageClassName"] = claim.storage_class_name
    return {
        "volumeClaimTemplates": [{"metadata": {"name": SPOOL_VOLUME}, "spec": claim_spec}],
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
    }


def _spool_args(spec: PipelineSpec, settings: OperatorSettings, namespace: str) -> list[str]:
    """``--spool-dir`` for a disk spool: the volume's root, or on a node folder shared by
    the node's pods, a folder per pod (the kubelet expands ``$(KUBEVISION_POD_NAME)``)."""
    if spec.spool.storage != "disk":
        return []
    if settings.spool_host_path and spec.spool.persistent_volume_claim is None:
        return [f"--spool-dir={SPOOL_DIR}/{namespace}/$(KUBEVISION_POD_NAME)"]
    return [f"--spool-dir={SPOOL_DIR}"]


def _snapshot_volume(spec: PipelineSpec, settings: OperatorSettings) -> dict[str, Any] | None:
    """The pod volume of node snapshots (None for other storages)."""
    if spec.snapshots is None or spec.snapshots.storage != "node":
        return None
    if settings.snapshot_host_path:  # "Directory": the node's admin creates it (UID 65532)
        path = settings.snapshot_host_path
        return {"name": SNAPSHOT_VOLUME, "hostPath": {"path": path, "type": "Directory"}}
    # the worker keeps the folder within maxBytes; the limit is the kubelet's backstop
    size = f"{spec.snapshots.max_bytes // 2**20 + 64}Mi"
    return {"name": SNAPSHOT_VOLUME, "emptyDir": {"sizeLimit": size}}


def _snapshot_args(spec: PipelineSpec, settings: OperatorSettings, namespace: str) -> list[str]:
    """``--snapshot-dir`` for node snapshots: a folder per pod on a shared node folder."""
    if _snapshot_volume(spec, settings) is None:
        return []
    if settings.snapshot_host_path:
        return [f"--snapshot-dir={SNAPSHOT_DIR}/{namespace}/$(KUBEVISION_POD_NAME)"]
    return [f"--snapshot-dir={SNAPSHOT_DIR}"]


def _volumes(
    spec: PipelineSpec, group: GroupPlan, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): the config, scratch space, the engine cache on
    accelerators, the spool of a disk spool, node snapshots, and the chart's models volume
    and node artifact cache."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": group.name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": SCRATCH_DIR},
    ]
    if group.hardware != "cpu":
        volumes.append(_engine_cache(settings))
        mounts.append({"name": "engines", "mountPath": ENGINE_CACHE_DIR})
    spool = _spool_volume(spec, settings)
    if spool is not None:
        volumes.append(spool)
    if spec.spool.storage == "disk":
        mounts.append({"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR})
    snapshots = _snapshot_volume(spec, settings)
    if snapshots is not None:
        volumes.append(snapshots)
        mounts.append({"name": SNAPSHOT_VOLUME, "mountPath": SNAPSHOT_DIR})
    models = _models_volume(settings)
    if models is not None:
        volumes.append(models)
        mounts.append({"name": MODELS_VOLUME, "mountPath": MODELS_DIR, "readOnly": True})
    artifacts = _artifact_cache_volume(settings)
    if artifacts is not None:
        volumes.append(artifacts)
        mounts.append({"name": ARTIFACT_CACHE_VOLUME, "mountPath": ARTIFACT_CACHE_DIR})
    return volumes, mounts


def _security_contexts() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) security contexts meeting the Pod Security Standard "restricted", for
    every worker pod, GPU and Jetson ones included (device access comes from the NVIDIA
    container runtime, not from privileges)."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,  # the scratch and engine-cache volumes are the worker's
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def _env(spec: PipelineSpec, group: GroupPlan, settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KUBEVISION_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "KUBEVISION_SHARD",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
        },
        {"name": "HOME", "value": SCRATCH_DIR},
    ]
    for name in sorted(group.cameras):
        ref = group.cameras[name].spec.source.credentials_secret_ref
        if ref is not None:
            env += _secret_env(credential_env(name), ref)
    for index, output in enumerate(spec.outputs):
        if output.credentials_secret_ref is not None:
            env += _secret_env(output_credential_env(index), output.credentials_secret_ref)
    if spec.snapshots is not None and spec.snapshots.credentials_secret_ref is not None:
        env += _secret_env(SNAPSHOT_CREDENTIAL_ENV, spec.snapshots.credentials_secret_ref)
    choices = (group.detector, group.reid, group.classifier, group.pose)
    variants = {c.variant.name: c.variant.spec for c in choices if c is not None}
    for name, variant in sorted(variants.items()):
        ref = variant.artifact.credentials_secret_ref
        if ref is not None:
            env += _secret_env(artifact_credential_env(name), ref)
    if settings.artifact_cache_host_path:
        env.append({"name": "KUBEVISION_ARTIFACT_CACHE", "value": ARTIFACT_CACHE_DIR})
    return env + _accelerator_env(group)


def _args(spec: PipelineSpec, settings: OperatorSettings, namespace: str) -> list[str]:
    """``serve`` a shard of the config's cameras, or (spec.source) ``cascade`` edge events."""
    if spec.source is not None:
        config = f"--config={CONFIG_DIR}/{CASCADE_CONFIG_FILE}"
        return ["cascade", config, *_spool_args(spec, settings, namespace)]
    return [
        "serve",
        f"--config={CONFIG_DIR}/{CONFIG_FILE}",
        *_spool_args(spec, settings, namespace),
        *_snapshot_args(spec, settings, namespace),
    ]


def build_statefulset(
    pipeline: dict[str, Any], spec: PipelineSpec, group: GroupPlan, settings: OperatorSettings
) -> dict[str, Any]:
    meta = _metadata(pipeline, group)
    placement = _placement(spec, group, settings)
    image = spec.worker_image or settings.worker_images[group.hardware]
    volumes, mounts = _volumes(spec, group, settings)
    pod_security, container_security = _security_contexts()
    container = {
        "name": "worker",
        "image": image,
        "args": _args(spec, settings, meta["namespace"]),
        "env": _env(spec, group, settings),
        "ports": [{"name": "metrics", "containerPort": settings.metrics_port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": placement["resources"],
        "volumeMounts": mounts,
        "securityContext": container_security,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": group.shards.replicas,
            "serviceName": group.name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {GROUP_LABEL: group.name}},
            **_spool_claims(spec),
            "template": {
                "metadata": {
                    "labels": meta["labels"],
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(settings.metrics_port),
                    },
                },
                "spec": {
                    **placement["pod"],
                    "containers": [container],
                    "volumes": volumes,
                    "securityContext": pod_security,
                    "automountServiceAccountToken": False,  # workers never call the API
                    "terminationGracePeriodSeconds": 10,
                },
            },
        },
    }
