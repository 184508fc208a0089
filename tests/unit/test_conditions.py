"""Conditions: ``lastTransitionTime`` says when the status last changed, not when we looked."""

from __future__ import annotations

import datetime as dt

import pytest

from kubevision.api.common import Condition, ConditionStatus
from kubevision.operator import conditions
from kubevision.operator.conditions import condition

EARLIER = dt.datetime(2025, 1, 1, 8, 0, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 1, 1, 9, 30, 0, 123456, tzinfo=dt.UTC)


def ready(status: ConditionStatus, reason: str = conditions.WORKERS_READY) -> Condition:
    return Condition(
        type=conditions.READY,
        status=status,
        reason=reason,
        message="before",
        last_transition_time=EARLIER,
        observed_generation=1,
    )


@pytest.mark.parametrize(
    ("previous", "status", "reason", "moved"),
    [
        pytest.param([], "True", conditions.WORKERS_READY, True, id="first-time"),
        pytest.param([ready("True")], "True", conditions.WORKERS_READY, False, id="unchanged"),
        pytest.param(
            [ready("False", conditions.WORKERS_STARTING)],
            "False",
            conditions.NO_CAPACITY,
            False,
            id="only-reason-changed",
        ),
        pytest.param([ready("False")], "True", conditions.WORKERS_READY, True, id="false-to-true"),
        pytest.param([ready("True")], "Unknown", conditions.WORKERS_READY, True, id="to-unknown"),
        pytest.param(
            [ready("True").model_copy(update={"type": conditions.DEGRADED})],
            "True",
            conditions.WORKERS_READY,
            True,
            id="other-type-ignored",
        ),
    ],
)
def test_transition_time_moves_only_when_status_changes(
    previous: list[Condition], status: ConditionStatus, reason: str, moved: bool
) -> None:
    result = condition(conditions.READY, status, reason, "after", 2, previous, now=NOW)
    assert result.type == conditions.READY
    assert result.status == status
    assert result.reason == reason
    assert result.message == "after"
    assert result.observed_generation == 2
    expected = NOW.replace(microsecond=0) if moved else EARLIER
    assert result.last_transition_time == expected


def test_message_is_cut_to_what_the_api_accepts() -> None:
    result = condition(conditions.DEGRADED, "True", conditions.NO_CAPACITY, "x" * 40000, 1, now=NOW)
    assert len(result.message) == 32768


def test_without_now_the_time_is_current_utc_in_whole_seconds() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = condition(conditions.READY, "True", conditions.WORKERS_READY, "", None)
    assert before <= result.last_transition_time <= dt.datetime.now(dt.UTC)
    assert result.last_transition_time.microsecond == 0
    assert result.observed_generation is None
