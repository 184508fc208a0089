"""Condition types and reasons (one place, so handlers, tests and docs agree), and the helper
that keeps ``lastTransitionTime`` stable while a condition's status does not change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from kubevision.api.common import Condition, ConditionStatus

# types
READY = "Ready"
DEGRADED = "Degraded"
CONNECTED = "Connected"
ASSIGNED = "Assigned"
AUTOSCALING = "Autoscaling"
MODELS_VERIFIED = "ModelsVerified"
"""Pipeline: its workers run their configured models, whose artifacts' checksums matched."""
ARTIFACT_VERIFIED = "ArtifactVerified"
"""ModelVariant: the workers running it fetched its artifact and its checksum matched."""
ACCEPTED_BY_GATE = "Accepted"
"""ModelVariant (INT8 detectors): within its accuracy budget against the FP32 parent."""
ROLLOUT = "Rollout"
"""Pipeline with spec.rollout: True while the canary progresses or once promoted, False once
rolled back, aborted or unusable (the reason says which; status.rollout has the figures)."""

# reasons
WORKERS_READY = "WorkersReady"
WORKERS_STARTING = "WorkersStarting"
NO_CAMERAS = "NoCameras"
NO_MATCHING_VARIANT = "NoMatchingVariant"
NO_SCHEDULABLE_NODES = "NoSchedulableNodes"
NO_CAPACITY = "NoCapacity"
AS_EXPECTED = "AsExpected"
INVALID_SPEC = "InvalidSpec"
RECONCILE_FAILED = "ReconcileFailed"
ACCEPTED = "Accepted"
NO_PIPELINE = "NoPipeline"
ASSIGNED_TO_WORKER = "AssignedToWorker"
AWAITING_WORKER = "AwaitingWorker"
SCALING_ACTIVE = "ScalingActive"
METRICS_UNAVAILABLE = "MetricsUnavailable"
AWAITING_METRICS = "AwaitingMetrics"
STREAMING = "Streaming"
SOURCE_UNREACHABLE = "SourceUnreachable"
PAUSED = "Paused"
CHECKSUM_MATCHED = "ChecksumMatched"
CHECKSUM_MISMATCH = "ChecksumMismatch"
"""As the worker reports it (kubevision.worker.models), like ArtifactMissing, FetchFailed."""
WITHIN_BUDGET = "WithinBudget"
BUDGET_EXCEEDED = "AccuracyBudgetExceeded"
ACCURACY_NOT_MEASURED = "AccuracyNotMeasured"
# rollout reasons (Rollout condition, status.rollout.reason and Events)
ROLLOUT_STARTED = "RolloutStarted"
CAMERAS_MOVING = "CamerasMoving"
ANALYSING = "Analysing"
STEP_PASSED = "StepPassed"
PROMOTED = "Promoted"
MANUALLY_PROMOTED = "ManuallyPromoted"
ANALYSIS_FAILED = "AnalysisFailed"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
ABORTED = "Aborted"
CANDIDATE_UNAVAILABLE = "CandidateUnavailable"
NOT_ENOUGH_CAMERAS = "NotEnoughCameras"


def invalid_spec_status(
    exc: ValidationError, generation: int | None, previous: Iterable[Condition]
) -> dict[str, Any]:
    """Status for a spec the API accepted but the operator cannot parse: Ready=False, why."""
    ready = condition(
        READY, "False", INVALID_SPEC, str(exc.errors()[0]["msg"]), generation, previous
    )
    return {"observedGeneration": generation, "conditions": [ready.wire()]}


def condition(
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    previous: Iterable[Condition] = (),
    now: dt.datetime | None = None,
) -> Condition:
    """A condition whose transition time moves only when its status changes."""
    old = next((c for c in previous if c.type == type_), None)
    if old is not None and old.status == status:
        changed_at = old.last_transition_time
    else:
        changed_at = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=changed_at,
        observed_generation=generation,
    )
