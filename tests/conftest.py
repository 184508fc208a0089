"""Shared fixtures: the real local cluster (one per session) and a namespace per test; and the
skip rule: only missing hardware may leave a test unrun under CI (:mod:`tests.hardware`)."""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.operator import OperatorProcess, install_chart
from tests.envtest.podrunner import PodRunner
from tests.hardware import hardware_of

_STATE_DIR = pytest.StashKey[Path]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the cluster, so ``-m "not cluster"`` runs the fast ones."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[LocalCluster]:
    """etcd + kube-apiserver + controller-manager + scheduler + simulated nodes, all real."""
    state_dir = tmp_path_factory.mktemp("cluster")
    pytestconfig.stash[_STATE_DIR] = state_dir
    with LocalCluster(state_dir) as local:
        yield local


@pytest.fixture(scope="session")
def chart(cluster: LocalCluster) -> str:
    """The Helm chart installed (CRDs, RBAC, operator Deployment); returns the release name."""
    install_chart(cluster)
    return "kubevision"


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, chart: str) -> Iterator[OperatorProcess]:
    """The real operator process, running with only the chart's RBAC (one per session)."""
    proc = OperatorProcess(cluster, cluster.state_dir / "logs" / "operator.log", resync_seconds=10)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def runner(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    """The stand-in kubelet for worker pods (real worker processes), per test module."""
    models = require("models/yolox_nano_416.onnx").parent
    pod_runner = PodRunner(
        cluster.api_client(),
        tmp_path_factory.mktemp("pods"),
        model_dir=models,
        log_dir=cluster.state_dir / "logs" / "pods",
    )
    pod_runner.start()
    yield pod_runner
    pod_runner.stop()


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_unexpected_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under ``CI=true`` a skip for anything but missing hardware is a failure: CI installs
    every prerequisite, so such a skip means the set-up is broken, not that all is well."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if os.environ.get("CI", "").lower() != "true":
        return
    reason = _skip_reason(report)
    if hardware_of(reason) is None:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (only missing hardware may skip): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_unexpected_skip(report)
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """List the hardware-only tests this machine could not run, and point at the control-plane
    logs when something failed (they stay on disk)."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for report in terminalreporter.stats.get("skipped", []):
        kind = hardware_of(_skip_reason(report))
        if kind is not None:
            by_kind[kind].append(report.nodeid.split("::")[0])
    if by_kind:
        terminalreporter.section("hardware-only tests not run on this machine")
        for kind, files in sorted(by_kind.items()):
            where = ", ".join(sorted(set(files)))
            terminalreporter.write_line(f"{kind}: {len(files)} skipped ({where})")
    state_dir = config.stash.get(_STATE_DIR, None)
    if state_dir is not None and exitstatus != 0:
        terminalreporter.write_line(f"control-plane logs kept in {state_dir / 'logs'}")


@pytest.fixture
def core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


@pytest.fixture
def namespace(cluster: LocalCluster, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (deletion is not awaited)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    yield name
    core.delete_namespace(name)


def as_json(response: Any) -> Any:
    """Plain JSON of a kubernetes-client call made with ``_preload_content=False``."""
    return json.loads(response.data)
