"""kube-apiserver, and separately etcd, restarted in place under a running operator: the
operator stays up, its watches resume (a Camera created after the restart is reconciled) and
the world still passes the crash scenario's audit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.reliability.operator_crashes import (
    Crashes,
    Size,
    crashed,
    restart_component,
    scenario,
)

SIZE = Size(cameras=12, kills=0, burst=0)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashes]:
    """A control plane of its own: restarting it must not disturb other tests."""
    with scenario(tmp_path_factory.mktemp("restarts"), SIZE) as running:
        running.populate()
        yield running


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_change_after_the_restart_is_reconciled(crashes: Crashes, component: str) -> None:
    before = len(crashes.churn.alive)
    restart_component(crashes, component)  # raises unless reconciled and the operator alive
    assert len(crashes.churn.alive) == before + 1
    assert crashes.operator.alive()
    assert crashed(crashes.operator) == 0, "an unreachable API is an error, not a crash"
