"""The autoscaler's rule and the signals it reads, as pure code."""

from __future__ import annotations

import pytest

from kubevision.operator.autoscaler import HOLD_NO_METRICS, Autoscaler, Policy
from kubevision.operator.signals import GroupSignals, Scrape, combine, parse_metrics, quantile

TARGET = 100.0


def load(p99: float | None = 100, drops: float = 0.0, pods: int = 1) -> GroupSignals:
    return GroupSignals(p99_ms=p99, queue_depth=0, drop_rate=drops, fps=30, pods=pods)


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {
        "target_p99_ms": TARGET,
        "min_replicas": 1,
        "max_replicas": 10,
        "scale_up_window": 0,
        "scale_down_window": 0,
    }
    return Policy(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("replicas", "signals", "expected"),
    [
        pytest.param(2, load(p99=100), 2, id="at-target"),
        pytest.param(2, load(p99=108), 2, id="within-tolerance"),
        pytest.param(2, load(p99=200), 4, id="twice-the-slo-doubles"),
        pytest.param(2, load(p99=80, drops=0.5), 4, id="half-the-frames-dropped-doubles"),
        pytest.param(4, load(p99=40), 2, id="well-under-target-halves"),
        pytest.param(1, load(p99=10), 1, id="never-below-min"),
        pytest.param(2, load(p99=1000), 6, id="max-step-4"),
        pytest.param(9, load(p99=300), 10, id="never-above-max"),
    ],
)
def test_hpa_like_rule(replicas: int, signals: GroupSignals, expected: int) -> None:
    assert Autoscaler(policy()).decide(0, replicas, (), signals).replicas == expected


@pytest.mark.parametrize("signals", [None, load(pods=0)], ids=["no-signals", "no-pods"])
def test_missing_metrics_hold_the_current_decision(signals: GroupSignals | None) -> None:
    decision = Autoscaler(policy()).decide(0, 3, ("frameSkip",), signals)
    assert (decision.replicas, decision.degradation, decision.held) == (3, ("frameSkip",), True)
    assert decision.reason.startswith(HOLD_NO_METRICS)


def test_scale_up_window_ignores_a_single_spike() -> None:
    scaler = Autoscaler(policy(scale_up_window=30))
    assert scaler.decide(0, 2, (), load(p99=100)).replicas == 2
    assert scaler.decide(10, 2, (), load(p99=300)).replicas == 2, "one spike: lowest wins"
    assert scaler.decide(45, 2, (), load(p99=300)).replicas == 6, "sustained: scale"


def test_scale_down_waits_for_the_whole_window() -> None:
    scaler = Autoscaler(policy(scale_down_window=60))
    assert scaler.decide(0, 4, (), load(p99=40)).replicas == 4, "history shorter than window"
    assert scaler.decide(30, 4, (), load(p99=40)).replicas == 4
    assert scaler.decide(61, 4, (), load(p99=40)).replicas == 2
    assert scaler.decide(62, 2, (), load(p99=105)).replicas == 2


def test_a_dip_inside_the_window_does_not_scale_down() -> None:
    scaler = Autoscaler(policy(scale_down_window=60))
    scaler.decide(0, 4, (), load(p99=40))
    scaler.decide(30, 4, (), load(p99=150))
    assert scaler.decide(70, 4, (), load(p99=40)).replicas == 4


def test_ladder_engages_at_max_replicas_and_recovers_step_by_step() -> None:
    scaler = Autoscaler(policy(max_replicas=3, ladder=("frameSkip", "resolution")))
    first = scaler.decide(0, 3, (), load(p99=300))
    assert (first.replicas, first.degradation) == (3, ("frameSkip",))
    second = scaler.decide(1, 3, first.degradation, load(p99=250))
    assert second.degradation == ("frameSkip", "resolution")
    exhausted = scaler.decide(2, 3, second.degradation, load(p99=250))
    assert exhausted.degradation == second.degradation
    assert "exhausted" in exhausted.reason
    undo = scaler.decide(3, 3, exhausted.degradation, load(p99=30))
    assert (undo.replicas, undo.degradation) == (3, ("frameSkip",)), "newest step undone first"
    undo2 = scaler.decide(4, 3, undo.degradation, load(p99=30))
    assert undo2.degradation == ()
    assert scaler.decide(5, 3, (), load(p99=30)).replicas == 1, "replicas only after the ladder"


def test_capacity_short_of_the_need_degrades_instead() -> None:
    scaler = Autoscaler(policy(ladder=("frameSkip",)))
    decision = scaler.decide(0, 2, (), load(p99=300), capacity=3)
    assert (decision.replicas, decision.degradation) == (3, ("frameSkip",))


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        policy(tolerance=1.5)
    with pytest.raises(ValueError, match="min_replicas"):
        policy(min_replicas=5, max_replicas=2)


# -- signals -----------------------------------------------------------------------------------

PAGE = """
# TYPE kubevision_frame_latency_seconds histogram
kubevision_frame_latency_seconds_bucket{camera="a",pipeline="p",le="0.05"} 50.0
kubevision_frame_latency_seconds_bucket{camera="a",pipeline="p",le="0.1"} 90.0
kubevision_frame_latency_seconds_bucket{camera="a",pipeline="p",le="+Inf"} 100.0
kubevision_frame_latency_seconds_bucket{camera="b",pipeline="p",le="0.05"} 100.0
kubevision_frame_latency_seconds_bucket{camera="b",pipeline="p",le="0.1"} 100.0
kubevision_frame_latency_seconds_bucket{camera="b",pipeline="p",le="+Inf"} 100.0
kubevision_frame_latency_seconds_count{camera="a",pipeline="p"} 100.0
kubevision_frame_latency_seconds_sum{camera="a",pipeline="p"} 5.0
# TYPE kubevision_frames_processed counter
kubevision_frames_processed_total{camera="a",pipeline="p"} 100.0
kubevision_frames_processed_total{camera="b",pipeline="p"} 100.0
# TYPE kubevision_frames_dropped counter
kubevision_frames_dropped_total{camera="a",pipeline="p"} 20.0
# TYPE kubevision_queue_depth gauge
kubevision_queue_depth{pipeline="p"} 2.0
"""


def test_metrics_page_is_summed_over_cameras() -> None:
    scrape = parse_metrics(PAGE, at=10)
    assert scrape.buckets == ((0.05, 150.0), (0.1, 190.0), (float("inf"), 200.0))
    assert (scrape.processed, scrape.dropped, scrape.queue) == (200.0, 20.0, 2.0)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.1),
        (0.75, [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.15),
        (0.99, [(0.1, 10.0), (float("inf"), 100.0)], 0.1),  # Prometheus: highest finite bound
        (0.99, [(0.1, 0.0), (float("inf"), 0.0)], None),
    ],
)
def test_quantile_matches_prometheus_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert quantile(q, buckets) == (pytest.approx(expected) if expected is not None else None)


def test_window_signals_difference_successive_scrapes_and_survive_restarts() -> None:
    before = {"w-0": Scrape(0, ((0.05, 100.0), (float("inf"), 100.0)), 100, 0, 0)}
    now = {
        "w-0": Scrape(10, ((0.05, 100.0), (float("inf"), 200.0)), 200, 100, 3),  # slow window
        "w-1": Scrape(10, ((0.05, 10.0), (float("inf"), 10.0)), 10, 0, 1),  # new pod
    }
    signals = combine(before, now)
    assert signals is not None
    assert signals.pods == 2
    assert signals.queue_depth == 4
    assert signals.drop_rate == pytest.approx(100 / 210)
    assert signals.fps == pytest.approx(10.0)  # only w-0 has a previous scrape
    assert signals.p99_ms == pytest.approx(50.0)  # the slow frames sit above the 0.05 bound
    restarted = {"w-0": Scrape(20, ((0.05, 5.0), (float("inf"), 5.0)), 5, 0, 0)}
    after = combine(now, restarted)
    assert after is not None
    assert after.p99_ms == pytest.approx(0.05 * 1000 * 0.99, rel=0.05)
    assert combine(now, {}) is None
