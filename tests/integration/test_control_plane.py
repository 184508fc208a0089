"""The local control plane behaves like a real cluster: CRDs with CEL, scheduling on hardware."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import as_json
from tests.envtest.cluster import LocalCluster
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN, KUBERNETES_VERSION
from tests.envtest.poll import wait_for

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.envtest.kubevision.io
spec:
  group: envtest.kubevision.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                minReplicas: {type: integer, minimum: 0}
                maxReplicas: {type: integer, minimum: 1}
              x-kubernetes-validations:
                - rule: self.minReplicas <= self.maxReplicas
                  message: spec.minReplicas must not exceed spec.maxReplicas
            status:
              type: object
              properties:
                ready: {type: integer}
"""


def widget(name: str, min_replicas: int, max_replicas: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "envtest.kubevision.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
        }
    )


@pytest.fixture(scope="module")
def widget_crd(cluster: LocalCluster) -> str:
    cluster.control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/widgets.envtest.kubevision.io",
    )
    return "widgets.envtest.kubevision.io"


def test_kubectl_and_apiserver_report_the_pinned_version(cluster: LocalCluster) -> None:
    out = json.loads(cluster.control_plane.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert out["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_cel_rule_rejects_an_invalid_object_with_its_message(
    cluster: LocalCluster, widget_crd: str, namespace: str
) -> None:
    ok = cluster.control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("fine", 1, 3), check=False
    )
    assert ok.returncode == 0, ok.stderr

    bad = cluster.control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("upside-down", 5, 2), check=False
    )
    assert bad.returncode != 0
    assert "spec.minReplicas must not exceed spec.maxReplicas" in bad.stderr


def test_openapi_schema_rejects_out_of_range_values(
    cluster: LocalCluster, widget_crd: str, namespace: str
) -> None:
    bad = cluster.control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("negative", -1, 2), check=False
    )
    assert bad.returncode != 0
    assert "spec.minReplicas" in bad.stderr
    assert "should be greater than or equal to 0" in bad.stderr


def test_status_subresource_is_separate_from_spec(
    cluster: LocalCluster, widget_crd: str, namespace: str
) -> None:
    kubectl = cluster.control_plane.kubectl
    kubectl("apply", "-n", namespace, "-f", "-", input=widget("w", 1, 2))
    kubectl(
        "patch",
        "widget",
        "w",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"ready": 2}, "spec": {"maxReplicas": 9}}',
    )
    obj = json.loads(kubectl("get", "widget", "w", "-n", namespace, "-o", "json").stdout)
    assert obj["status"] == {"ready": 2}
    assert obj["spec"]["maxReplicas"] == 2, "a status write must not change spec"


# -- scheduling on simulated hardware ---------------------------------------------------------


def deployment(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    spec = dict(pod_spec)
    container = {
        "name": "main",
        "image": "registry.invalid/kubevision/worker:test",
        "resources": spec.pop("resources", {}),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **spec},
            },
        },
    }


GPU_POD = {
    "resources": {"limits": {"nvidia.com/gpu": "1"}},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
ARM64_POD = {
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
                        ]
                    }
                ],
            }
        }
    },
}
# amd64 without a GPU toleration: the GPU server's taint keeps it off, so only the CPU node fits
AMD64_POD = {"nodeSelector": {"kubernetes.io/arch": "amd64"}}


def scheduled_pods(core: client.CoreV1Api, namespace: str, app: str) -> list[dict[str, Any]]:
    pods = as_json(
        core.list_namespaced_pod(namespace, label_selector=f"app={app}", _preload_content=False)
    )["items"]
    return [p for p in pods if p["spec"].get("nodeName")]


@pytest.mark.parametrize(
    ("pod_spec", "expected_node"),
    [(GPU_POD, GPU_SERVER.name), (ARM64_POD, JETSON_ORIN.name), (AMD64_POD, CPU_NODE.name)],
    ids=["gpu-request", "arm64-affinity", "amd64-untolerated"],
)
def test_scheduler_binds_pods_to_the_matching_node(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    namespace: str,
    pod_spec: dict[str, Any],
    expected_node: str,
) -> None:
    apps = client.AppsV1Api(cluster.api_client())
    apps.create_namespaced_deployment(namespace, deployment("w", pod_spec))  # type: ignore[arg-type]
    pods = wait_for(
        lambda: scheduled_pods(core, namespace, "w"),
        timeout=60,
        what="the Deployment's pod to be bound to a node",
    )
    assert [p["spec"]["nodeName"] for p in pods] == [expected_node]


def test_pod_asking_for_more_gpus_than_exist_stays_pending(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    too_many = {**GPU_POD, "resources": {"limits": {"nvidia.com/gpu": "9"}}}
    apps = client.AppsV1Api(cluster.api_client())
    apps.create_namespaced_deployment(namespace, deployment("greedy", too_many))  # type: ignore[arg-type]

    def unschedulable_message() -> str | None:
        for pod in as_json(core.list_namespaced_pod(namespace, _preload_content=False))["items"]:
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond["message"])
        return None

    message = wait_for(unschedulable_message, timeout=60, what="the scheduler to give up")
    assert "Insufficient nvidia.com/gpu" in message
    assert scheduled_pods(core, namespace, "greedy") == []


# -- simulated nodes ---------------------------------------------------------------------------


def test_simulated_nodes_report_their_hardware(
    cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    nodes = {
        n["metadata"]["name"]: n for n in as_json(core.list_node(_preload_content=False))["items"]
    }
    gpu, jetson = nodes[GPU_SERVER.name], nodes[JETSON_ORIN.name]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert jetson["status"]["nodeInfo"]["architecture"] == "arm64"
    assert jetson["metadata"]["labels"]["kubevision.io/accelerator"] == "jetson"
    assert jetson["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "k3s"
    wide = cluster.control_plane.kubectl("get", "nodes", "-o", "wide").stdout
    for name in (GPU_SERVER.name, JETSON_ORIN.name, CPU_NODE.name):
        assert name in wide


def test_node_leases_keep_being_renewed(cluster: LocalCluster) -> None:
    coordination = client.CoordinationV1Api(cluster.api_client())

    def renew_time() -> dt.datetime:
        lease = as_json(
            coordination.read_namespaced_lease(
                JETSON_ORIN.name, "kube-node-lease", _preload_content=False
            )
        )
        return dt.datetime.fromisoformat(lease["spec"]["renewTime"])

    first = renew_time()
    wait_for(lambda: renew_time() > first, timeout=30, what="the Jetson's Lease to be renewed")
