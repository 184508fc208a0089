"""The fleet at small scale on its own control plane: 500 Cameras, 49 kwok nodes at 10 sites,
two operator shards. Correctness at scale, not speed (that is ``make bench-fleet``): every
Camera assigned exactly once and by the right Pipeline, placement rules held, no API write in
steady state, and a killed replica's shards taken over."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.envtest.controlplane import OPERATOR_USER
from tests.envtest.fleet import (
    FleetCluster,
    FleetShape,
    Request,
    camera,
    list_json,
    read_audit,
)
from tests.envtest.fleet_load import (
    CameraWatch,
    FleetLoad,
    FleetOperator,
    placement_violations,
    start_operators,
    wait_converged,
)
from tests.envtest.poll import wait_for

SHAPE = FleetShape(
    sites=10, jetsons_per_site=4, hubs=3, gpu_servers_per_hub=2, cpu_nodes=3, cameras_per_site=50
)
SHARDS = 2
CAMERA_STATUS = "cameras/status"
MAX_STATUS_WRITES_PER_CAMERA = 1.3
"""2.1 when the assignment and the conditions were separate writes."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetCluster]:
    with FleetCluster(tmp_path_factory.mktemp("fleet"), SHAPE) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def operators(fleet: FleetCluster) -> Iterator[list[FleetOperator]]:
    procs = start_operators(fleet, SHARDS, resync_seconds=10)
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def load(fleet: FleetCluster, operators: list[FleetOperator]) -> FleetLoad:
    """The whole fleet applied as a GitOps burst and converged."""
    applied = FleetLoad(fleet)
    cameras = CameraWatch(fleet.api_client())
    try:
        applied.apply_all()
        wait_converged(applied, cameras, timeout=150)
    finally:
        cameras.stop()
    return applied


def test_the_fleet_has_its_nodes(fleet: FleetCluster) -> None:
    assert len(SHAPE.nodes()) == 49
    assert fleet.unready_nodes() == []


def test_every_camera_assigned_once_by_its_pipeline_on_its_sites_hardware(
    fleet: FleetCluster, load: FleetLoad
) -> None:
    assert len(load.cameras) == 500
    assert placement_violations(fleet, load) == []


def test_the_burst_writes_each_camera_s_status_about_once(
    fleet: FleetCluster, load: FleetLoad
) -> None:
    """A Pipeline's assignment write carries the Camera's Ready and Connected, so a GitOps
    burst costs about one status write per Camera (not one for the assignment and one for the
    conditions); the rest are cameras moved while their Pipeline grew. (Writes from a body
    that went stale in the queue are refused by their resourceVersion precondition: counted
    apart, they change nothing.)"""
    wait_for(lambda: _handovers_done(fleet), timeout=60, what="make-before-break handovers done")
    _quiet(fleet.control_plane.audit_log, QUIET_SECONDS)
    requests = read_audit(fleet.control_plane.audit_log)[0]
    outcomes = Counter(
        (r.manager, r.code)
        for r in requests
        if r.user == OPERATOR_USER and r.write and r.resource == CAMERA_STATUS
    )
    written = sum(n for (_, code), n in outcomes.items() if 200 <= code < 300)
    assert written <= MAX_STATUS_WRITES_PER_CAMERA * len(load.cameras), outcomes


def test_no_write_in_steady_state(
    fleet: FleetCluster, load: FleetLoad, operators: list[FleetOperator]
) -> None:
    """Every Pipeline reconciles (autoscaling ticks) and changes nothing: the only writes are
    the shard Leases' renewals."""
    wait_for(lambda: _handovers_done(fleet), timeout=60, what="make-before-break handovers done")
    audit = fleet.control_plane.audit_log
    offset = _quiet(audit, QUIET_SECONDS)
    start = time.time()
    before = sum(op.reconciles("pipeline") for op in operators)
    rounds = 2 * len(load.pipelines)
    wait_for(
        lambda: sum(op.reconciles("pipeline") for op in operators) - before >= rounds,
        timeout=90,
        what=f"{rounds} Pipeline reconciles",
    )
    wait_for(lambda: read_audit(audit, offset)[0], timeout=30, what="the audit log flushed")
    requests = [r for r in read_audit(audit, offset)[0] if r.user == OPERATOR_USER]
    writes = sorted({f"{r.verb} {r.resource}" for r in requests if r.write and r.at >= start})
    assert writes in ([], ["update leases"]), writes


def test_a_killed_replica_s_shards_are_taken_over(
    fleet: FleetCluster, load: FleetLoad, operators: list[FleetOperator]
) -> None:
    """SIGKILL one replica: the other takes its shards over and serves a new Camera of them."""
    operators[-1].kill()
    survivor = "kubevision-operator-0"
    api = fleet.api_client()

    def taken_over() -> bool:
        leases = list_json(api, "/apis/coordination.k8s.io/v1/namespaces/kubevision-system/leases")
        shards = [x for x in leases if "-shard-" in x["metadata"]["name"]]
        return len(shards) == SHARDS and all(
            x["spec"].get("holderIdentity") == survivor for x in shards
        )

    wait_for(taken_over, timeout=90, what="the survivor holding every shard")
    cameras = CameraWatch(api)
    try:
        load.apply("cameras", _new_cameras(load, 20))
        wait_converged(load, cameras, timeout=90)
    finally:
        cameras.stop()
    assert placement_violations(fleet, load) == []


QUIET_SECONDS = 5.0
"""Steady state starts once the burst's last writes are this old (on a loaded 2-core machine
the last Camera statuses of a burst can trail convergence by a second or two)."""


def _quiet(audit: Path, seconds: float) -> int:
    """Waits until the operator has written nothing but Lease renewals for ``seconds`` (a
    deadline, so an operator that never stops writing fails here); returns the audit offset."""
    offset, last_write = 0, time.time()

    def settled() -> int | None:
        nonlocal offset, last_write
        requests, offset = read_audit(audit, offset)
        writes = [r.at for r in requests if r.user == OPERATOR_USER and _burst_write(r)]
        last_write = max([last_write, *writes])
        return offset if time.time() - last_write >= seconds else None

    return wait_for(settled, timeout=60, what=f"{seconds:.0f} s without operator writes")


def _burst_write(request: Request) -> bool:
    return request.write and request.resource != "leases"


def _handovers_done(fleet: FleetCluster) -> bool:
    """Every Pipeline runs exactly the replicas it wants (retiring copies of moved cameras are
    gone: a handover ending is a real change, not steady state)."""
    api = fleet.api_client()
    running: dict[str, int] = {}
    for sts in list_json(api, "/apis/apps/v1/namespaces/fleet/statefulsets"):
        owner = sts["metadata"]["labels"]["kubevision.io/pipeline"]
        running[owner] = running.get(owner, 0) + sts["spec"]["replicas"]
    pipelines = list_json(api, "/apis/kubevision.io/v1alpha1/namespaces/fleet/pipelines")
    return all(
        running.get(p["metadata"]["name"], 0) == (p.get("status") or {}).get("desiredReplicas")
        for p in pipelines
    )


def _new_cameras(load: FleetLoad, n: int) -> list[dict[str, Any]]:
    new = [camera(f"cam-late-{i:02d}", SHAPE.site(i % SHAPE.sites), "edge", 10) for i in range(n)]
    for cam in new:
        load.cameras[cam["metadata"]["name"]] = cam
    return new
