"""The operator's fleet-scale logic on its own: no-op apply detection, shard assignment,
coalescing of status writes and selective wake-ups (the behaviour on a real control plane is
tests/integration/test_fleet_scale.py)."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import kopf

from kubevision.api.common import LabelSelector
from kubevision.operator import handlers
from kubevision.operator.applied import AppliedObjects, desired_hash, stamp
from kubevision.operator.settings import OperatorSettings
from kubevision.operator.shards import shard_of, split
from kubevision.operator.statusqueue import StatusQueue
from kubevision.operator.triggers import Triggers


def _configmap(data: str = "a") -> dict[str, Any]:
    return {"metadata": {"name": "g", "namespace": "ns"}, "data": {"k": data}}


def _live(obj: dict[str, Any], version: str) -> dict[str, Any]:
    live = copy.deepcopy(obj)
    live["metadata"]["resourceVersion"] = version
    return live


def test_the_hash_ignores_itself_and_follows_the_content() -> None:
    a, b = _configmap(), _configmap()
    assert stamp(a) == stamp(b) == desired_hash(a)
    assert stamp(a) == stamp(a)  # stamping again does not hash the old stamp
    assert stamp(_configmap("b")) != desired_hash(a)


def test_an_unchanged_object_is_applied_once() -> None:
    applied = AppliedObjects()
    desired = _configmap()
    stamp(desired)
    assert applied.needs_apply("configmaps", desired, None)  # never applied by us
    applied.record("configmaps", _live(desired, "7"), "p")
    assert not applied.needs_apply("configmaps", desired, _live(desired, "7"))


def test_a_changed_deleted_or_edited_object_is_applied_again() -> None:
    applied = AppliedObjects()
    desired = _configmap()
    stamp(desired)
    applied.record("configmaps", _live(desired, "7"), "p")
    changed = _configmap("b")
    stamp(changed)
    assert applied.needs_apply("configmaps", changed, _live(desired, "7"))
    assert applied.needs_apply("configmaps", desired, None)  # someone deleted it
    assert applied.needs_apply("configmaps", desired, _live(desired, "9"))  # someone edited it


def test_a_cache_behind_our_own_apply_does_not_cause_a_second_one() -> None:
    applied = AppliedObjects()
    old, new = _configmap("a"), _configmap("b")
    stamp(old), stamp(new)
    applied.record("configmaps", _live(new, "8"), "p")
    assert not applied.needs_apply("configmaps", new, _live(old, "7"))


def test_a_statefulset_is_compared_by_generation_not_status_updates() -> None:
    applied = AppliedObjects()
    sts = {"metadata": {"name": "g", "namespace": "ns"}, "spec": {"replicas": 2}}
    stamp(sts)
    live = _live(sts, "10") | {"status": {"readyReplicas": 1}}
    live["metadata"]["generation"] = 3
    applied.record("statefulsets", live, "p")
    later = copy.deepcopy(live)
    later["metadata"]["resourceVersion"] = "11"  # a status update
    assert not applied.needs_apply("statefulsets", sts, later)
    later["metadata"]["generation"] = 4  # someone edited the spec
    assert applied.needs_apply("statefulsets", sts, later)


def test_forgetting_a_pipeline_forgets_only_its_objects() -> None:
    applied = AppliedObjects()
    for name, pipeline in (("a", "p"), ("b", "q")):
        obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"}}
        stamp(obj)
        applied.record("configmaps", obj, pipeline)
    applied.forget_pipeline("ns", "p")
    assert len(applied) == 1


def test_shards_are_stable_and_spread() -> None:
    counts = Counter(shard_of("fleet", f"cam-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 900
    assert shard_of("fleet", "cam-1", 4) == shard_of("fleet", "cam-1", 4)


def test_the_split_gives_every_shard_one_live_member() -> None:
    assert split(["b", "a"], 4) == {0: "a", 1: "b", 2: "a", 3: "b"}
    assert split(["a"], 3) == {0: "a", 1: "a", 2: "a"}
    assert split([], 2) == {}


def test_a_burst_of_changes_to_one_object_is_one_entry_with_the_last_body() -> None:
    queue = StatusQueue()
    queue.put("c", {"v": 1}, now=0.0, hold=1.0)
    queue.put("c", {"v": 2}, now=0.5, hold=1.0)
    assert queue.take(0.9) == []
    assert queue.take(1.0) == [("c", {"v": 2})]
    assert len(queue) == 0


def test_an_entry_due_already_says_so_and_a_retry_never_hides_a_newer_body() -> None:
    queue = StatusQueue()
    assert not queue.put("c", {"v": 1}, now=0.0, hold=10.0)  # waits for its assignment
    assert queue.put("d", {"v": 1}, now=0.0, hold=0.0)  # nothing to wait for
    assert queue.put("c", {"v": 2}, now=5.0, hold=1.0)  # assigned: due at once
    assert {k for k, _ in queue.take(5.0)} == {"c", "d"}
    queue.put("c", {"v": 3}, now=5.1, hold=1.0)
    queue.requeue("c", {"v": 2}, now=5.2, hold=1.0)  # the failed write of v2
    assert queue.take(7.0) == [("c", {"v": 3})]


def test_a_camera_change_wakes_only_the_pipelines_that_select_it() -> None:
    async def run() -> set[str]:
        triggers = Triggers()
        for name, site in (("a", "s1"), ("b", "s2"), ("c", "s3")):
            triggers.register(("ns", name)).clear()
            triggers.interest(("ns", name), LabelSelector(match_labels={"site": site}))
        triggers.register(("ns", "new")).clear()  # no selector known yet
        triggers.fire_selecting("ns", [{"site": "s1"}, {"site": "s2"}], pipelines={"c"})
        return {k[1] for k, e in triggers._events.items() if e.is_set()}

    assert asyncio.run(run()) == {"a", "b", "c", "new"}


def test_a_new_camera_waits_longer_for_its_assignment_during_a_burst() -> None:
    """A lone new Camera gets NoPipeline after the short wait; in a burst its status waits
    for the assignment (one write, not NoPipeline first); once assigned it is due at once."""
    triggers = Triggers()
    triggers.register(("cams", "site-1"))
    memo = kopf.Memo(settings=OperatorSettings(), triggers=triggers, camera_queue=StatusQueue())
    new = {"metadata": {"namespace": "cams", "name": "c1", "labels": {"site": "1"}}, "spec": {}}
    assigned = {**new, "status": {"assignments": [{"pipeline": "site-1"}]}}

    assert handlers._hold(memo, new) == handlers._AWAIT_ASSIGNMENT_SECONDS
    for i in range(handlers._BURST_QUEUED_CAMERAS):
        memo.camera_queue.put(("cams", f"c{i}"), new, 0.0)
    assert handlers._hold(memo, new) == handlers._AWAIT_ASSIGNMENT_IN_BURST_SECONDS
    assert handlers._hold(memo, assigned) == 0.0
