"""The worker configuration the operator renders into a ConfigMap for each worker group.

It carries everything a worker needs except secrets: camera credentials are named here only
as environment variables that the pod gets through ``secretKeyRef``. Each replica processes
``shards[ordinal]``; a new ConfigMap reaches running workers without a restart.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import ConfigDict, Field

from kubevision.api.camera import Line, Sampling, Zone
from kubevision.api.common import ApiModel
from kubevision.api.modelvariant import (
    Artifact,
    HardwareClass,
    InputSize,
    ModelFormat,
    Precision,
    Task,
    TrackingThresholds,
)
from kubevision.api.pipeline import EventSource, Output, Slo, SnapshotEvent, TrackerStage

CONFIG_FILE = "worker.json"
CASCADE_CONFIG_FILE = "cascade.json"


class StrictModel(ApiModel):
    """The worker config is produced by our own code, so unknown fields are a bug."""

    model_config = ConfigDict(extra="forbid")


class CredentialEnv(StrictModel):
    """Names of the env vars holding a camera's username and password."""

    username_env: str
    password_env: str


def artifact_credential_env(variant: str) -> CredentialEnv:
    """Env var names for the credentials of a ModelVariant's artifact store: the operator sets
    them from the artifact's Secret (secretKeyRef), the worker's S3 client reads them."""
    stem = re.sub(r"[^A-Z0-9]", "_", variant.upper())
    digest = hashlib.sha256(variant.encode()).hexdigest()[:6].upper()
    base = f"KUBEVISION_ARTIFACT_{stem}_{digest}"  # the digest keeps a-b and a.b apart
    return CredentialEnv(username_env=f"{base}_ACCESS_KEY_ID", password_env=f"{base}_SECRET_KEY")


def output_credential_env(index: int) -> CredentialEnv:
    """Env var names for the credentials of ``WorkerConfig.outputs[index]``: the operator sets
    them from the output's Secret (secretKeyRef), the worker's sinks read them."""
    base = f"KUBEVISION_OUTPUT_{index}"
    return CredentialEnv(username_env=f"{base}_USERNAME", password_env=f"{base}_PASSWORD")


class CameraAssignment(StrictModel):
    """One camera a replica opens."""

    name: str
    url: str
    transport: str | None = None
    timeout_seconds: int
    fps: float
    sampling: Sampling
    priority: int
    credentials: CredentialEnv | None = None
    zones: list[Zone] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)
    handover: bool = False
    """A copy kept on the camera's previous replica while its new replica is not serving
    yet (make-before-break); the camera's home is the shard where this is False."""


class ModelConfig(StrictModel):
    """A ModelVariant resolved for this group's hardware."""

    variant: str
    family: str
    task: Task
    format: ModelFormat
    precision: Precision
    input_size: InputSize
    decoder: str | None = None
    batch_max: int
    labels: list[str] = Field(default_factory=list)
    artifact: Artifact
    tracking: TrackingThresholds | None = None
    """The detector's tracker thresholds (spec.tracking), for the camera trackers."""
    credentials: CredentialEnv | None = None
    """Env vars with the artifact store's access key ID and secret key (s3:// artifacts with
    a credentialsSecretRef; :func:`artifact_credential_env`)."""


class DetectorConfig(StrictModel):
    model: ModelConfig
    confidence: float
    nms_iou: float
    classes: list[str] = Field(default_factory=list)


class ClassifierConfig(StrictModel):
    model: ModelConfig
    refresh_frames: int


class SpoolConfig(StrictModel):
    """How each webhook and MQTT sink of the worker spools undelivered events (per sink). A
    disk spool lives in the folder ``kubevision-worker serve --spool-dir`` names: the pod's
    spool volume. The defaults are for configs the operator did not render."""

    storage: Literal["disk", "memory"] = "memory"
    max_events: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * 2**20, ge=1)


SNAPSHOT_CREDENTIAL_ENV = CredentialEnv(
    username_env="KUBEVISION_SNAPSHOTS_ACCESS_KEY_ID",
    password_env="KUBEVISION_SNAPSHOTS_SECRET_KEY",
)
"""Env vars with the snapshot bucket's keys (the Pipeline's spec.snapshots Secret)."""


class SnapshotConfig(StrictModel):
    """The Pipeline's spec.snapshots as the worker runs it: node snapshots go to the folder
    ``kubevision-worker serve --snapshot-dir`` names (the pod's snapshot volume)."""

    storage: Literal["node", "s3", "inline"]
    events: list[SnapshotEvent]
    jpeg_quality: int = Field(ge=1, le=100)
    margin: float = Field(ge=0, le=1)
    max_files: int = Field(ge=1)
    max_bytes: int = Field(ge=1)
    url: str | None = None
    endpoint: str | None = None
    credentials: CredentialEnv | None = None
    """Env vars with the bucket's access key ID and secret key (:data:`SNAPSHOT_CREDENTIAL_ENV`)."""


class WorkerConfig(StrictModel):
    """Everything one worker group runs."""

    pipeline: str
    namespace: str
    group: str
    hardware_class: HardwareClass
    site: str | None = None
    detector: DetectorConfig
    tracker: TrackerStage
    reid: ModelConfig | None = None
    classifier: ClassifierConfig | None = None
    pose: ModelConfig | None = None
    slo: Slo
    outputs: list[Output] = Field(default_factory=list)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    snapshots: SnapshotConfig | None = None
    shards: list[list[CameraAssignment]]
    """shards[i] are the cameras of the replica with ordinal i."""

    def assignments(self) -> dict[str, int]:
        """camera name -> shard index (the operator keeps these sticky across reconciles)."""
        return {
            cam.name: i for i, shard in enumerate(self.shards) for cam in shard if not cam.handover
        }


class CascadeConfig(StrictModel):
    """What one cloud cascade worker runs (``kubevision-worker cascade``): the operator renders
    it for a Pipeline with spec.source."""

    pipeline: str
    """Name for logs and the ``pipeline`` label of its metrics."""
    source: EventSource
    classifier: ModelConfig
    outputs: list[Output] = Field(default_factory=list)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    snapshot_endpoint: str | None = None
    """S3-compatible store of s3:// snapshots (default: AWS_ENDPOINT_URL_S3, else AWS)."""
    snapshot_credentials: CredentialEnv | None = None
    """Env vars with that store's access key ID and secret key (else AWS_* env or IAM)."""
    batch_max: int = Field(default=16, ge=1, le=256)
    """Most crops per classifier call."""
