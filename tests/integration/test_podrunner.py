"""Worker pods that really run: the operator's StatefulSet pod becomes a ``kubevision-worker
serve`` process (started by the test-only PodRunner in place of a kubelet), so readiness,
Pipeline status, metrics, live config changes and deletion are all the real thing."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubevision.operator.planner import group_name
from tests.assets import require
from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import REPO_ROOT
from tests.envtest.nodes import CPU_NODE
from tests.envtest.podrunner import POD_NETWORK, PodRunner
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace, yolox_worker_config

CATALOG = REPO_ROOT / "model_catalog" / "variants"
GROUP = group_name("p", "site-a", "cpu")
POD = f"{GROUP}-0"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def ns(cluster: LocalCluster, namespace: str) -> Namespace:
    return Namespace(cluster, namespace)


def camera(name: str, video: Path) -> dict[str, Any]:
    """A site-a camera playing a file (looped), analysing every 6th frame (5 of its 30 fps)."""
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": name, "labels": {"app": "bottles"}},
        "spec": {
            "source": {"url": f"file://{video}"},
            "fps": 30,
            "sampling": {"mode": "everyN", "everyN": 6},
            "site": "site-a",
        },
    }


PIPELINE = {
    "apiVersion": "kubevision.io/v1alpha1",
    "kind": "Pipeline",
    "metadata": {"name": "p"},
    "spec": {
        "cameraSelector": {"matchLabels": {"app": "bottles"}},
        "stages": {"detector": {"variant": "yolox-nano-416-onnx-fp32"}},
        "placement": {"hardwareClasses": ["cpu"]},
    },
}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def processed(ip: str) -> dict[str, float]:
    """kubevision_frames_processed_total per camera, scraped from the pod IP like Prometheus."""
    with DIRECT.open(f"http://{ip}:9090/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return {
        sample.labels["camera"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kubevision_frames_processed_total"
    }


def grows(ip: str, cameras: set[str], by: float = 5) -> None:
    """Wait until every camera's processed-frame counter rose by ``by`` from now."""

    def counted() -> dict[str, float] | None:
        counts = processed(ip)
        return counts if counts.keys() >= cameras else None

    start = wait_for(counted, timeout=30, what=f"frames processed for {sorted(cameras)}")
    wait_for(
        lambda: all(processed(ip)[c] >= start[c] + by for c in cameras),
        timeout=30,
        what=f"the frame counters of {sorted(cameras)} to grow",
    )


def ready_pod(ns: Namespace) -> dict[str, Any] | None:
    pod = ns.get("pod", POD)
    running = (pod or {}).get("status", {}).get("phase") == "Running"
    return pod if running and condition(pod, "Ready").get("status") == "True" else None


def bare_worker(name: str) -> list[dict[str, Any]]:
    """A worker pod bound straight to the CPU node (no operator, no scheduler), its ConfigMap
    (a valid config with no cameras) and env of every kind a kubelet resolves."""
    model = require("models/yolox_nano_416.onnx")
    config = yolox_worker_config(name, name, [[]], model)
    field = {
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    }
    container = {
        "name": "worker",
        "image": "kubevision/worker:test",
        "args": ["serve", "--config=/etc/kubevision/worker.json"],
        "env": [
            {
                "name": "KUBEVISION_POD_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {"name": "KUBEVISION_SHARD", **field},
            {
                "name": "CAM_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
            },
            {"name": "GREETING", "value": "hi-$(KUBEVISION_POD_NAME)"},
        ],
        "ports": [{"name": "metrics", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/kubevision", "readOnly": True}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"worker.json": json.dumps(config)},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/name": "kubevision-worker",
                    "apps.kubernetes.io/pod-index": "0",
                },
            },
            "spec": {
                "nodeName": CPU_NODE.name,
                "terminationGracePeriodSeconds": 5,
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": name}}],
            },
        },
    ]


def container_status(ns: Namespace, pod: str) -> dict[str, Any]:
    statuses = ((ns.get("pod", pod) or {}).get("status") or {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def test_a_pod_waits_for_its_secret_restarts_after_a_crash_and_stops_on_delete(
    ns: Namespace, runner: PodRunner
) -> None:
    """The kubelet part on its own: env resolution, a crash restart, graceful deletion."""

    def created() -> bool:
        ns.apply(docs=bare_worker("bare"))
        return True

    # admission wants the namespace's default ServiceAccount, which may not exist yet
    wait_for(created, timeout=30, what="the bare worker pod to be created")
    waiting = wait_for(
        lambda: container_status(ns, "bare").get("state", {}).get("waiting"),
        timeout=30,
        what="the pod to wait for its Secret",
    )
    assert waiting["reason"] == "CreateContainerConfigError"
    assert not runner.running(ns.name)

    ns.kubectl("create", "secret", "generic", "creds", "--from-literal=password=s3cret")
    wait_for(
        lambda: condition(ns.get("pod", "bare"), "Ready").get("status") == "True",
        timeout=30,
        what="the bare worker Ready",
    )
    pid = runner.running(ns.name)["bare"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for var in (
        b"KUBEVISION_POD_NAME=bare",
        b"KUBEVISION_SHARD=0",
        b"CAM_PASSWORD=s3cret",
        b"GREETING=hi-bare",
    ):
        assert var in environ

    os.kill(pid, signal.SIGKILL)  # a crash: restarted after a backoff, and Ready again
    restarted = wait_for(
        lambda: (
            (s := container_status(ns, "bare")).get("restartCount") == 1 and s.get("ready") and s
        ),
        timeout=30,
        what="the worker restarted and Ready again",
    )
    assert restarted["lastState"]["terminated"]["exitCode"] == 137
    new_pid = runner.running(ns.name)["bare"]
    assert new_pid != pid
    assert restarted["containerID"] == f"podrunner://{new_pid}"

    ns.kubectl("delete", "pod", "bare", "--wait=false")
    wait_for(
        lambda: ns.get("pod", "bare") is None and not runner.running(ns.name),
        timeout=30,
        what="the pod gone once its process stopped",
    )
    with pytest.raises(ProcessLookupError):
        os.kill(new_pid, 0)


def test_worker_pod_runs_reports_ready_takes_new_cameras_live_and_stops_on_delete(
    ns: Namespace, runner: PodRunner
) -> None:
    video = require("videos/bottle-detection.mp4")
    ns.apply(
        CATALOG / "yolox-nano.yaml",
        docs=[camera("shelf-a", video), camera("shelf-b", video), PIPELINE],
    )

    pod = wait_for(lambda: ready_pod(ns), timeout=60, what="the worker pod Running and Ready")
    status = pod["status"]
    ip = status["podIP"]
    assert ip.startswith(POD_NETWORK)
    assert status["podIPs"] == [{"ip": ip}]
    assert status["hostIP"] == CPU_NODE.address
    assert pod["spec"]["nodeName"] == CPU_NODE.name
    (container,) = status["containerStatuses"]
    assert container["ready"] is True
    assert container["restartCount"] == 0
    assert "running" in container["state"]
    assert {c["type"] for c in status["conditions"]} >= {
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    }
    pid = runner.running(ns.name)[POD]
    assert container["containerID"] == f"podrunner://{pid}"
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"KUBEVISION_POD_NAME={POD}".encode() in environ  # fieldRef metadata.name
    assert b"KUBEVISION_SHARD=0" in environ  # fieldRef metadata.labels[pod-index]

    # the StatefulSet controller counts the pod, and the operator reports it on the Pipeline
    wait_for(
        lambda: (ns.get("statefulset", GROUP) or {}).get("status", {}).get("readyReplicas") == 1,
        timeout=30,
        what="the StatefulSet's readyReplicas to be 1",
    )
    pipeline = wait_for(
        lambda: (
            (p := ns.get("pipeline", "p"))
            and p["status"].get("readyReplicas") == 1
            and condition(p, "Ready").get("status") == "True"
            and p
        ),
        timeout=30,
        what="the Pipeline status readyReplicas 1 and Ready=True",
    )
    assert condition(pipeline, "Ready")["reason"] == "WorkersReady"

    # Scraped at the pod IP, as the operator would. (Not through the metrics Service: an
    # EndpointSlice may not hold a loopback address, so the headless Service has no endpoints
    # here; discovery must read the pods' status.podIP.)
    grows(ip, {"shelf-a", "shelf-b"})

    # a third camera reaches the running worker through the ConfigMap: no restart
    ns.apply(docs=[camera("shelf-c", video)])
    wait_for(
        lambda: "shelf-c" in ns.get("configmap", GROUP)["data"]["worker.json"],
        timeout=30,
        what="the third camera in the worker ConfigMap",
    )
    grows(ip, {"shelf-a", "shelf-b", "shelf-c"})
    (container,) = ns.get("pod", POD)["status"]["containerStatuses"]
    assert container["restartCount"] == 0
    assert container["containerID"] == f"podrunner://{pid}"
    assert runner.running(ns.name) == {POD: pid}

    # Deleting the Pipeline stops the worker process, then the pod goes away. The garbage
    # collector notices a new CRD's deletions only after its discovery resync (every 30 s), so
    # in a fresh cluster this waits up to that long.
    ns.kubectl("delete", "pipeline", "p", "--wait=true", "--timeout=30s")
    wait_for(
        lambda: not ns.items("pods", "kubevision.io/pipeline=p") and not runner.running(ns.name),
        timeout=60,
        what="the worker pod gone and its process stopped",
    )
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
