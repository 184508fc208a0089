"""The operator SIGKILLed mid-reconcile while Cameras churn (benchmarks/reliability/
operator_crashes.py at its small size): after every restart the world converges to exactly
what the specs ask for, with no orphan, no camera lost or doubled, and no Event storm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.reliability.operator_crashes import (
    SMALL,
    Crashes,
    converge_deadline,
    event_bound,
    operator_events,
    scenario,
)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashes]:
    """A control plane of its own: the kills must meet no other operator reconciling."""
    with scenario(tmp_path_factory.mktemp("crashes"), SMALL) as running:
        running.populate()
        yield running


def test_every_kill_converges_to_the_world_the_specs_ask_for(crashes: Crashes) -> None:
    # each round audits the world after the restart (converged() raises on any orphan,
    # lost or doubled camera, or status that disagrees with the ConfigMaps)
    crashes.crash_rounds()
    assert len(crashes.kills) == SMALL.kills
    assert {k.mode for k in crashes.kills} == {"first-write", "random", "pipeline-deleted"}
    # the tripwire kills really cut reconciles between their writes
    assert any(k.torn for k in crashes.kills if k.mode == "first-write")
    assert all(k.converge_s < converge_deadline() for k in crashes.kills)


def test_restarts_post_no_event_storm(crashes: Crashes) -> None:
    events = operator_events(crashes.api)
    assert events, "the operator posts its decisions as Events"
    worst, count = events.most_common(1)[0]
    assert count <= event_bound(crashes), f"{count} Events {worst}"
    assert crashes.quiet_events() == 0
