"""The canary rollout's pure parts: cohorts, the cohort comparison, the step machine and the
plan of both sides (:mod:`kubevision.operator.rollout`)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from prometheus_client import generate_latest

from kubevision.api.pipeline import PipelineSpec
from kubevision.api.rollout import CohortFigures, RolloutAnalysis, RolloutStatus
from kubevision.operator import rollout as r
from kubevision.operator.builders import build_worker_config
from kubevision.operator.planner import Camera, group_name
from kubevision.operator.signals import Scrape, parse_metrics
from kubevision.worker.metrics import WorkerMetrics
from tests.unit.factories import camera, simulated_nodes, variant

CPU = [{"accelerator": "cpu", "expectedFps": 1000, "p99LatencyMs": 1}]
VARIANTS = [variant("stable", targets=CPU), variant("good", targets=CPU)]
NODES = simulated_nodes()
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STABLE = group_name("p", "site-a", "cpu")
CANARY = group_name("p", "site-a", "cpu", "canary")
TRACKS = {STABLE: None, CANARY: "canary"}


def spec(**rollout: Any) -> PipelineSpec:
    body: dict[str, Any] = {
        "stages": {"detector": {"variant": "stable"}},
        "placement": {"hardwareClasses": ["cpu"]},
        "slo": {"p99LatencyMs": 1000},
    }
    if rollout is not None:
        body["rollout"] = {
            "candidate": {"variant": "good"},
            "steps": [25, 50, 100],
            "analysis": {"windowSeconds": 10, "minFrames": 10},
            **rollout,
        }
    return PipelineSpec.model_validate(body)


def cameras(n: int, **labels: str) -> list[Camera]:
    return [camera(f"cam-{i:02d}", labels=labels) for i in range(n)]


def figures(**over: Any) -> CohortFigures:
    base: dict[str, Any] = {
        "cameras": 2,
        "frames": 200,
        "p99LatencyMs": 40.0,
        "fps": 10.0,
        "errorRate": 0.0,
        "detectionsPerFrame": 3.0,
        "meanConfidence": 0.6,
        "confidenceP50": 0.6,
        "confidenceP90": 0.85,
    }
    return CohortFigures.model_validate(base | over)


def scores(detections: float, low: float = 0.0) -> tuple[tuple[float, float], ...]:
    """A confidence histogram (cumulative, the worker's buckets): ``low`` of the detections
    scored in 0.2-0.3, the rest in 0.4-0.5."""
    bounds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, float("inf"))
    below = {0.1: 0.0, 0.2: 0.0, 0.3: low * detections, 0.4: low * detections}
    return tuple((b, below.get(b, detections)) for b in bounds)


def scrape(
    at: float, cams: list[str], frames: float, detections: float = 0.0, low: float = 0.0
) -> Scrape:
    """A worker's counters: every frame within 20 ms, scores of 0.5 (``low``: the fraction
    of detections scored 0.2-0.3 in the histogram)."""
    buckets = ((0.02, frames), (float("inf"), frames))
    return Scrape(
        at,
        buckets,
        frames,
        0.0,
        0.0,
        {c: None for c in cams},  # type: ignore[misc]
        detections=detections,
        confidence_sum=0.5 * detections,
        confidence_count=detections,
        batches=frames,
        confidence_buckets=scores(detections, low),
    )


# -- cohorts -------------------------------------------------------------------------------


def test_steps_are_nested_and_never_take_every_camera() -> None:
    rollout = spec().rollout
    assert rollout is not None
    cams = cameras(10)
    sets = [r.canary_set("p", rollout, cams, w) for w in (0, 10, 25, 50, 99, 100)]
    assert [len(s) for s in sets] == [0, 1, 3, 5, 9, 10]
    assert all(a <= b for a, b in itertools.pairwise(sets))


def test_the_cohort_selector_limits_the_canary() -> None:
    rollout = spec(cohort={"cameraSelector": {"matchLabels": {"canary": "yes"}}}).rollout
    assert rollout is not None
    cams = [*cameras(4), camera("lab-1", labels={"canary": "yes"})]
    assert r.canary_set("p", rollout, cams, 50) == {"lab-1"}
    assert len(r.canary_set("p", rollout, cams, 100)) == 5, "promotion reaches every camera"


# -- the comparison ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "broken"),
    [
        ({}, None),
        ({"p99LatencyMs": 79.0}, None),  # within 40 ms x 1.5 + 20 ms
        ({"p99LatencyMs": 81.0}, "p99 latency"),
        ({"fps": 7.9}, "fps per camera"),
        ({"errorRate": 0.02}, "error rate"),
        ({"detectionsPerFrame": 0.0, "meanConfidence": None}, "detections per frame"),
        ({"detectionsPerFrame": 4.4}, None),
        ({"detectionsPerFrame": 4.6}, "detections per frame"),
        ({"meanConfidence": 0.8}, "mean confidence"),
        ({"confidenceP50": 0.45}, None),  # 0.15 below: at the bound
        ({"confidenceP50": 0.44}, "confidence p50"),
        ({"confidenceP90": 0.69}, "confidence p90"),
        ({"confidenceP50": 0.95, "confidenceP90": 0.95}, None),  # surer is no drop
        ({"confidenceP50": None, "confidenceP90": None}, None),  # an older worker: no histogram
    ],
)
def test_judge_names_each_broken_bound(canary: dict[str, Any], broken: str | None) -> None:
    analysis = RolloutAnalysis(min_frames=10)
    verdict, failures = r.judge(figures(), figures(**canary), analysis)
    if broken is None:
        assert (verdict, failures) == ("Passed", [])
    else:
        assert verdict == "Failed"
        assert len(failures) == 1, failures
        assert failures[0].startswith(broken), failures


def test_too_few_frames_is_inconclusive_and_an_empty_scene_skips_detections() -> None:
    analysis = RolloutAnalysis(min_frames=100)
    verdict, why = r.judge(figures(frames=50), figures(), analysis)
    assert verdict == "Inconclusive"
    assert "too few frames" in why[0]
    quiet = figures(detectionsPerFrame=0.0, meanConfidence=None)
    assert r.judge(quiet, figures(), analysis)[0] == "Passed"


def test_cohort_figures_difference_the_window_and_count_restarts() -> None:
    before = {"w-0": scrape(0.0, ["a", "b"], 100, 300), "w-1": scrape(0.0, ["c"], 500, 0)}
    after = {
        "w-0": scrape(10.0, ["a", "b"], 300, 900),
        "w-1": scrape(10.0, ["c"], 100, 50),  # restarted: counters went down
        "w-2": scrape(10.0, [], 0, 0),  # new and idle
    }
    got = r.cohort_figures(before, after, 10.0)
    assert (got.frames, got.cameras) == (300, 3)
    assert got.fps == 10.0
    assert got.detections_per_frame == pytest.approx(650 / 300, abs=1e-3)
    assert got.mean_confidence == 0.5
    assert got.p99_latency_ms is not None
    assert got.p99_latency_ms <= 20
    # every score in 0.4-0.5 (w-1 counted from its restart): interpolated within the bucket
    assert (got.confidence_p50, got.confidence_p90) == (0.45, 0.49)


def test_the_worker_confidence_histogram_is_parsed_summed_over_cameras() -> None:
    worker = WorkerMetrics("p")
    worker.camera("a").scored([0.25, 0.45])
    worker.camera("b").scored([0.45, 0.97])
    got = parse_metrics(generate_latest(worker.registry).decode(), at=1.0)
    cumulative = dict(got.confidence_buckets)
    assert (cumulative[0.2], cumulative[0.3], cumulative[0.5], cumulative[0.95]) == (0, 1, 3, 3)
    assert cumulative[float("inf")] == got.confidence_count == 4
    assert [b for b, _ in got.confidence_buckets] == sorted(cumulative)


def test_a_shifted_confidence_distribution_with_the_same_mean_fails_the_window() -> None:
    """The mean alone misses it: 60 % of the canary's detections fall to 0.2-0.3 (the
    counters' mean stays 0.5), and its median falls with them."""
    stable = r.cohort_figures(
        {"s": scrape(0.0, ["a"], 0, 0)}, {"s": scrape(10.0, ["a"], 200, 600)}, 10.0
    )
    canary = r.cohort_figures(
        {"c": scrape(0.0, ["b"], 0, 0)}, {"c": scrape(10.0, ["b"], 200, 600, low=0.6)}, 10.0
    )
    assert canary.mean_confidence == stable.mean_confidence
    assert canary.confidence_p50 is not None
    assert stable.confidence_p50 is not None
    assert canary.confidence_p50 < stable.confidence_p50 - 0.15
    verdict, failures = r.judge(stable, canary, RolloutAnalysis(min_frames=10))
    assert verdict == "Failed"
    assert [f.split(" ")[1] for f in failures] == ["p50"], failures
    loose = RolloutAnalysis(min_frames=10, max_confidence_quantile_drop=0.3)
    assert r.judge(stable, canary, loose) == ("Passed", [])


# -- the steps -----------------------------------------------------------------------------


class Loop:
    """Drives :func:`advance_rollout` as the reconciler does, with scrapes it makes up: each
    camera reported by the side it is planned on, with the given frames per camera."""

    def __init__(self, pipeline: PipelineSpec, cams: list[Camera]) -> None:
        self.spec, self.cams = pipeline, cams
        self.status: RolloutStatus | None = None
        self.memory = r.RolloutMemory()
        self.mono, self.now = 0.0, T0
        self.frames = {"stable": 0.0, "canary": 0.0}
        self.events: list[str] = []

    def tick(
        self, seconds: float = 1.0, canary_detections: float = 3.0, scraped: bool = True
    ) -> RolloutStatus:
        self.mono += seconds
        self.now += dt.timedelta(seconds=seconds)
        for side in self.frames:
            self.frames[side] += 10 * seconds
        observation = None
        if scraped and self.status is not None:
            plan = r.plan_tracks("p", self.spec, self.cams, VARIANTS, NODES, {}, {}, self.status)
            scrapes = {}
            for g in plan.groups:
                side = "canary" if g.track else "stable"
                served = sorted(set(g.cameras))
                count = self.frames[side] * len(served)
                dets = count * (canary_detections if g.track else 3.0)
                scrapes[g.name] = {f"{g.name}-0": scrape(self.mono, served, count, dets)}
            observation = r.Observation(scrapes, self.mono - 0.1, self.mono)
        self.status, events = r.advance_rollout(
            "p", self.spec, self.cams, VARIANTS, NODES, self.status, TRACKS, observation,
            self.memory, self.now,
        )  # fmt: skip
        self.events += [e.reason for e in events]
        return self.status

    def run(self, until: str, limit: int = 60, **kw: Any) -> RolloutStatus:
        for _ in range(limit):
            status = self.tick(**kw)
            if status.phase == until and status.low_weight == status.high_weight:
                return status
        raise AssertionError(f"never {until}: {self.status}")


def test_a_good_candidate_steps_through_and_is_promoted() -> None:
    loop = Loop(spec(), cameras(8))
    first = loop.tick()
    assert (first.phase, first.weight, first.reason) == ("Progressing", 25, "CamerasMoving")
    assert (first.low_weight, first.high_weight) == (0, 25)
    settled = loop.tick()
    assert (settled.reason, settled.low_weight, settled.high_weight) == ("Analysing", 25, 25)
    promoted = loop.run("Promoted")
    assert promoted.canary_cameras == 8
    assert promoted.weight == 100
    assert promoted.last_analysis is not None
    assert promoted.last_analysis.verdict == "Passed"
    assert loop.events.count("StepPassed") == 1
    assert loop.events[-2:] == ["Promoted", "Promoted"]  # decided, then its cameras came home
    plan = r.plan_tracks("p", loop.spec, loop.cams, VARIANTS, NODES, {}, {}, promoted)
    assert [(g.name, g.main_model.variant.name) for g in plan.groups] == [(STABLE, "good")]


def test_a_blind_candidate_rolls_back_on_its_first_window() -> None:
    loop = Loop(spec(), cameras(8))
    rolled = loop.run("RolledBack", canary_detections=0.0)
    assert rolled.reason == "AnalysisFailed"
    assert rolled.weight == 0
    assert rolled.last_analysis is not None
    assert "detections per frame" in rolled.last_analysis.failures[0]
    assert rolled.stable_cameras == 8
    plan = r.plan_tracks("p", loop.spec, loop.cams, VARIANTS, NODES, {}, {}, rolled)
    assert [(g.name, g.main_model.variant.name) for g in plan.groups] == [(STABLE, "stable")]
    again = loop.tick(seconds=30)
    assert again == rolled, "a rolled-back revision stays rolled back (no loop)"


def test_a_worker_whose_counters_start_again_restarts_the_window() -> None:
    """A restarted worker's counters cover only part of the window: judged as a whole window
    they would be a cohort at a fraction of its frame rate (a false failure), so no verdict
    comes until a whole window has passed on the same counters."""
    loop = Loop(spec(), cameras(8))
    loop.tick()
    assert loop.tick().reason == "Analysing"
    loop.tick(seconds=8)
    loop.frames["stable"] = 0.0  # the stable worker restarted
    assert loop.tick(seconds=4).last_analysis is None, "judged across the restart"
    assert loop.tick(seconds=9).last_analysis is None, "the window began again at the restart"
    judged = loop.tick(seconds=2).last_analysis
    assert judged is not None
    assert judged.verdict == "Passed"


def test_moving_cameras_are_served_by_both_sides_until_taken_on() -> None:
    loop = Loop(spec(), cameras(8))
    moving = loop.tick(scraped=False)
    plan = r.plan_tracks("p", loop.spec, loop.cams, VARIANTS, NODES, {}, {}, moving)
    stable, canary = plan.groups
    assert canary.track == "canary"
    assert len(canary.cameras) == 2
    assert set(canary.cameras) <= set(stable.cameras), "make-before-break"
    assert stable.leaving == frozenset(canary.cameras)
    assert loop.tick(scraped=False) == moving, "unconfirmed: nothing changes"


def test_a_step_that_cannot_move_rolls_back_at_the_deadline() -> None:
    loop = Loop(spec(progressDeadlineSeconds=30), cameras(4))
    loop.tick(scraped=False)
    rolled = loop.tick(seconds=31, scraped=False)
    assert (rolled.phase, rolled.reason) == ("RolledBack", "ProgressDeadlineExceeded")


def test_abort_and_promote_by_hand() -> None:
    loop = Loop(spec(), cameras(4))
    loop.tick()
    loop.spec = spec(abort=True)
    aborted = loop.tick()
    assert (aborted.phase, aborted.reason, aborted.weight) == ("Aborted", "Aborted", 0)
    loop.spec = spec()
    restarted = loop.tick()
    assert (restarted.phase, restarted.reason) == ("Progressing", "CamerasMoving")
    loop.spec = spec(promote=True)
    promoted = loop.tick()
    assert (promoted.phase, promoted.reason) == ("Promoted", "ManuallyPromoted")


def test_a_new_candidate_starts_a_new_rollout() -> None:
    loop = Loop(spec(), cameras(4))
    rolled = loop.run("RolledBack", canary_detections=0.0)
    loop.spec = spec(candidate={"variant": "good", "confidence": 0.3})
    fresh = loop.tick()
    assert fresh.revision != rolled.revision
    assert (fresh.phase, fresh.step, fresh.weight) == ("Progressing", 0, 25)


@pytest.mark.parametrize(
    ("pipeline", "cams", "reason"),
    [
        (spec(candidate={"variant": "missing"}), cameras(4), "CandidateUnavailable"),
        (spec(), cameras(1), "NotEnoughCameras"),
        (
            spec(cohort={"cameraSelector": {"matchLabels": {"x": "y"}}}),
            cameras(4),
            "NotEnoughCameras",
        ),
    ],
)
def test_a_rollout_that_cannot_run_says_why(
    pipeline: PipelineSpec, cams: list[Camera], reason: str
) -> None:
    loop = Loop(pipeline, cams)
    status = loop.tick()
    assert (status.phase, status.reason, status.weight) == ("Invalid", reason, 0)
    assert loop.tick(seconds=60) == status, "explained once, then quiet"


def test_each_side_gets_its_own_detector_thresholds() -> None:
    pipeline = spec(candidate={"confidence": 0.99})
    loop = Loop(pipeline, cameras(4))
    status = loop.tick(scraped=False)
    plan = r.plan_tracks("p", pipeline, loop.cams, VARIANTS, NODES, {}, {}, status)
    configs = {g.track: build_worker_config("p", "ns", pipeline, g) for g in plan.groups}
    assert configs[None].detector.confidence == pipeline.detector.confidence
    assert configs["canary"].detector.confidence == 0.99
    assert configs["canary"].detector.model.variant == "stable", "only the threshold changed"
