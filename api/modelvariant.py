"""``ModelVariant``: one optimised build of a model and what it achieves on each hardware class."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from kubevision.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    NAME_PATTERN,
    ApiModel,
    Condition,
    SecretKeyNames,
    cel,
    no_password,
    validations,
)

Task = Literal["detect", "classify", "reid", "pose"]
ModelFormat = Literal["onnx", "tensorrt", "openvino", "triton"]
Precision = Literal["fp32", "fp16", "int8"]
HardwareClass = Literal["nvidia-gpu", "jetson", "cpu"]
"""Where a worker can run; derived from node labels (see the README's placement section)."""
HARDWARE_CLASSES: tuple[HardwareClass, ...] = ("nvidia-gpu", "jetson", "cpu")


class InputSize(ApiModel):
    """Network input resolution in pixels."""

    width: int = Field(ge=32, le=4096)
    """Input width in pixels (32 to 4096)."""
    height: int = Field(ge=32, le=4096)
    """Input height in pixels (32 to 4096)."""


class BatchProfile(ApiModel):
    """Batch sizes the build accepts (a TensorRT optimisation profile: min <= opt <= max)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.min <= self.opt && self.opt <= self.max",
                "spec.batch must satisfy min <= opt <= max",
            )
        )
    }

    min: int = Field(default=1, ge=1, le=1024)
    """Smallest batch size the build accepts."""
    opt: int = Field(default=1, ge=1, le=1024)
    """Batch size the build is tuned for."""
    max: int = Field(default=1, ge=1, le=1024)
    """Largest batch size the build accepts."""


class Artifact(ApiModel):
    """Where the model file is and its checksum (verified before it is loaded)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            no_password("uri", "spec.artifact.uri must not carry a password"),
            cel(
                "self.uri.startsWith('s3://') || (!has(self.endpoint) && "
                "!has(self.credentialsSecretRef))",
                "spec.artifact.endpoint and credentialsSecretRef are only for s3:// artifacts",
            ),
        )
    }

    uri: str = Field(max_length=2048, pattern=r"^(file|https?|s3|gs|oci|triton)://.+$")
    """file://, http(s)://, s3://, gs://, oci:// or triton://<model name> for a Triton model."""
    sha256: str | None = Field(default=None, pattern=r"^[a-f0-9]{64}$")
    """Lower-case hex SHA-256 of the file; required except for triton:// models."""
    endpoint: str | None = Field(default=None, max_length=512, pattern=r"^https?://[^/@]+/?$")
    """s3:// only: the S3-compatible store, e.g. http://minio.storage:9000 (default: AWS, or
    the worker's AWS_ENDPOINT_URL_S3)."""
    credentials_secret_ref: SecretKeyNames | None = None
    """s3:// only: a Secret in the namespace with the access key ID (``usernameKey``) and
    secret access key (``passwordKey``); without it workers use their environment or IAM
    role. Only the env var names reach the worker config."""


class Calibration(ApiModel):
    """How an INT8 build was calibrated (needed to rebuild or verify it)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            no_password("datasetUri", "spec.calibration.datasetUri must not carry a password"),
            no_password(
                "cacheUri", "spec.calibration.cacheUri must not carry a password", optional=True
            ),
        )
    }

    dataset_uri: str = Field(max_length=2048)
    """Images used for calibration."""
    method: Literal["entropy", "minmax", "percentile"] = "entropy"
    """Calibration algorithm: entropy, minmax or percentile."""
    samples: int = Field(default=512, ge=1, le=100000)
    """Number of calibration images used."""
    cache_uri: str | None = Field(default=None, max_length=2048)
    """TensorRT calibration cache, if one was kept."""


class HardwareTarget(ApiModel):
    """Performance of this variant on one hardware class (measured by model_catalog benchmarks)."""

    accelerator: HardwareClass
    """Hardware class these figures are for: nvidia-gpu, jetson or cpu."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=16)
    """Extra node labels the build needs, e.g. nvidia.com/gpu.product for a TensorRT engine."""
    expected_fps: float = Field(gt=0, le=1_000_000)
    """Frames per second one worker replica sustains with this variant on this hardware."""
    p99_latency_ms: float = Field(gt=0, le=60_000)
    """Per-frame p99 latency at that throughput."""
    measured: str | None = Field(default=None, max_length=1024)
    """Where these figures were measured (benchmark result, hardware); absent while they are
    planning estimates (status.hardwareClasses[].measured says which)."""


class Accuracy(ApiModel):
    """Measured accuracy, used to pick the best variant that meets a Pipeline's SLO."""

    metric: Literal["mAP50-95", "mAP50", "top1", "top5", "MOTA", "IDF1", "AP-pose"]
    """Accuracy metric: mAP50-95, mAP50, top1, top5, MOTA, IDF1 or AP-pose."""
    value: float = Field(ge=0, le=1)
    """Value of the metric as a fraction (0 to 1)."""
    dataset: str = Field(max_length=253)
    """Dataset the metric was measured on, e.g. coco128."""


DEFAULT_BUDGET_POINTS = 1.0
"""What an INT8 build may lose against its FP32 parent, in mAP50-95 points, by default."""


class AccuracyGate(ApiModel):
    """An INT8 build's accuracy against its FP32 parent on held-out images that calibration did
    not see (``python -m model_catalog.tools.int8 gate`` measures it and prints this block).
    The build is accepted when it loses at most ``budgetPoints``; the operator never selects an
    INT8 detector that is not accepted."""

    parent: str = Field(max_length=253, pattern=NAME_PATTERN)
    """The FP32 ModelVariant this build was quantized from."""
    metric: Literal["mAP50-95", "mAP50"] = "mAP50-95"
    """Accuracy metric of both measurements: mAP50-95 (what the tool measures) or mAP50."""
    parent_value: float = Field(ge=0, le=1)
    """The parent's accuracy on the held-out set (fraction, 0 to 1)."""
    value: float = Field(ge=0, le=1)
    """This build's accuracy on the same held-out set (fraction, 0 to 1)."""
    budget_points: float = Field(default=DEFAULT_BUDGET_POINTS, ge=0, le=100)
    """Most accuracy this build may lose against the parent, in points (1.0 = 0.01 mAP)."""
    dataset: str = Field(max_length=253)
    """The held-out set, e.g. coco128 images 64-127 (calibration used 0-63)."""

    @property
    def loss_points(self) -> float:
        return (self.parent_value - self.value) * 100

    @property
    def accepted(self) -> bool:
        return self.loss_points <= self.budget_points + 1e-9


class TrackingThresholds(ApiModel):
    """Tracker thresholds fitted to a detector's score distribution (``model_catalog.tools.
    tracking_thresholds`` measures it on calibration images): a tracker tuned for another
    detector starts few tracks from one that scores people lower."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.lowScore < self.highScore && self.highScore <= self.newTrackScore",
                "spec.tracking must satisfy lowScore < highScore <= newTrackScore",
            )
        )
    }

    high_score: float = Field(gt=0, lt=1)
    """ByteTrack: detections above this are matched first and may start tracks."""
    low_score: float = Field(gt=0, lt=1)
    """ByteTrack: detections between this and highScore only continue existing tracks."""
    new_track_score: float = Field(gt=0, le=1)
    """ByteTrack: least score of a detection that starts a track."""
    match_iou: float = Field(default=0.3, gt=0, lt=1)
    """SORT and DeepSORT: least IoU between a predicted track box and a detection to pair."""
    calibration: str = Field(default="", max_length=1024)
    """What the thresholds were measured on and how, e.g. coco128 persons, F1-best score."""


class ModelVariantSpec(ApiModel):
    """Desired state of a ModelVariant."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.precision != 'int8' || has(self.calibration) || self.format == 'onnx'",
                "INT8 TensorRT/OpenVINO/Triton variants must name their calibration in "
                "spec.calibration",
                field_path=".calibration",
            ),
            cel(
                "self.format == 'triton' ? self.artifact.uri.startsWith('triton://') "
                ": !self.artifact.uri.startsWith('triton://')",
                "spec.artifact.uri uses triton:// exactly when spec.format is triton",
                field_path=".artifact.uri",
            ),
            cel(
                "self.artifact.uri.startsWith('triton://') || has(self.artifact.sha256)",
                "spec.artifact.sha256 is required for files (only triton:// models omit it)",
                field_path=".artifact.sha256",
            ),
            cel(
                "self.task == 'detect' ? has(self.decoder) : !has(self.decoder)",
                "spec.decoder is required for detect models (yolox, yolov8 or nanodet) and only "
                "allowed there",
                field_path=".decoder",
            ),
            cel(
                "self.task == 'detect' || !has(self.tracking)",
                "spec.tracking (tracker thresholds) is only allowed on detect models",
                field_path=".tracking",
            ),
            cel(
                "self.precision == 'int8' || !has(self.accuracyGate)",
                "spec.accuracyGate is only for INT8 builds (their accuracy against the FP32 "
                "parent)",
                field_path=".accuracyGate",
            ),
            cel(
                "self.hardware.all(h, self.hardware.exists_one(o, o.accelerator == h.accelerator))",
                "spec.hardware lists each accelerator at most once",
                field_path=".hardware",
            ),
        )
    }

    family: str = Field(max_length=63, pattern=NAME_PATTERN)
    """Model family, e.g. yolox; Pipelines can ask for a family and get its best variant."""
    task: Task
    """What the model does: detect, classify, reid or pose."""
    format: ModelFormat
    """Artifact format: onnx, tensorrt, openvino or triton (a model served by Triton)."""
    precision: Precision
    """Numeric precision: fp32, fp16 or int8 (int8 needs calibration unless ONNX)."""
    input_size: InputSize
    decoder: Literal["yolox", "yolov8", "nanodet"] | None = None
    """Output layout of a detector."""
    batch: BatchProfile = Field(default_factory=BatchProfile)
    dynamic_input_size: bool = False
    """The artifact accepts other square input sizes (multiples of 32); allows the
    autoscaler's resolution degradation step."""
    gflops: float | None = Field(default=None, gt=0)
    """Compute per frame; orders variants from small to large for the degradation ladder."""
    labels: list[str] = Field(default_factory=list, max_length=10000)
    """Class names by class id."""
    artifact: Artifact
    calibration: Calibration | None = None
    """Required for INT8 builds other than dynamically quantised ONNX."""
    hardware: list[HardwareTarget] = Field(min_length=1, max_length=8)
    """Measured performance per hardware class; each accelerator at most once."""
    accuracy: Accuracy | None = None
    tracking: TrackingThresholds | None = None
    """Tracker thresholds for this detector; trackers use their references' defaults without."""
    accuracy_gate: AccuracyGate | None = None
    """INT8 only: accuracy against the FP32 parent; an INT8 detector without it, or over its
    budget, is never selected."""

    def target(self, hardware_class: HardwareClass) -> HardwareTarget | None:
        """This variant's figures on ``hardware_class``, if it runs there."""
        return next((h for h in self.hardware if h.accelerator == hardware_class), None)

    def accepted(self) -> bool | None:
        """Whether Pipelines may select this variant on accuracy: INT8 detectors need an
        accuracy gate within budget (False otherwise); other variants have none (None)."""
        if self.precision != "int8" or self.task != "detect":
            return None
        return self.accuracy_gate is not None and self.accuracy_gate.accepted


class EngineStatus(ApiModel):
    """An engine built from the artifact for one hardware class."""

    accelerator: HardwareClass
    """Hardware class the engine was built for."""
    uri: str
    """Where the built engine is stored."""
    built: bool = False
    """True once the engine has been built."""


class HardwareClassStatus(ApiModel):
    """The variant on one hardware class: can its workers get it, did its checksum match, and
    are its figures measured. ``available``/``verified`` come from the workers of Pipelines
    running it there (unset until one reports); ``measured`` from spec.hardware[].measured."""

    accelerator: HardwareClass
    """Hardware class: nvidia-gpu, jetson or cpu."""
    available: bool | None = None
    """A worker there fetched the artifact (False: missing or unreachable)."""
    verified: bool | None = None
    """The artifact's SHA-256 matched there (False: it did not; the worker kept its model)."""
    measured: bool | None = None
    """spec.hardware's fps and p99 for this class are measured, not planning estimates."""
    reason: str | None = Field(default=None, max_length=128)
    """Why it is not available or verified (ArtifactMissing, ChecksumMismatch, FetchFailed,
    UnsupportedArtifact)."""
    message: str | None = Field(default=None, max_length=1024)
    """What the worker said, e.g. the two checksums."""
    last_update_time: dt.datetime | None = None
    """When a worker last reported on it."""


class ModelVariantStatus(ApiModel):
    """Observed state of a ModelVariant."""

    observed_generation: int | None = None
    """The .metadata.generation this status was last computed for."""
    hardware: str | None = None
    """Accelerators this variant runs on, comma-separated (for the printer column)."""
    artifact_verified: bool | None = None
    """Whether the artifact matched spec.artifact.sha256; unset until checked."""
    engines: list[EngineStatus] = Field(default_factory=list)
    """Engines built from the artifact, one per hardware class."""
    accepted: bool | None = None
    """INT8 detectors: within their accuracy budget (spec.accuracyGate); unset for others."""
    hardware_classes: list[HardwareClassStatus] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["accelerator"],
        },
    )
    """Per hardware class of spec.hardware: available, verified, measured."""
    conditions: list[Condition] = Field(
        default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Ready, Accepted (INT8 accuracy gate) and ArtifactVerified (workers' checksums)."""
