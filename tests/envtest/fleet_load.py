"""The fleet's load and what to watch of it: operators, the GitOps burst, churn, failures.

Shared by ``make fleet-up`` (:mod:`tests.envtest.fleet`), the fleet benchmark
(``benchmarks/fleet_scale.py``) and its small version in the suite
(``tests/integration/test_fleet_scale.py``). Everything here talks to the real API server;
progress is watched (Camera watch) or polled with a deadline, never slept on.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from kubevision.api.worker_config import CONFIG_FILE, WorkerConfig
from kubevision.operator.signals import quantile
from tests.envtest.controlplane import OPERATOR_NAMESPACE
from tests.envtest.fleet import FleetCluster, list_json, variants
from tests.envtest.operator import CHART, RUNTIME_CLASS, OperatorProcess
from tests.envtest.poll import WaitTimeout, wait_for

NAMESPACE = "fleet"
API = ("kubevision.io", "v1alpha1")
BURST = 1000
"""Objects per burst of the GitOps sync (then it waits for the API to take them)."""
APPLY_THREADS = 16
"""Requests in flight at once, as a sync tool applies (Argo CD's default is 20-ish)."""


class FleetOperator(OperatorProcess):
    """The real operator process, one shard member of several."""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return [
            (dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]


def install_chart(fleet: FleetCluster, shards: int) -> None:
    """The chart with the sharding RBAC (``operator.shards``), scaled to no in-cluster
    operator: the operator runs as local processes with the chart's ServiceAccount."""
    subprocess.run(
        [
            str(fleet.toolchain.helm),
            f"--kubeconfig={fleet.kubeconfig()}",
            "upgrade",
            "--install",
            "kubevision",
            str(CHART),
            f"--namespace={OPERATOR_NAMESPACE}",
            "--create-namespace",
            f"--set=operator.shards={shards}",
            "--set=operator.replicas=0",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    fleet.control_plane.kubectl("apply", "-f", str(RUNTIME_CLASS))
    for crd in ("cameras", "pipelines", "modelvariants"):
        fleet.control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.kubevision.io"
        )


def start_operators(
    fleet: FleetCluster, shards: int, resync_seconds: float = 60, replicas: int | None = None
) -> list[FleetOperator]:
    """Install the chart and start ``replicas`` (default ``shards``) operator processes."""
    install_chart(fleet, shards)
    operators = []
    for i in range(replicas or shards):
        operator = FleetOperator(
            fleet,
            fleet.state_dir / "logs" / f"operator-{i}.log",
            resync_seconds=resync_seconds,
            args=[f"--namespace={NAMESPACE}", f"--shards={shards}"],
            env={
                "POD_NAME": f"kubevision-operator-{i}",
                "POD_NAMESPACE": OPERATOR_NAMESPACE,
                "KUBEVISION_SHARD_LEASE_SECONDS": "15",
            },
        )
        operator.start(timeout=120)
        operators.append(operator)
    return operators


# -- watching progress ------------------------------------------------------------------------


class CameraWatch:
    """Watches the fleet's Cameras: when each first had an assignment (and to what)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)
        self.assigned_at: dict[str, float] = {}
        self.assignments: dict[str, list[dict[str, Any]]] = {}
        self.ready: set[str] = set()
        """Cameras whose own status says Ready (a worker group processes them)."""
        self._lock = threading.Lock()
        self._watch = watch.Watch()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="camera-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                for event in self._watch.stream(
                    self._custom.list_namespaced_custom_object, *API, NAMESPACE, "cameras",
                    timeout_seconds=300,
                ):  # fmt: skip
                    self._seen(event["type"], event["object"])
            except Exception:  # noqa: BLE001 - any broken stream: watch again (or stop)
                if self._stopping:
                    return
                time.sleep(1)  # the API server is busy or restarting: back off, watch again

    def _seen(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        entries = status.get("assignments") or []
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        with self._lock:
            (self.ready.add if ready and kind != "DELETED" else self.ready.discard)(name)
            if kind == "DELETED":
                self.assignments.pop(name, None)
                self.assigned_at.pop(name, None)
                return
            self.assignments[name] = entries
            if entries and name not in self.assigned_at:
                self.assigned_at[name] = time.time()
            if not entries:
                self.assigned_at.pop(name, None)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return dict(self.assignments)

    def not_ready(self, names: Iterable[str]) -> list[str]:
        with self._lock:
            return [n for n in names if n not in self.ready]

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()


@dataclass
class PipelineState:
    ready_at: dict[str, float] = field(default_factory=dict)
    """Pipeline -> when it was first seen Ready (and stayed so)."""
    waiting: list[str] = field(default_factory=list)
    """What the last poll before convergence still waited for (where the time went)."""


def pipelines_ready(api: client.ApiClient, expected: dict[str, int]) -> dict[str, bool]:
    """Pipeline -> Ready (every desired worker ready, its status of the current generation)
    with its expected number of cameras."""
    out = {}
    for p in list_json(api, f"/apis/{API[0]}/{API[1]}/namespaces/{NAMESPACE}/pipelines"):
        name, status = p["metadata"]["name"], p.get("status") or {}
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
        )
        out[name] = (
            ready.get("status") == "True"
            and status.get("observedGeneration") == p["metadata"].get("generation")
            and status.get("cameras") == expected.get(name)
            and status.get("readyReplicas") == status.get("desiredReplicas")
        )
    return out


def statefulsets_ready(api: client.ApiClient, namespace: str = NAMESPACE) -> tuple[int, int]:
    """(ready, all) of the namespace's worker StatefulSets (every replica ready)."""
    items = list(list_json(api, f"/apis/apps/v1/namespaces/{namespace}/statefulsets"))
    ready = sum(
        1
        for s in items
        if (s.get("status") or {}).get("readyReplicas", 0) == s["spec"]["replicas"]
        and (s.get("status") or {}).get("observedGeneration") == s["metadata"]["generation"]
    )
    return ready, len(items)


# -- the load ---------------------------------------------------------------------------------


class FleetLoad:
    """Applies the fleet's objects as a GitOps sync would and watches them converge."""

    def __init__(self, fleet: FleetCluster) -> None:
        self.fleet = fleet
        self.api = fleet.api_client()
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = APPLY_THREADS
        self.custom = client.CustomObjectsApi(self.api)
        self.cameras = {c["metadata"]["name"]: c for c in fleet.shape.cameras()}
        self.pipelines = {p["metadata"]["name"]: p for p in fleet.shape.pipelines()}

    def expected_cameras(self) -> dict[str, int]:
        """Pipeline -> how many Cameras it selects."""
        out = dict.fromkeys(self.pipelines, 0)
        for cam in self.cameras.values():
            out[pipeline_of(cam)] += 1
        return out

    def create_namespace(self) -> None:
        core = client.CoreV1Api(self.api)
        try:
            core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise

    def apply(self, plural: str, objs: Iterable[dict[str, Any]]) -> None:
        """Server-side apply in bursts of :data:`BURST`, :data:`APPLY_THREADS` at a time."""
        batch = list(objs)

        def one(obj: dict[str, Any]) -> None:
            self.custom.patch_namespaced_custom_object(
                *API, NAMESPACE, plural, obj["metadata"]["name"], obj,
                field_manager="gitops-sync", force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=APPLY_THREADS) as pool:
            for start in range(0, len(batch), BURST):
                list(pool.map(one, batch[start : start + BURST]))

    def apply_all(self) -> float:
        """Variants, Pipelines, then the Cameras; returns when the apply started."""
        self.create_namespace()
        started = time.time()
        self.apply("modelvariants", variants())
        self.apply("pipelines", self.pipelines.values())
        self.apply("cameras", self.cameras.values())
        return started

    def roll_variants(self, revision: int) -> None:
        """A new model build for the whole fleet: every Pipeline's workers change."""
        self.apply("modelvariants", variants(revision))

    def delete_camera(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*API, NAMESPACE, "cameras", name)
        self.cameras.pop(name)


def pipeline_of(cam: dict[str, Any]) -> str:
    labels = cam["metadata"]["labels"]
    site, role = labels["fleet.kubevision.io/site"], labels["fleet.kubevision.io/role"]
    return f"{role}-{site}"


def wait_converged(
    load: FleetLoad,
    cameras: CameraWatch,
    timeout: float,
    on_poll: Callable[[], None] = lambda: None,
) -> PipelineState:
    """Poll until every Camera is assigned and every Pipeline Ready; records when each
    Pipeline first was (its cameras all assigned and its workers ready)."""
    state = PipelineState()
    expected = load.expected_cameras()

    def done() -> bool:
        on_poll()
        now = time.time()
        for name, ok in pipelines_ready(load.api, expected).items():
            if ok:
                state.ready_at.setdefault(name, now)
            else:
                state.ready_at.pop(name, None)
        assigned = cameras.snapshot()
        unassigned = [n for n in load.cameras if not assigned.get(n)]
        not_ready = sorted(set(load.pipelines) - set(state.ready_at))
        cameras_not_ready = cameras.not_ready(load.cameras)
        if unassigned or not_ready or cameras_not_ready:
            state.waiting = [
                f"{len(unassigned)} cameras unassigned {unassigned[:3]}",
                f"{len(cameras_not_ready)} cameras not Ready {cameras_not_ready[:3]}",
                f"{len(not_ready)} pipelines not ready {not_ready[:3]}",
            ]
            return False
        return True

    try:
        wait_for(done, timeout=timeout, interval=1.0, what="every Camera assigned and Ready")
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; still waiting for: {'; '.join(state.waiting)}") from exc
    return state


# -- what the fleet looks like now -------------------------------------------------------------


def placement_violations(fleet: FleetCluster, load: FleetLoad) -> list[str]:
    """Every Camera assigned exactly once, by the Pipeline that selects it, to a worker pod
    on a Node of the Camera's site and of an allowed class (first allowed with a node)."""
    problems = []
    api = fleet.api_client()
    assignments = {
        c["metadata"]["name"]: (c.get("status") or {}).get("assignments") or []
        for c in list_json(api, f"/apis/{API[0]}/{API[1]}/namespaces/{NAMESPACE}/cameras")
    }
    pods = {
        p["metadata"]["name"]: p for p in list_json(api, f"/api/v1/namespaces/{NAMESPACE}/pods")
    }
    nodes = {n["metadata"]["name"]: n for n in list_json(api, "/api/v1/nodes")}
    in_configs: dict[str, int] = {}
    for cm in list_json(api, f"/api/v1/namespaces/{NAMESPACE}/configmaps"):
        if CONFIG_FILE in (cm.get("data") or {}):
            config = WorkerConfig.model_validate(json.loads(cm["data"][CONFIG_FILE]))
            for name in config.assignments():  # handover copies are not assignments
                in_configs[name] = in_configs.get(name, 0) + 1
    for name, cam in load.cameras.items():
        entries = assignments.get(name, [])
        if len(entries) != 1:
            problems.append(f"{name}: {len(entries)} assignments")
            continue
        (entry,) = entries
        if entry["pipeline"] != pipeline_of(cam):
            problems.append(f"{name}: assigned to {entry['pipeline']}")
        if in_configs.get(name) != 1:
            problems.append(f"{name}: in {in_configs.get(name, 0)} worker configs")
        pod = pods.get(f"{entry['workload']}-{entry['shard']}")
        if pod is None or not pod["spec"].get("nodeName"):
            problems.append(f"{name}: worker pod {entry['workload']}-{entry['shard']} not bound")
            continue
        node = nodes[pod["spec"]["nodeName"]]
        labels = node["metadata"]["labels"]
        if labels.get("kubevision.io/site") != cam["spec"]["site"]:
            problems.append(f"{name}: on node {node['metadata']['name']} of another site")
        wanted = "nvidia.com/gpu.present" if "central" in entry["pipeline"] else None
        if wanted and labels.get(wanted) != "true" and _site_has_gpu(nodes, cam["spec"]["site"]):
            problems.append(f"{name}: central camera not on a GPU server")
        if not wanted and labels.get("kubevision.io/accelerator") != "jetson":
            problems.append(f"{name}: edge camera not on a Jetson")
    return problems


def _site_has_gpu(nodes: dict[str, dict[str, Any]], site: str) -> bool:
    return any(
        n["metadata"]["labels"].get("kubevision.io/site") == site
        and n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (n.get("status") or {}).get("conditions") or []
        )
        for n in nodes.values()
    )


Buckets = dict[tuple[int, float], float]
"""(operator index, bucket bound) -> cumulative count of its reconcile-duration histogram."""


def reconcile_buckets(operators: list[FleetOperator], kind: str = "pipeline") -> Buckets:
    """The live operators' reconcile-duration histograms now."""
    out: Buckets = {}
    for i, op in enumerate(operators):
        if not op.alive():
            continue
        name = "kubevision_operator_reconcile_duration_seconds_bucket"
        for labels, value in op.metric_samples(name):
            if labels.get("kind") == kind:
                out[(i, float(labels["le"]))] = value
    return out


def reconcile_p99(before: Buckets, after: Buckets) -> float | None:
    """p99 of the reconciles between two looks (histograms differenced, operators summed)."""
    summed: dict[float, float] = {}
    for (i, bound), value in after.items():
        summed[bound] = summed.get(bound, 0.0) + value - before.get((i, bound), 0.0)
    if summed.get(float("inf"), 0.0) <= 0:
        return None
    return quantile(0.99, sorted(summed.items()))


@dataclass
class ProcessSample:
    cpu_seconds: float
    rss_bytes: int


def sample_process(pid: int) -> ProcessSample:
    """CPU time (user + system) and resident memory of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return ProcessSample(cpu, rss)
