"""``Pipeline``: which analytics run on which cameras, under which SLO, with how many workers."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from kubevision.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    NAME_PATTERN,
    SUBDOMAIN_PATTERN,
    ApiModel,
    Condition,
    LabelSelector,
    SecretKeyNames,
    Toleration,
    cel,
    no_password,
    validations,
)
from kubevision.api.modelvariant import HARDWARE_CLASSES, HardwareClass
from kubevision.api.rollout import Rollout, RolloutStatus

_ONE_OF_VARIANT_OR_FAMILY = cel(
    "has(self.variant) != has(self.family)",
    "set exactly one of variant (a ModelVariant name) or family (its best variant is chosen)",
)


class ModelRef(ApiModel):
    """A ModelVariant by name, or a family whose best-fitting variant the operator picks."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(_ONE_OF_VARIANT_OR_FAMILY)
    }

    variant: str | None = Field(default=None, max_length=253, pattern=SUBDOMAIN_PATTERN)
    """Name of a ModelVariant in this namespace; set either this or family."""
    family: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    """Model family whose best-fitting variant the operator picks; set either this or variant."""


class DetectorStage(ModelRef):
    """Object detection."""

    confidence: float = Field(default=0.25, gt=0, lt=1)
    """Minimum score kept."""
    nms_iou: float = Field(default=0.45, gt=0, lt=1)
    """IoU above which overlapping boxes of a class are suppressed."""
    classes: list[str] = Field(default_factory=list, max_length=1000)
    """Class names to keep; empty keeps all."""


class TrackerStage(ApiModel):
    """Multi-object tracking per camera."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.type == 'deepsort' ? has(self.reid) : !has(self.reid)",
                "spec.stages.tracker.reid (a re-id model) is required for deepsort and only "
                "allowed there",
                field_path=".reid",
            )
        )
    }

    type: Literal["sort", "bytetrack", "deepsort"] = "bytetrack"
    """Tracking algorithm: sort, bytetrack or deepsort (deepsort needs reid)."""
    reid: ModelRef | None = None
    """Appearance-embedding model for deepsort."""
    max_age_frames: int = Field(default=30, ge=1, le=10000)
    """Frames a lost track is kept before it ends."""
    min_hits: int | None = Field(default=None, ge=1, le=100)
    """Detections before a track is confirmed; unset: each tracker's reference rule (sort:
    3 matches in a row after the first detection, bytetrack: the second match, deepsort:
    n_init 3)."""
    reid_refresh_frames: int = Field(default=10, ge=1, le=1000)
    """deepsort: a detection that can only be one track (no other track or detection near it)
    reuses that track's embedding, recomputed at least every this many frames; 1 embeds every
    detection, as the reference does."""


class ClassifierStage(ModelRef):
    """Crop classification run once per confirmed track and refreshed every N frames."""

    refresh_frames: int = Field(default=30, ge=1, le=100000)
    """Re-classify each confirmed track every this many frames."""


class PoseStage(ModelRef):
    """Optional keypoint estimation on tracked people."""


class Stages(ApiModel):
    """The analytics chain: detector, tracker, classifier and optional pose."""

    detector: DetectorStage | None = None
    """Required for a Pipeline of Cameras; not allowed with spec.source."""
    tracker: TrackerStage = Field(default_factory=TrackerStage)
    classifier: ClassifierStage | None = None
    pose: PoseStage | None = None


class Slo(ApiModel):
    """Service level each stream must get."""

    p99_latency_ms: float = Field(default=100, gt=0, le=60_000)
    """End-to-end p99 per frame (capture to result published)."""
    min_fps: float = Field(default=1, gt=0, le=240)
    """Minimum processed frames per second per stream."""


class Autoscaling(ApiModel):
    """How many worker replicas each group of cameras gets."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",
                field_path=".minReplicas",
            ),
            no_password(
                "prometheusUrl",
                "spec.autoscaling.prometheusUrl must not carry a password",
                optional=True,
            ),
        )
    }

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest worker replicas per camera group."""
    max_replicas: int = Field(default=10, ge=1, le=1000)
    """Most worker replicas per camera group; must be at least minReplicas."""
    streams_per_replica: int | None = Field(default=None, ge=1, le=1000)
    """Cameras per replica; unset derives it from the variant's expected throughput."""
    target_utilization: float = Field(default=0.8, gt=0, le=1)
    """Fraction of a replica's expected throughput to plan for (headroom for bursts)."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Seconds of past recommendations considered before scaling up; 0 acts at once."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Seconds of past recommendations considered before scaling down (avoids flapping)."""
    tolerance: float = Field(default=0.1, ge=0, le=0.9)
    """Load within this fraction of the SLO target changes nothing (as the HPA's tolerance)."""
    max_step: int = Field(default=4, ge=1, le=100)
    """Most replicas added or removed by one decision."""
    metrics_interval_seconds: int = Field(default=5, ge=1, le=300)
    """How often the workers' metrics are read and a scaling decision taken."""
    prometheus_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://.+$")
    """Read the signals from this Prometheus HTTP API instead of scraping the workers."""


DegradationStep = Literal["frameSkip", "resolution", "smallerVariant"]


class Degradation(ApiModel):
    """Steps the autoscaler may take, in order, before (or instead of) adding replicas."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.allowed) || self.allowed.all(s, self.allowed.exists_one(o, o == s))",
                "spec.degradation.allowed must not repeat a step",
                field_path=".allowed",
            )
        )
    }

    allowed: list[DegradationStep] = Field(default_factory=list, max_length=3)
    """Steps allowed, each at most once: frameSkip, resolution, smallerVariant; empty: none."""


class Placement(ApiModel):
    """Where workers may run, on top of what the hardware class implies."""

    hardware_classes: list[HardwareClass] = Field(
        default_factory=lambda: list(HARDWARE_CLASSES),
        min_length=1,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Allowed hardware classes in order of preference."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=16)
    """Extra node labels worker pods require, on top of the hardware class's own."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    """Tolerations added to worker pods, e.g. for tainted GPU nodes."""


class Output(ApiModel):
    """Where events (track started/ended, class, zone and line crossings) go."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.type in ['webhook', 'mqtt', 'kafka'] ? has(self.url) : !has(self.url)",
                "outputs[].url is required for webhook, mqtt and kafka outputs and not allowed "
                "otherwise",
                field_path=".url",
            ),
            cel(
                "self.type in ['mqtt', 'kafka'] ? has(self.topic) : !has(self.topic)",
                "outputs[].topic is required for mqtt and kafka outputs and only allowed there",
                field_path=".topic",
            ),
            cel(
                "!has(self.url) || (self.type == 'kafka') == self.url.matches('^kafkas?://')",
                "outputs[].url of a kafka output is kafka://host:port[,host:port] (kafkas:// "
                "for TLS), and only kafka outputs take such a URL",
                field_path=".url",
            ),
            cel(
                "self.type == 'file' ? has(self.path) : !has(self.path)",
                "outputs[].path is required for file outputs and only allowed there",
                field_path=".path",
            ),
            no_password(
                "url",
                "outputs[].url must not carry a password: use credentialsSecretRef",
                optional=True,
            ),
        )
    }

    type: Literal["stdout", "file", "webhook", "mqtt", "kafka"]
    """Sink kind: stdout, file, webhook, mqtt or kafka."""
    url: str | None = Field(
        default=None, max_length=2048, pattern=r"^(https?|mqtts?|tcp|ssl|wss?|kafkas?)://.+$"
    )
    """Webhook URL, MQTT broker URL or Kafka bootstrap servers (kafka://host:port,...);
    required for those types, never with a password."""
    topic: str | None = Field(default=None, max_length=1024)
    """MQTT topic (events go to <topic>/<camera>) or Kafka topic (keyed by camera); required
    for mqtt and kafka outputs."""
    path: str | None = Field(default=None, max_length=4096)
    """File path on the worker that events are written to; required for file outputs."""
    credentials_secret_ref: SecretKeyNames | None = None


MIB = 2**20
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
"""A storage size as Kubernetes writes it (``512Mi``, ``1Gi``, ``10G``)."""


class SpoolClaim(ApiModel):
    """A PersistentVolumeClaim per worker replica (the StatefulSet's volumeClaimTemplates)."""

    size: str = Field(default="1Gi", max_length=32, pattern=QUANTITY_PATTERN)
    """Requested storage, e.g. 1Gi: (maxBytes x 1.5 + 5Mi) per webhook/MQTT output."""
    storage_class_name: str | None = Field(default=None, max_length=253, pattern=SUBDOMAIN_PATTERN)
    """StorageClass of the claims; unset uses the cluster's default (K3s: local-path)."""


class Spool(ApiModel):
    """Where each webhook and MQTT output keeps the events its destination has not
    acknowledged yet, and how many: beyond the bounds the oldest are dropped and counted."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.storage == 'disk' || !has(self.persistentVolumeClaim)",
                "spec.spool.persistentVolumeClaim needs spec.spool.storage disk",
                field_path=".persistentVolumeClaim",
            )
        )
    }

    storage: Literal["disk", "memory"] = "disk"
    """disk (a SQLite file per output, kept across worker restarts) or memory (lost with it)."""
    max_events: int = Field(default=100_000, ge=1, le=10_000_000)
    """Most events spooled per output."""
    max_bytes: int = Field(default=64 * MIB, ge=MIB, le=2**40)
    """Most bytes of event JSON spooled per output."""
    persistent_volume_claim: SpoolClaim | None = None
    """A claim per replica, outliving the pod; unset: an emptyDir or the chart's spoolHostPath."""


SnapshotEvent = Literal["track.started", "track.updated"]


class Snapshots(ApiModel):
    """A JPEG crop of the tracked object for each chosen track event, referenced from the
    event (uri, size, sha256): on the node (a bounded folder, oldest deleted), in an S3
    bucket, or inline in the event as a data: URI (it then travels through the outputs'
    spools, e.g. upstream from an edge site)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.storage == 's3' ? has(self.url) : "
                "!has(self.url) && !has(self.endpoint) && !has(self.credentialsSecretRef)",
                "spec.snapshots.url (s3://bucket[/prefix]) is required for storage s3; url, "
                "endpoint and credentialsSecretRef are only for s3",
                field_path=".url",
            ),
        )
    }

    storage: Literal["node", "s3", "inline"] = "node"
    """node (a folder on the worker's node), s3 (an S3-compatible bucket) or inline (in the
    event, base64: for outputs that go upstream)."""
    events: list[SnapshotEvent] = Field(
        default_factory=lambda: list[SnapshotEvent](["track.started"]),
        min_length=1,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Event kinds that get a crop: track.started and/or track.updated."""
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    """JPEG quality (OpenCV's 1-100)."""
    margin: float = Field(default=0.1, ge=0, le=1)
    """Context around the box, as a fraction of its width and height on each side."""
    max_files: int = Field(default=10_000, ge=1, le=10_000_000)
    """storage node: most files kept per worker; beyond it the oldest are deleted."""
    max_bytes: int = Field(default=1024 * MIB, ge=MIB, le=2**40)
    """storage node: most bytes kept per worker; beyond it the oldest are deleted."""
    url: str | None = Field(
        default=None, max_length=1024, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
    )
    """storage s3: s3://bucket[/prefix]; objects are <prefix>/<pipeline>/<camera>/...jpg."""
    endpoint: str | None = Field(default=None, max_length=512, pattern=r"^https?://[^/@]+/?$")
    """storage s3: the S3-compatible store (default: AWS, or the worker's
    AWS_ENDPOINT_URL_S3)."""
    credentials_secret_ref: SecretKeyNames | None = None
    """storage s3: a Secret with the access key ID (usernameKey) and secret key
    (passwordKey); without it workers use their environment or IAM role."""


class EventSource(ApiModel):
    """The track events an edge Pipeline sends upstream through its MQTT or Kafka output: a
    Pipeline with this source classifies their crops instead of analysing Cameras (the cloud
    half of an edge→cloud cascade)."""

    url: str = Field(max_length=1024, pattern=r"^(mqtt|tcp|kafka)://[^/@]+/?$")
    """mqtt://host:port (the edge events arrive on <topic>/<camera>) or
    kafka://host:port[,host:port]; never with credentials."""
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._/-]+$")
    """The edge output's topic."""
    group: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    """Kafka consumer group (shared by the replicas, which split the topic's partitions) or
    MQTT persistent session id; unset: <namespace>.<pipeline>."""


_CASCADE_RULES = (
    (
        "has(self.source) != has(self.stages.detector)",
        "spec.stages.detector is required for a Pipeline of Cameras and not allowed with "
        "spec.source (a cascade Pipeline only classifies the crops of edge events)",
        ".stages.detector",
    ),
    (
        "!has(self.source) || has(self.stages.classifier)",
        "spec.stages.classifier is required with spec.source: it classifies the edge events' crops",
        ".stages.classifier",
    ),
    (
        "!has(self.source) || (!has(self.stages.pose) && !has(self.rollout) && "
        "!has(self.snapshots))",
        "spec.stages.pose, spec.rollout and spec.snapshots work on Cameras' frames and are not "
        "allowed with spec.source",
        ".source",
    ),
)


class PipelineSpec(ApiModel):
    """Desired state of a Pipeline."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.outputs) || self.outputs.all(o, o.type != 'stdout' || "
                "self.outputs.exists_one(p, p.type == 'stdout'))",
                "spec.outputs may contain at most one stdout output",
                field_path=".outputs",
            ),
            *(cel(rule, message, field_path=path) for rule, message, path in _CASCADE_RULES),
        )
    }

    camera_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Cameras in this namespace to process (empty selects all); not used with spec.source."""
    source: EventSource | None = None
    """Edge events to classify instead of Cameras (README: Edge→cloud cascade)."""
    stages: Stages
    slo: Slo = Field(default_factory=Slo)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    degradation: Degradation = Field(default_factory=Degradation)
    placement: Placement = Field(default_factory=Placement)
    outputs: list[Output] = Field(default_factory=list, max_length=8)
    """Where events go (at most 8); at most one stdout output."""
    spool: Spool = Field(default_factory=Spool)
    """How webhook and MQTT outputs hold events while their destination is unreachable."""
    snapshots: Snapshots | None = None
    """A JPEG crop per track event, referenced from the event; unset: none."""
    worker_image: str | None = Field(default=None, max_length=512)
    """Overrides the operator's worker image for this Pipeline."""
    rollout: Rollout | None = None
    """A canary of a detector change by camera cohort, with automatic rollback (README:
    Canary rollouts)."""

    @model_validator(mode="after")
    def _cascade_or_cameras(self) -> PipelineSpec:
        """The API's CEL rules, again for the operator: it never plans a spec without them."""
        if (self.source is None) != (self.stages.detector is not None):
            raise ValueError(_CASCADE_RULES[0][1])
        if self.source is not None and self.stages.classifier is None:
            raise ValueError(_CASCADE_RULES[1][1])
        if self.source is not None and (self.stages.pose or self.rollout or self.snapshots):
            raise ValueError(_CASCADE_RULES[2][1])
        return self

    @property
    def detector(self) -> DetectorStage:
        """spec.stages.detector of a Pipeline of Cameras (validated to be there)."""
        if self.stages.detector is None:
            raise ValueError(_CASCADE_RULES[0][1])
        return self.stages.detector


class ScalingDecision(ApiModel):
    """The last change of replicas and why."""

    time: dt.datetime
    """When the replicas were changed."""
    group: str
    """Name of the group that was scaled."""
    from_replicas: int
    """Replicas before the change."""
    to_replicas: int
    """Replicas after the change."""
    reason: str
    """Human-readable reason for the change, e.g. the signal that triggered it."""


class GroupStatus(ApiModel):
    """One (site, hardware class) group of cameras and its worker workload."""

    name: str
    """Name of the StatefulSet, ConfigMap and Service rendered for the group."""
    site: str | None = None
    """Site of the group's cameras; unset for cameras without a site."""
    hardware_class: HardwareClass
    """Hardware class the group's workers run on: nvidia-gpu, jetson or cpu."""
    variant: str
    """Name of the detector ModelVariant chosen for the group's hardware class."""
    cameras: int
    """Cameras assigned to the group."""
    replicas: int
    """Worker replicas the group should run."""
    ready_replicas: int = 0
    """Worker replicas of the group that are ready."""
    degradation: list[DegradationStep] = Field(default_factory=list)
    """Degradation steps the autoscaler engaged for the group, in the order engaged."""
    scaled_by: Literal["capacity", "metrics"] = "capacity"
    """What set the replicas: the variant's expected throughput, or measured load."""
    track: Literal["canary"] | None = None
    """canary for a group whose workers run a rollout's candidate; unset: the stable detector."""


class PipelineStatus(ApiModel):
    """Observed state of a Pipeline."""

    observed_generation: int | None = None
    """The .metadata.generation this status was last computed for."""
    cameras: int = 0
    """Cameras selected and assigned (paused ones excluded)."""
    desired_replicas: int = 0
    """Worker replicas wanted across all groups."""
    ready_replicas: int = 0
    """Worker replicas ready across all groups."""
    groups: list[GroupStatus] = Field(default_factory=list)
    """One entry per (site, hardware class) group of selected cameras."""
    p99_latency_ms: float | None = None
    """Observed p99 per-frame latency in milliseconds across the selected cameras."""
    queue_depth: float | None = None
    """Frames waiting for inference, averaged over workers; an autoscaling signal."""
    last_scaling_decision: ScalingDecision | None = None
    rollout: RolloutStatus | None = None
    """The canary rollout of spec.rollout, step by step; unset without one."""
    conditions: list[Condition] = Field(
        default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Ready, Degraded, Autoscaling, ModelsVerified and (with spec.rollout) Rollout."""
