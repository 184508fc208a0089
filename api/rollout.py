"""``Pipeline.spec.rollout``: a canary of a detector change on a cohort of cameras.

Like Argo Rollouts or Flagger, but the unit is a camera, not a request: the cohort's cameras
move in steps (percentages) to workers running the candidate, the rest stay on the stable
detector, and after each analysis window the operator compares the two cohorts on what the
workers themselves measure (p99 latency, fps, error rate, detections per frame, mean
confidence and its p50/p90). A step that passes moves on; a failed one rolls every camera
back; passing the last step promotes the candidate to every camera. ``status.rollout``
records each step.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field

from kubevision.api.common import NAME_PATTERN, SUBDOMAIN_PATTERN, ApiModel, LabelSelector, cel
from kubevision.api.common import validations as _validations


class RolloutCandidate(ApiModel):
    """What the canary cohort runs instead of ``spec.stages.detector``: the fields set here
    replace the stable detector's (unset ones are kept)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": _validations(
            cel(
                "has(self.variant) || has(self.family) || has(self.confidence) || has(self.nmsIou)",
                "spec.rollout.candidate must change something: set variant or family (the new "
                "detector), confidence or nmsIou",
            ),
            cel(
                "!(has(self.variant) && has(self.family))",
                "spec.rollout.candidate.variant and spec.rollout.candidate.family exclude each "
                "other: set one",
                field_path=".variant",
            ),
        )
    }

    variant: str | None = Field(default=None, max_length=253, pattern=SUBDOMAIN_PATTERN)
    """The candidate detector ModelVariant (in this namespace)."""
    family: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    """A model family whose best-fitting variant the candidate runs."""
    confidence: float | None = Field(default=None, gt=0, lt=1)
    """The candidate's minimum detection score."""
    nms_iou: float | None = Field(default=None, gt=0, lt=1)
    """The candidate's NMS IoU."""


class RolloutCohort(ApiModel):
    """Which cameras may take part in the canary steps (promotion reaches every camera)."""

    camera_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Cameras of the Pipeline eligible for the canary; empty: all of them."""


class RolloutAnalysis(ApiModel):
    """How long each step is watched and how far the canary cohort may stray from the stable
    cohort, measured over the same window (ratios and differences, never absolute figures:
    the machine's load moves both cohorts alike)."""

    window_seconds: int = Field(default=300, ge=1, le=86_400)
    """Length of each step's analysis window, counted once the step's cameras have moved."""
    min_frames: int = Field(default=100, ge=1, le=10_000_000)
    """Frames each cohort must process in a window for it to count; fewer: inconclusive (the
    window starts again)."""
    max_latency_ratio: float = Field(default=1.5, ge=1, le=100)
    """Canary p99 latency may be at most this times the stable cohort's (plus the tolerance)."""
    latency_tolerance_ms: float = Field(default=20, ge=0, le=60_000)
    """Milliseconds added to the latency bound (histogram buckets are coarse near zero)."""
    min_fps_ratio: float = Field(default=0.8, gt=0, le=1)
    """Canary frames per second per camera must be at least this fraction of the stable's."""
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    """Fraction of failed inference batches the canary may have above the stable's."""
    max_detections_change: float = Field(default=0.5, gt=0, le=10)
    """Relative change of detections per frame allowed (0.5: within -50 % .. +50 %)."""
    max_confidence_change: float = Field(default=0.15, gt=0, le=1)
    """Largest difference of the mean detection confidence allowed."""
    max_confidence_quantile_drop: float = Field(default=0.15, gt=0, le=1)
    """How far the canary's median (p50) and p90 detection confidence may fall below the
    stable's: a shifted distribution with an unchanged mean (fewer sure detections, more
    marginal ones) fails here. Quantiles interpolate within the worker's 0.1-wide buckets,
    as Prometheus' histogram_quantile does."""
    failure_limit: int = Field(default=0, ge=0, le=10)
    """Failed windows tolerated in a row before rolling back (0: the first fails it)."""
    inconclusive_limit: int = Field(default=3, ge=1, le=100)
    """Inconclusive windows in a row (too few frames) before rolling back."""


class Rollout(ApiModel):
    """A canary of ``candidate`` over ``steps`` of the cohort, with automatic promotion and
    rollback; ``promote`` and ``abort`` decide by hand."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": _validations(
            cel(
                "!(self.promote && self.abort)",
                "spec.rollout.promote and spec.rollout.abort cannot both be true",
                field_path=".promote",
            ),
            cel(
                "self.steps.isSorted()",
                "spec.rollout.steps must be increasing percentages, e.g. [10, 50, 100]",
                field_path=".steps",
            ),
        )
    }

    candidate: RolloutCandidate
    cohort: RolloutCohort = Field(default_factory=RolloutCohort)
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=10,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Percentages of the cohort's cameras on the candidate, each analysed for a window;
    100 (or passing the last step) promotes the candidate to every camera."""
    analysis: RolloutAnalysis = Field(default_factory=RolloutAnalysis)
    progress_deadline_seconds: int = Field(default=600, ge=10, le=86_400)
    """Longest a step may take to move its cameras (workers started, cameras taken on);
    beyond it the rollout rolls back (ProgressDeadlineExceeded)."""
    promote: bool = False
    """Promote the candidate to every camera now, skipping the remaining analysis."""
    abort: bool = False
    """Roll every camera back to the stable detector now; set false again to restart."""


RolloutPhase = Literal["Progressing", "Promoted", "RolledBack", "Aborted", "Invalid"]
Verdict = Literal["Passed", "Failed", "Inconclusive"]


class CohortFigures(ApiModel):
    """One cohort's figures over an analysis window, from its workers' own metrics."""

    cameras: int
    """Cameras the cohort's workers report."""
    frames: int
    """Frames the cohort processed in the window."""
    p99_latency_ms: float | None = None
    """End-to-end p99 latency (capture to result published)."""
    fps: float
    """Processed frames per second per camera."""
    error_rate: float
    """Failed inference batches / batches run."""
    detections_per_frame: float
    """Detections kept (after tracking) per processed frame."""
    mean_confidence: float | None = None
    """Mean score of those detections; unset without detections."""
    confidence_p50: float | None = None
    """Median score of those detections (from the confidence histogram); unset without."""
    confidence_p90: float | None = None
    """90th percentile of their scores; unset without detections."""


class RolloutAnalysisResult(ApiModel):
    """The last analysis: both cohorts' figures and the verdict."""

    time: dt.datetime
    """When the window ended."""
    step: int
    """Index of the step analysed."""
    window_seconds: float
    """Length of the window actually measured."""
    stable: CohortFigures
    canary: CohortFigures
    verdict: Verdict
    """Passed, Failed, or Inconclusive (too few frames)."""
    failures: list[str] = Field(default_factory=list)
    """Which thresholds the canary broke, with the figures."""


class RolloutStatus(ApiModel):
    """Where the rollout stands."""

    revision: str
    """Hash of the stable detector and the candidate: a new one starts a new rollout."""
    phase: RolloutPhase
    """Progressing, Promoted (every camera runs the candidate), RolledBack, Aborted, or
    Invalid (the reason says why it cannot run)."""
    step: int = 0
    """Index of the current step in spec.rollout.steps."""
    weight: int = 0
    """Percentage of the cohort the candidate should serve now (0 once rolled back)."""
    low_weight: int = 0
    """Cameras ranked at or above this percentage of the cohort are served by the stable
    workers (see highWeight)."""
    high_weight: int = 0
    """While cameras move, those ranked below this percentage are served by the canary's
    workers and those at or above lowWeight by the stable's (both, for the moving ones: make
    before break); equal once every moving camera was taken on by its new worker."""
    canary_cameras: int = 0
    """Cameras on the candidate (the moving ones counted where they go)."""
    stable_cameras: int = 0
    """Cameras on the stable detector."""
    step_started_at: dt.datetime | None = None
    """When the current step (or the rollback/promotion) began moving cameras."""
    failed_analyses: int = 0
    """Failed windows in a row (see analysis.failureLimit)."""
    inconclusive_analyses: int = 0
    """Inconclusive windows in a row (see analysis.inconclusiveLimit)."""
    reason: str
    """CamelCase reason of the last change, as the Rollout condition's."""
    message: str = ""
    """What happened, with the figures of a failed analysis."""
    last_analysis: RolloutAnalysisResult | None = None
