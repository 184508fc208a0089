"""Canary rollouts of a detector change by camera cohort (``Pipeline.spec.rollout``).

The cohort's cameras are ranked by a hash of (Pipeline, camera), so a step of w % is the first
w % of that ranking and every larger step contains every smaller one. Cameras on the candidate
are planned into canary groups (their own StatefulSets, ConfigMaps and Services: ``track``
canary), the others into the stable groups as before.

Moves are make-before-break between groups: while a step moves cameras, each moving camera is
planned into both its old and its new group (``lowWeight`` .. ``highWeight``), and it leaves
the old one only once a fresh scrape shows a ready worker of its new group serving it. So no
camera is unwatched at any moment, and exactly one worker watches it outside a move.

After each step's analysis window the cohorts are compared on what their workers measured over
that same window (:func:`cohort_figures`, :func:`judge`); a pass moves to the next step,
passing the last one promotes (the stable groups take the candidate in place and the canary's
cameras come home), a failure rolls every camera back to the stable groups. The step, phase
and figures live in ``status.rollout`` (so they survive an operator restart); the window's
baseline scrapes only in memory (:class:`RolloutMemory`: after a restart the window starts
again). Everything here but the scrapes' arrival is pure code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from kubevision.api.common import ConditionStatus
from kubevision.api.pipeline import PipelineSpec
from kubevision.api.rollout import (
    CohortFigures,
    Rollout,
    RolloutAnalysis,
    RolloutAnalysisResult,
    RolloutPhase,
    RolloutStatus,
    Verdict,
)
from kubevision.operator import conditions as c
from kubevision.operator.hardware import NodeInfo
from kubevision.operator.planner import (
    Camera,
    GroupScaling,
    PipelinePlan,
    Problem,
    plan_pipeline,
)
from kubevision.operator.selection import Variant
from kubevision.operator.signals import Scrape, quantile

_FINAL: frozenset[RolloutPhase] = frozenset({"Promoted", "RolledBack", "Aborted", "Invalid"})
_MIN_STABLE_DETECTIONS = 0.05
"""Detections per frame below which the stable cohort's detection statistics say nothing (a
scene with nothing in it): the detection checks are skipped, not failed."""


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """This tick's scrapes of the Pipeline's workers (the autoscaler's), by group and pod."""

    scrapes: Mapping[str, Mapping[str, Scrape]]
    since: float
    """Monotonic start of this tick: older scrapes are a pod's last good one, not news."""
    now: float
    """Monotonic time of the tick."""


@dataclass
class RolloutMemory:
    """A Pipeline's analysis window in progress: which step it is for, the scrapes it started
    from, and when (monotonic). In memory only: after a restart the window starts again."""

    key: tuple[object, ...] | None = None
    baseline: dict[str, Scrape] = field(default_factory=dict)
    started: float = 0.0

    def restart(self, key: tuple[object, ...], scrapes: Mapping[str, Scrape], now: float) -> None:
        self.key, self.baseline, self.started = key, dict(scrapes), now


@dataclass(frozen=True)
class RolloutOutcome:
    plan: PipelinePlan
    status: RolloutStatus | None
    events: list[Event]


# -- who runs what ---------------------------------------------------------------------------


def revision(spec: PipelineSpec) -> str:
    """What identifies a rollout: the stable detector and the candidate (not the steps or the
    thresholds, which may be tuned while it runs)."""
    assert spec.rollout is not None
    both = [spec.detector.wire(), spec.rollout.candidate.wire()]
    return hashlib.sha256(json.dumps(both, sort_keys=True).encode()).hexdigest()[:10]


def candidate_spec(spec: PipelineSpec) -> PipelineSpec:
    """The Pipeline as the canary cohort runs it: the candidate's fields over the detector's."""
    assert spec.rollout is not None
    want = spec.rollout.candidate
    detector = spec.detector
    update: dict[str, object] = {}
    if want.variant is not None or want.family is not None:
        update |= {"variant": want.variant, "family": want.family}
    if want.confidence is not None:
        update["confidence"] = want.confidence
    if want.nms_iou is not None:
        update["nms_iou"] = want.nms_iou
    stages = spec.stages.model_copy(update={"detector": detector.model_copy(update=update)})
    return spec.model_copy(update={"stages": stages})


def selected_cameras(spec: PipelineSpec, cameras: Iterable[Camera]) -> list[Camera]:
    """The cameras the Pipeline serves (as the planner selects them), by name."""
    return sorted(
        (x for x in cameras if not x.spec.paused and spec.camera_selector.matches(x.labels)),
        key=lambda x: x.name,
    )


def _rank(pipeline: str, camera: str) -> str:
    return hashlib.sha256(f"{pipeline}\0{camera}".encode()).hexdigest()


def canary_set(
    pipeline: str, rollout: Rollout, selected: list[Camera], weight: int
) -> frozenset[str]:
    """The cameras on the candidate at ``weight`` % of the cohort: the first of the cohort's
    hash ranking, at least one and never every selected camera (the stable cohort is the
    baseline), all of them at 100."""
    if weight <= 0:
        return frozenset()
    if weight >= 100:
        return frozenset(x.name for x in selected)
    cohort = sorted(
        (x.name for x in selected if rollout.cohort.camera_selector.matches(x.labels)),
        key=lambda name: _rank(pipeline, name),
    )
    count = min(max(1, math.ceil(weight * len(cohort) / 100)), len(cohort), len(selected) - 1)
    return frozenset(cohort[: max(count, 0)])


def placement_weight(status: RolloutStatus) -> int:
    """Where the canary groups are heading: the step's weight while progressing, nothing once
    promoted (the stable groups run the candidate) or rolled back."""
    return status.weight if status.phase == "Progressing" else 0


@dataclass(frozen=True)
class Tracks:
    """Which cameras each side serves now, and which of them are only leaving it."""

    stable: frozenset[str]
    canary: frozenset[str]
    moving: frozenset[str]
    to_canary: frozenset[str]
    """The moving cameras headed for the canary groups (the rest head for the stable ones)."""


def tracks(
    pipeline: str, rollout: Rollout, selected: list[Camera], status: RolloutStatus
) -> Tracks:
    high = canary_set(pipeline, rollout, selected, status.high_weight)
    low = canary_set(pipeline, rollout, selected, status.low_weight)
    target = canary_set(pipeline, rollout, selected, placement_weight(status))
    everyone = frozenset(x.name for x in selected)
    moving = high - low
    return Tracks(everyone - low, high, moving, moving & target)


def plan_tracks(
    pipeline: str,
    spec: PipelineSpec,
    cameras: list[Camera],
    variants: list[Variant],
    nodes: list[NodeInfo],
    previous: Mapping[str, Mapping[str, int]],
    scaling: Mapping[str, GroupScaling],
    rollout_status: RolloutStatus,
) -> PipelinePlan:
    """The stable groups (running the candidate once promoted) and the canary groups."""
    assert spec.rollout is not None
    selected = selected_cameras(spec, cameras)
    side = tracks(pipeline, spec.rollout, selected, rollout_status)
    stable_spec = candidate_spec(spec) if rollout_status.phase == "Promoted" else spec
    stable = plan_pipeline(
        pipeline,
        stable_spec,
        [x for x in selected if x.name in side.stable],
        variants,
        nodes,
        previous,
        scaling,
    )
    canary = plan_pipeline(
        pipeline,
        candidate_spec(spec),
        [x for x in selected if x.name in side.canary],
        variants,
        nodes,
        previous,
        scaling,
        track="canary",
    )
    stages = {"stable": stable_spec.detector, "canary": candidate_spec(spec).detector}
    groups = [
        replace(g, leaving=frozenset(g.cameras) & side.to_canary, detector_stage=stages["stable"])
        for g in stable.groups
    ] + [
        replace(
            g,
            leaving=frozenset(g.cameras) & (side.moving - side.to_canary),
            detector_stage=stages["canary"],
        )
        for g in canary.groups
    ]
    return PipelinePlan(groups, _merge(stable.problems + canary.problems), len(selected))


def _merge(problems: list[Problem]) -> list[Problem]:
    by_reason: dict[str, list[str]] = {}
    for p in problems:
        by_reason.setdefault(p.reason, []).append(p.message)
    return [Problem(r, "; ".join(m)) for r, m in sorted(by_reason.items())]


# -- the comparison --------------------------------------------------------------------------


def cohort_figures(
    before: Mapping[str, Scrape], after: Mapping[str, Scrape], seconds: float
) -> CohortFigures:
    """A cohort's figures over a window from its pods' scrapes at its start and end.

    A pod seen only at the end counts from its start; one whose counters went down restarted
    and counts its current values (as :func:`.signals.combine`)."""
    buckets: dict[float, float] = {}
    scores: dict[float, float] = {}
    frames = detections = conf_sum = conf_count = batches = errors = 0.0
    cameras = 0
    for pod, now in after.items():
        was = before.get(pod)
        if was is None or now.processed < was.processed:
            was = Scrape(now.at, (), 0.0, 0.0, 0.0)
        _add_delta(buckets, now.buckets, was.buckets)
        _add_delta(scores, now.confidence_buckets, was.confidence_buckets)
        frames += now.processed - was.processed
        detections += now.detections - was.detections
        conf_sum += now.confidence_sum - was.confidence_sum
        conf_count += now.confidence_count - was.confidence_count
        batches += now.batches - was.batches
        errors += now.batch_errors - was.batch_errors
        cameras += len(now.cameras or {})
    p99 = quantile(0.99, sorted(buckets.items()))
    p50, p90 = (quantile(q, sorted(scores.items())) for q in (0.5, 0.9))
    return CohortFigures(
        cameras=cameras,
        frames=int(frames),
        p99_latency_ms=None if p99 is None else round(p99 * 1000, 1),
        fps=round(frames / seconds / cameras, 2) if seconds > 0 and cameras else 0.0,
        error_rate=round(errors / batches, 4) if batches > 0 else 0.0,
        detections_per_frame=round(detections / frames, 3) if frames > 0 else 0.0,
        mean_confidence=round(conf_sum / conf_count, 3) if conf_count > 0 else None,
        confidence_p50=None if p50 is None else round(p50, 3),
        confidence_p90=None if p90 is None else round(p90, 3),
    )


def _add_delta(
    total: dict[float, float],
    now: Iterable[tuple[float, float]],
    was: Iterable[tuple[float, float]],
) -> None:
    """Add one pod's histogram growth (cumulative buckets ``now`` minus ``was``) to ``total``."""
    old = dict(was)
    for bound, count in now:
        total[bound] = total.get(bound, 0.0) + count - old.get(bound, 0.0)


def judge(
    stable: CohortFigures, canary: CohortFigures, analysis: RolloutAnalysis
) -> tuple[Verdict, list[str]]:
    """Whether the canary cohort stayed within the analysis' bounds of the stable cohort; the
    failures name each broken bound with both figures. Too few stable frames say nothing
    (inconclusive); too few canary frames are a failure when its frame rate fell short (a
    starving candidate), else inconclusive."""
    few = (
        f"too few frames: stable {stable.frames}, canary {canary.frames} "
        f"(minFrames {analysis.min_frames})"
    )
    if stable.frames < analysis.min_frames:
        return "Inconclusive", [few]
    failures = []
    if canary.fps < stable.fps * analysis.min_fps_ratio:
        failures.append(
            f"fps per camera {canary.fps:g} < {stable.fps * analysis.min_fps_ratio:.2f} "
            f"(stable {stable.fps:g} x {analysis.min_fps_ratio:g})"
        )
    if canary.frames < analysis.min_frames and not failures:
        return "Inconclusive", [few]
    if canary.p99_latency_ms is not None and stable.p99_latency_ms is not None:
        bound = stable.p99_latency_ms * analysis.max_latency_ratio + analysis.latency_tolerance_ms
        if canary.p99_latency_ms > bound:
            failures.append(
                f"p99 latency {canary.p99_latency_ms:g} ms > {bound:g} ms (stable "
                f"{stable.p99_latency_ms:g} ms x {analysis.max_latency_ratio:g} + "
                f"{analysis.latency_tolerance_ms:g} ms)"
            )
    if canary.error_rate > stable.error_rate + analysis.max_error_rate_increase:
        failures.append(
            f"error rate {canary.error_rate:.2%} > stable {stable.error_rate:.2%} + "
            f"{analysis.max_error_rate_increase:.2%}"
        )
    failures += _detection_failures(stable, canary, analysis)
    return ("Failed" if failures else "Passed"), failures


def _detection_failures(
    stable: CohortFigures, canary: CohortFigures, analysis: RolloutAnalysis
) -> list[str]:
    if stable.detections_per_frame < _MIN_STABLE_DETECTIONS:
        return []
    failures = []
    change = canary.detections_per_frame / stable.detections_per_frame - 1
    if abs(change) > analysis.max_detections_change:
        failures.append(
            f"detections per frame {canary.detections_per_frame:g} vs stable "
            f"{stable.detections_per_frame:g} ({change:+.0%}, at most "
            f"±{analysis.max_detections_change:.0%})"
        )
    if canary.mean_confidence is not None and stable.mean_confidence is not None:
        delta = canary.mean_confidence - stable.mean_confidence
        if abs(delta) > analysis.max_confidence_change:
            failures.append(
                f"mean confidence {canary.mean_confidence:g} vs stable "
                f"{stable.mean_confidence:g} ({delta:+.3f}, at most "
                f"±{analysis.max_confidence_change:g})"
            )
    for name in ("p50", "p90"):
        ours = getattr(canary, f"confidence_{name}")
        theirs = getattr(stable, f"confidence_{name}")
        if ours is None or theirs is None:
            continue
        drop = round(theirs - ours, 3)  # of rounded figures: 0.6 - 0.45 is not above 0.15
        if drop > analysis.max_confidence_quantile_drop:
            failures.append(
                f"confidence {name} {ours:g} vs stable {theirs:g} ({-drop:+.3f}, at most "
                f"{analysis.max_confidence_quantile_drop:g} below)"
            )
    return failures


# -- the steps -------------------------------------------------------------------------------


def advance_rollout(
    pipeline: str,
    spec: PipelineSpec,
    cameras: list[Camera],
    variants: list[Variant],
    nodes: list[NodeInfo],
    previous: RolloutStatus | None,
    group_tracks: Mapping[str, str | None],
    observation: Observation | None,
    memory: RolloutMemory,
    now: dt.datetime,
) -> tuple[RolloutStatus, list[Event]]:
    """The rollout's next state: start, manual decisions, moves, analysis windows, verdicts.

    ``group_tracks``: the track of each group the workers were scraped from (status.groups);
    ``observation``: this tick's scrapes, None when the workers were not scraped now (then
    only what needs no measurement can change)."""
    rollout = spec.rollout
    assert rollout is not None
    rev = revision(spec)
    selected = selected_cameras(spec, cameras)
    events: list[Event] = []
    status = previous
    restart = (
        status is None
        or status.revision != rev
        or (status.phase == "Aborted" and not rollout.abort)
    )
    blocked = _blocked(pipeline, spec, selected, variants, nodes)
    if status is not None and status.phase == "Invalid" and blocked is None:
        restart = True
    if restart:
        status = _start(rollout, rev, now)
        events.append(Event("Normal", c.ROLLOUT_STARTED, _step_message(status, rollout)))
        memory.key = None
    assert status is not None
    if blocked is not None and status.phase == "Progressing":
        if restart:  # nothing moved yet: nothing to move back
            status = status.model_copy(update={"high_weight": 0})
        status = _move(status, "Invalid", blocked.reason, blocked.message, now)
        events.append(Event("Warning", blocked.reason, blocked.message))
    elif rollout.abort and status.phase != "Aborted":
        message = "spec.rollout.abort is true: every camera back on the stable detector"
        status = _move(status, "Aborted", c.ABORTED, message, now)
        events.append(Event("Warning", c.ABORTED, message))
    elif rollout.promote and status.phase == "Progressing":
        message = "spec.rollout.promote is true: the candidate goes to every camera"
        status = _move(status, "Promoted", c.MANUALLY_PROMOTED, message, now, weight=100)
        events.append(Event("Normal", c.MANUALLY_PROMOTED, message))
    side = tracks(pipeline, rollout, selected, status)
    if side.moving:
        status, moved = _settle(status, side, group_tracks, observation, rollout, now)
        events += moved
    elif status.phase == "Progressing" and observation is not None:
        status, analysed = _analyse(status, rollout, group_tracks, observation, memory, now)
        events += analysed
    return _counted(status, pipeline, rollout, selected), events


def _blocked(
    pipeline: str,
    spec: PipelineSpec,
    selected: list[Camera],
    variants: list[Variant],
    nodes: list[NodeInfo],
) -> Problem | None:
    """Why the rollout cannot run at all: too few cameras for two cohorts, or a candidate no
    camera of the cohort can run (e.g. a ModelVariant that does not exist)."""
    assert spec.rollout is not None
    cohort = [x for x in selected if spec.rollout.cohort.camera_selector.matches(x.labels)]
    if len(selected) < 2 or not cohort:
        return Problem(
            c.NOT_ENOUGH_CAMERAS,
            f"a canary needs at least 2 selected cameras and 1 in spec.rollout.cohort; "
            f"{len(selected)} selected, {len(cohort)} in the cohort",
        )
    dry = plan_pipeline(pipeline, candidate_spec(spec), cohort, variants, nodes, {}, {}, "canary")
    unusable = [p for p in dry.problems if p.reason == c.NO_MATCHING_VARIANT]
    if unusable and not dry.groups:
        return Problem(c.CANDIDATE_UNAVAILABLE, f"spec.rollout.candidate: {unusable[0].message}")
    return None


def _start(rollout: Rollout, rev: str, now: dt.datetime) -> RolloutStatus:
    weight = rollout.steps[0]
    if weight >= 100:
        return RolloutStatus(
            revision=rev,
            phase="Promoted",
            weight=100,
            step_started_at=now,
            reason=c.PROMOTED,
            message="the only step is 100 %: the candidate goes to every camera",
        )
    status = RolloutStatus(
        revision=rev,
        phase="Progressing",
        weight=weight,
        high_weight=weight,
        step_started_at=now,
        reason=c.CAMERAS_MOVING,
    )
    return status.model_copy(update={"message": _step_message(status, rollout)})


def _step_message(status: RolloutStatus, rollout: Rollout) -> str:
    if status.phase != "Progressing":
        return status.message
    return (
        f"step {status.step + 1}/{len(rollout.steps)}: {status.weight} % of the cohort on the "
        f"candidate, analysed for {rollout.analysis.window_seconds} s once its cameras moved"
    )


def _move(
    status: RolloutStatus,
    phase: RolloutPhase,
    reason: str,
    message: str,
    now: dt.datetime,
    weight: int | None = None,
    step: int | None = None,
) -> RolloutStatus:
    """Head for ``phase`` (and its placement): the cameras between the old and the new
    placement move, make-before-break (the weights' range widens to cover both)."""
    new = status.model_copy(
        update={
            "phase": phase,
            "weight": (0 if phase in ("RolledBack", "Aborted", "Invalid") else status.weight)
            if weight is None
            else weight,
            "step": status.step if step is None else step,
            "reason": reason,
            "message": message,
            "step_started_at": now,
            "failed_analyses": 0 if phase != "Progressing" else status.failed_analyses,
            "inconclusive_analyses": 0,
        }
    )
    target = placement_weight(new)
    return new.model_copy(
        update={
            "low_weight": min(status.low_weight, target),
            "high_weight": max(status.high_weight, target),
        }
    )


def _settle(
    status: RolloutStatus,
    side: Tracks,
    group_tracks: Mapping[str, str | None],
    observation: Observation | None,
    rollout: Rollout,
    now: dt.datetime,
) -> tuple[RolloutStatus, list[Event]]:
    """Finish a move once every moving camera is served on its new side; roll back a step
    that cannot move its cameras within the progress deadline."""
    if observation is not None and side.moving <= _served(side, group_tracks, observation):
        target = placement_weight(status)
        settled = status.model_copy(update={"low_weight": target, "high_weight": target})
        if status.phase != "Progressing":
            return settled, [Event("Normal", status.reason, f"cameras moved: {status.message}")]
        message = _step_message(settled, rollout)
        settled = settled.model_copy(update={"reason": c.ANALYSING, "message": message})
        return settled, [Event("Normal", c.ANALYSING, message)]
    started = status.step_started_at or now
    late = (now - started).total_seconds() > rollout.progress_deadline_seconds
    if status.phase == "Progressing" and late:
        message = (
            f"step {status.step + 1}: the candidate's workers did not take on their cameras "
            f"within {rollout.progress_deadline_seconds} s; rolled back"
        )
        rolled = _move(status, "RolledBack", c.PROGRESS_DEADLINE_EXCEEDED, message, now)
        return rolled, [Event("Warning", c.PROGRESS_DEADLINE_EXCEEDED, message)]
    return status, []


def _served(
    side: Tracks, group_tracks: Mapping[str, str | None], observation: Observation
) -> set[str]:
    """Moving cameras that a ready worker of their new side reports (fresh scrapes only)."""
    served: set[str] = set()
    for group, pods in observation.scrapes.items():
        track = group_tracks.get(group, "missing")
        if track == "missing":
            continue
        for scrape in pods.values():
            if scrape.at < observation.since or scrape.cameras is None:
                continue
            for camera in scrape.cameras:
                if camera in side.moving and (camera in side.to_canary) == (track == "canary"):
                    served.add(camera)
    return served


def _by_track(
    observation: Observation, group_tracks: Mapping[str, str | None], track: str | None
) -> dict[str, Scrape]:
    return {
        pod: scrape
        for group, pods in observation.scrapes.items()
        if group in group_tracks and group_tracks[group] == track
        for pod, scrape in pods.items()
        if scrape.at >= observation.since
    }


def _cameras_of(scrapes: Mapping[str, Scrape]) -> dict[str, frozenset[str]]:
    return {pod: frozenset(s.cameras or {}) for pod, s in scrapes.items()}


def _restarted(before: Mapping[str, Scrape], after: Mapping[str, Scrape]) -> bool:
    """Whether a worker's counters went down between the two scrapes."""
    return any(
        now.processed < was.processed or now.detections < was.detections
        for pod, now in after.items()
        if (was := before.get(pod)) is not None
    )


def _analyse(
    status: RolloutStatus,
    rollout: Rollout,
    group_tracks: Mapping[str, str | None],
    observation: Observation,
    memory: RolloutMemory,
    now: dt.datetime,
) -> tuple[RolloutStatus, list[Event]]:
    """Start the step's window, or judge it once it is long enough; then act on the verdict."""
    current = {
        **{f"stable/{p}": s for p, s in _by_track(observation, group_tracks, None).items()},
        **{f"canary/{p}": s for p, s in _by_track(observation, group_tracks, "canary").items()},
    }
    key = (status.revision, status.step, status.weight, status.step_started_at)
    if memory.key != key:
        memory.restart(key, current, observation.now)
        return status, []
    if _cameras_of(memory.baseline) != _cameras_of(current) or _restarted(memory.baseline, current):
        # a worker took on or let go of cameras since the window began (a move's last
        # config reaching it), or its counters started again (a restart, a camera's stream
        # made anew): its figures would mix cohorts or cover part of the window, so the
        # window restarts
        memory.restart(key, current, observation.now)
        return status, []
    seconds = observation.now - memory.started
    if seconds < rollout.analysis.window_seconds:
        return status, []
    figures = {
        side: cohort_figures(
            {p: s for p, s in memory.baseline.items() if p.startswith(f"{side}/")},
            {p: s for p, s in current.items() if p.startswith(f"{side}/")},
            seconds,
        )
        for side in ("stable", "canary")
    }
    verdict, failures = judge(figures["stable"], figures["canary"], rollout.analysis)
    memory.restart(key, current, observation.now)
    result = RolloutAnalysisResult(
        time=now.replace(microsecond=0),
        step=status.step,
        window_seconds=round(seconds, 1),
        stable=figures["stable"],
        canary=figures["canary"],
        verdict=verdict,
        failures=failures,
    )
    status = status.model_copy(update={"last_analysis": result})
    return _verdict(status, rollout, verdict, failures, now)


def _verdict(
    status: RolloutStatus,
    rollout: Rollout,
    verdict: Verdict,
    failures: list[str],
    now: dt.datetime,
) -> tuple[RolloutStatus, list[Event]]:
    step = f"step {status.step + 1} ({status.weight} %)"
    if verdict == "Passed":
        following = [w for w in rollout.steps[status.step + 1 :] if w < 100]
        if not following:
            message = f"{step} passed: the candidate is promoted to every camera"
            promoted = _move(status, "Promoted", c.PROMOTED, message, now, weight=100)
            return promoted, [Event("Normal", c.PROMOTED, message)]
        message = f"{step} passed; moving to {following[0]} %"
        moved = _move(
            status, "Progressing", c.STEP_PASSED, message, now, following[0], status.step + 1
        )
        moved = moved.model_copy(update={"failed_analyses": 0})
        return moved, [Event("Normal", c.STEP_PASSED, message)]
    if verdict == "Inconclusive":
        count = status.inconclusive_analyses + 1
        message = f"{step}: {'; '.join(failures)}"
        if count > rollout.analysis.inconclusive_limit:
            rolled = _move(status, "RolledBack", c.ANALYSIS_INCONCLUSIVE, message, now)
            return rolled, [Event("Warning", c.ANALYSIS_INCONCLUSIVE, f"rolled back: {message}")]
        waiting = status.model_copy(
            update={
                "inconclusive_analyses": count,
                "reason": c.ANALYSIS_INCONCLUSIVE,
                "message": f"{message}; window {count} of {rollout.analysis.inconclusive_limit}",
            }
        )
        return waiting, []
    count = status.failed_analyses + 1
    message = f"{step} failed: {'; '.join(failures)}"
    if count > rollout.analysis.failure_limit:
        rolled = _move(status, "RolledBack", c.ANALYSIS_FAILED, f"{message}; rolled back", now)
        return rolled, [Event("Warning", c.ANALYSIS_FAILED, f"{message}; rolled back")]
    again = status.model_copy(
        update={"failed_analyses": count, "reason": c.ANALYSIS_FAILED, "message": message}
    )
    return again, [Event("Warning", c.ANALYSIS_FAILED, message)]


def _counted(
    status: RolloutStatus, pipeline: str, rollout: Rollout, selected: list[Camera]
) -> RolloutStatus:
    if status.phase == "Promoted":
        on_candidate = len(selected)
    elif status.phase == "Progressing":
        on_candidate = len(canary_set(pipeline, rollout, selected, status.weight))
    else:
        on_candidate = 0
    return status.model_copy(
        update={"canary_cameras": on_candidate, "stable_cameras": len(selected) - on_candidate}
    )


def rollout_condition_status(status: RolloutStatus) -> ConditionStatus:
    """The Rollout condition: True while healthy (progressing, promoted), else False."""
    return "True" if status.phase in ("Progressing", "Promoted") else "False"


def is_final(status: RolloutStatus) -> bool:
    return status.phase in _FINAL
