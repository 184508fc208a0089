"""Benchmark: how fast a Camera applied to the API reaches its worker workload.

On a fresh local control plane (tests/envtest) with the operator running as the chart's
restricted user, it creates N Cameras one after another and times, for each, create-call →
the camera appearing in its worker group's ConfigMap (the assignment a worker reads), observed
by a watch. Baseline, measured in the same run on the same control plane: create-call → the
ReplicaSet that kube-controller-manager's Deployment controller makes for a new Deployment,
i.e. how fast Kubernetes' own built-in controller reacts.

    python -m benchmarks.operator_latency [--cameras 50]

writes benchmarks/results/operator_apply_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from benchmarks.common import machine
from kubevision.api.worker_config import CONFIG_FILE
from kubevision.operator.planner import group_name
from tests.envtest.cluster import LocalCluster
from tests.envtest.nodes import KUBERNETES_VERSION
from tests.envtest.operator import OperatorProcess, install_chart

RESULTS = Path(__file__).parent / "results"
NAMESPACE = "bench"
GROUP = group_name("bench", "site-a", "cpu")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


class FirstSeen:
    """Watches a list call in a thread and records when each key is first seen."""

    def __init__(self, list_fn: Callable[..., Any], keys: Callable[[Any], Iterator[str]]) -> None:
        self._seen: dict[str, float] = {}
        self._stopping = False
        self._cond = threading.Condition()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(list_fn, keys), daemon=True)
        self._thread.start()

    def _run(self, list_fn: Callable[..., Any], keys: Callable[[Any], Iterator[str]]) -> None:
        try:
            for event in self._watch.stream(list_fn, NAMESPACE, timeout_seconds=600):
                now = time.perf_counter()
                with self._cond:
                    for key in keys(event["object"]):
                        self._seen.setdefault(key, now)
                    self._cond.notify_all()
        except Exception:
            if not self._stopping:  # the stream breaks when the control plane stops
                raise

    def wait(self, key: str, timeout: float = 60) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._seen, timeout):
                raise TimeoutError(f"{key} not seen within {timeout}s")
            return self._seen[key]

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()


def configmap_cameras(cm: Any) -> Iterator[str]:
    if cm.metadata.name != GROUP or not cm.data:
        return
    config = json.loads(cm.data[CONFIG_FILE])
    for shard in config["shards"]:
        for cam in shard:
            yield str(cam["name"])


def replicaset_owners(rs: Any) -> Iterator[str]:
    for ref in rs.metadata.owner_references or []:
        yield str(ref.name)


def camera(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": f"cam-{i:03d}", "labels": {"bench": "yes"}},
        "spec": {
            "source": {"url": f"rtsp://cam-{i:03d}.bench.example/live"},
            "fps": 15,
            "site": "site-a",
        },
    }


def deployment(i: int) -> dict[str, Any]:
    labels = {"app": f"baseline-{i:03d}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"baseline-{i:03d}"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x"}]},
            },
        },
    }


def pipeline() -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "bench"},
        "spec": {
            "cameraSelector": {"matchLabels": {"bench": "yes"}},
            "stages": {"detector": {"family": "yolox-nano"}},
            "placement": {"hardwareClasses": ["cpu"]},
            "autoscaling": {"maxReplicas": 100},
        },
    }


def measure(cluster: LocalCluster, n: int) -> dict[str, Any]:
    api = cluster.api_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
    catalog = Path(__file__).parents[1] / "model_catalog" / "variants" / "yolox-nano.yaml"
    cluster.control_plane.kubectl("apply", "-n", NAMESPACE, "-f", str(catalog))
    custom.create_namespaced_custom_object(
        "kubevision.io", "v1alpha1", NAMESPACE, "pipelines", pipeline()
    )

    configmaps = FirstSeen(core.list_namespaced_config_map, configmap_cameras)
    replicasets = FirstSeen(apps.list_namespaced_replica_set, replicaset_owners)
    ours, baseline = [], []
    try:
        for i in range(n):
            start = time.perf_counter()
            custom.create_namespaced_custom_object(
                "kubevision.io", "v1alpha1", NAMESPACE, "cameras", camera(i)
            )
            ours.append(configmaps.wait(f"cam-{i:03d}") - start)
        for i in range(n):
            start = time.perf_counter()
            apps.create_namespaced_deployment(NAMESPACE, deployment(i))  # type: ignore[arg-type]
            baseline.append(replicasets.wait(f"baseline-{i:03d}") - start)
    finally:
        configmaps.stop()
        replicasets.stop()
    replicas = apps.read_namespaced_stateful_set(GROUP, NAMESPACE).spec.replicas
    return {"ours": ours, "baseline": baseline, "final_replicas": replicas}


def report(raw: dict[str, Any], n: int) -> dict[str, Any]:
    ours, base = summary(raw["ours"]), summary(raw["baseline"])
    return {
        "benchmark": "operator apply -> workload latency",
        "hardware": machine(),
        "kubernetes": KUBERNETES_VERSION,
        "control_plane": "local etcd + kube-apiserver + controller-manager + scheduler (envtest)",
        "operator": "kubevision-operator as the chart's ServiceAccount user, kopf, 1 process",
        "cameras": n,
        "timed": "create Camera call -> camera present in its worker ConfigMap (watch event)",
        "baseline_timed": "create Deployment call -> its ReplicaSet exists (watch event), "
        "kube-controller-manager's Deployment controller",
        "kubevision": ours,
        "baseline": base,
        "ratio_p50": round(ours["p50_ms"] / base["p50_ms"], 2),
        "ratio_p99": round(ours["p99_ms"] / base["p99_ms"], 2),
        "final_statefulset_replicas": raw["final_replicas"],
        "samples_ms": {k: [round(v * 1000, 1) for v in raw[k]] for k in ("ours", "baseline")},
    }


def _row(label: str, s: dict[str, float]) -> str:
    return f"| {label} | {s['p50_ms']} | {s['p99_ms']} | {s['mean_ms']} | {s['max_ms']} |"


def markdown(result: dict[str, Any]) -> str:
    k, b = result["kubevision"], result["baseline"]
    return f"""# Operator: apply → workload latency

Hardware: {result["hardware"]}. Kubernetes {result["kubernetes"]} ({result["control_plane"]}).
{result["cameras"]} Cameras created one after another into one Pipeline (YOLOX-nano catalog, CPU
class, site-a); the operator ran as {result["operator"]}.

| what is timed | p50 ms | p99 ms | mean ms | max ms |
|---|---|---|---|---|
{_row("KubeVision: " + result["timed"], k)}
{_row("baseline: " + result["baseline_timed"], b)}
| ratio KubeVision / baseline | {result["ratio_p50"]} | {result["ratio_p99"]} | | |

The worker StatefulSet ended at {result["final_statefulset_replicas"]} replicas.
Reproduce: `make bench-operator` (or `python -m benchmarks.operator_latency`).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp, LocalCluster(Path(tmp)) as cluster:
        install_chart(cluster)
        operator = OperatorProcess(cluster, Path(tmp) / "operator.log")
        operator.start()
        try:
            result = report(measure(cluster, args.cameras), args.cameras)
        finally:
            operator.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "operator_apply_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "operator_apply_latency.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
