"""Simulated hardware: Node objects for a GPU server, a Jetson under K3s and a CPU node.

No kubelet runs here, so :class:`NodeSimulator` does a kubelet's bookkeeping: it registers the
Nodes with realistic labels, capacity and node info, and renews their Leases and Ready
condition so the node-lifecycle controller keeps them Ready (and untainted) for the whole run.
The scheduler then places pods on them exactly as it would on real machines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("envtest.nodes")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
KUBERNETES_VERSION = "v1.36.3"

PodOwner = Callable[[dict[str, Any]], bool]
"""Says whether another stand-in kubelet runs this pod (plain JSON) and so finishes it."""


@dataclass(frozen=True)
class SimulatedNode:
    """What a real node of one kind reports to the API server."""

    name: str
    arch: str
    labels: dict[str, str]
    capacity: dict[str, str]
    address: str
    os_image: str
    kernel: str
    runtime: str
    kubelet_version: str = KUBERNETES_VERSION
    taints: list[dict[str, str]] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        labels = {
            "kubernetes.io/arch": self.arch,
            "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": self.name,
            "beta.kubernetes.io/arch": self.arch,
            "beta.kubernetes.io/os": "linux",
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": self.taints},
        }

    def status(self, now: dt.datetime) -> dict[str, Any]:
        allocatable = dict(self.capacity)
        return {
            "capacity": self.capacity,
            "allocatable": allocatable,
            "conditions": _conditions(now),
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": self.arch,
                "operatingSystem": "linux",
                "osImage": self.os_image,
                "kernelVersion": self.kernel,
                "containerRuntimeVersion": self.runtime,
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "machineID": self.name,
                "systemUUID": self.name,
                "bootID": self.name,
            },
        }


def _conditions(now: dt.datetime) -> list[dict[str, str]]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    healthy = [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ]
    conditions = [
        {
            "type": t,
            "status": "False",
            "reason": r,
            "message": "simulated kubelet",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        for t, r in healthy
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "simulated kubelet is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
    )
    return conditions


# Addresses are loopback ones: nothing here may ever send traffic off this machine.
GPU_SERVER = SimulatedNode(
    name="gpu-server-1",
    arch="amd64",
    labels={
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "topology.kubernetes.io/zone": "site-a",
        "kubevision.io/site": "site-a",
        # NVIDIA GPU feature discovery / GPU operator labels
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/cuda.driver.major": "580",
        "nvidia.com/cuda.runtime.major": "13",
        "nvidia.com/mig.capable": "true",
        "feature.node.kubernetes.io/pci-10de.present": "true",
    },
    capacity={
        "cpu": "192",
        "memory": "2097152Mi",
        "pods": "110",
        "ephemeral-storage": "3840Gi",
        "nvidia.com/gpu": "8",
    },
    taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    address="127.0.10.1",
    os_image="Ubuntu 24.04.2 LTS",
    kernel="6.8.0-60-generic",
    runtime="containerd://2.0.5",
)

JETSON_ORIN = SimulatedNode(
    name="jetson-orin-1",
    arch="arm64",
    labels={
        # what a K3s agent labels itself with
        "node.kubernetes.io/instance-type": "k3s",
        "beta.kubernetes.io/instance-type": "k3s",
        "k3s.io/hostname": "jetson-orin-1",
        "k3s.io/internal-ip": "127.0.10.2",
        "topology.kubernetes.io/zone": "site-b",
        "kubevision.io/site": "site-b",
        # what edge_k3s labels a Jetson with
        "kubevision.io/accelerator": "jetson",
        "kubevision.io/jetson-model": "agx-orin-64gb",
        "kubevision.io/jetpack": "6.2",
    },
    capacity={"cpu": "12", "memory": "62841Mi", "pods": "110", "ephemeral-storage": "57Gi"},
    address="127.0.10.2",
    os_image="Ubuntu 22.04.5 LTS",
    kernel="5.15.148-tegra",
    runtime="containerd://2.0.4-k3s2",
    kubelet_version=f"{KUBERNETES_VERSION}+k3s1",
)

CPU_NODE = SimulatedNode(
    name="cpu-node-1",
    arch="amd64",
    labels={
        "node.kubernetes.io/instance-type": "c7i.4xlarge",
        "topology.kubernetes.io/zone": "site-a",
        "kubevision.io/site": "site-a",
    },
    capacity={"cpu": "16", "memory": "32768Mi", "pods": "110", "ephemeral-storage": "200Gi"},
    address="127.0.10.3",
    os_image="Debian GNU/Linux 12 (bookworm)",
    kernel="6.1.0-35-amd64",
    runtime="containerd://1.7.27",
)

DEFAULT_NODES = (GPU_SERVER, JETSON_ORIN, CPU_NODE)


class NodeSimulator:
    """Registers simulated Nodes and keeps them Ready, like a kubelet's status loop.

    It also does a kubelet's part of pod deletion: a pod bound to a node is only removed once
    its kubelet confirms the containers stopped, so without this, deleted pods (and their
    namespaces) would stay Terminating forever. Pods that a registered owner (the pod runner,
    which starts real processes) claims are left to that owner, which removes them only once
    their processes stopped.
    """

    # Class-wide: the session's cluster fixture holds the simulator instance, which a runner
    # started by a test module cannot reach; every simulator must defer to it alike.
    _pod_owners: ClassVar[list[PodOwner]] = []
    _pod_owners_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def defer_pod_deletions(cls, owner: PodOwner) -> Callable[[], None]:
        """Leave the deletion of pods ``owner`` claims to it; call the result to undo."""
        with cls._pod_owners_lock:
            cls._pod_owners.append(owner)

        def undo() -> None:
            with cls._pod_owners_lock:
                if owner in cls._pod_owners:
                    cls._pod_owners.remove(owner)

        return undo

    @classmethod
    def _owned_elsewhere(cls, pod: dict[str, Any]) -> bool:
        with cls._pod_owners_lock:
            owners = list(cls._pod_owners)
        return any(owns(pod) for owns in owners)

    def __init__(
        self,
        api: client.ApiClient,
        nodes: tuple[SimulatedNode, ...] = DEFAULT_NODES,
        interval: float = 10.0,
        pod_interval: float = 1.0,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._coordination = client.CoordinationV1Api(api)
        self.nodes = nodes
        self._interval = interval
        self._pod_interval = pod_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-simulator", daemon=True)

    def start(self) -> None:
        """Register every node, post its status once, then keep heartbeating in a thread."""
        for node in self.nodes:
            self._register(node)
        self.heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def heartbeat(self) -> None:
        """Renew every node's Lease and Ready condition once."""
        now = dt.datetime.now(dt.UTC)
        for node in self.nodes:
            self._core.patch_node_status(node.name, {"status": {"conditions": _conditions(now)}})
            self._renew_lease(node.name, now)

    def finish_pod_deletions(self) -> None:
        """Remove pods that are being deleted from our nodes (their containers "stopped")."""
        names = {n.name for n in self.nodes}
        raw: Any = self._core.list_pod_for_all_namespaces(_preload_content=False)
        for pod in json.loads(raw.data)["items"]:
            meta = pod["metadata"]
            if (
                meta.get("deletionTimestamp")
                and pod["spec"].get("nodeName") in names
                and not self._owned_elsewhere(pod)
            ):
                try:
                    self._core.delete_namespaced_pod(
                        meta["name"], meta["namespace"], grace_period_seconds=0
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def _run(self) -> None:
        last_heartbeat = time.monotonic()
        while not self._stop.wait(self._pod_interval):
            try:
                self.finish_pod_deletions()
                if time.monotonic() - last_heartbeat >= self._interval:
                    self.heartbeat()
                    last_heartbeat = time.monotonic()
            except Exception:  # a transient API error must not kill the simulated kubelet
                log.exception("simulated kubelet loop failed; retrying")

    def _register(self, node: SimulatedNode) -> None:
        try:
            self._core.create_node(node.manifest())  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
        now = dt.datetime.now(dt.UTC)
        self._core.patch_node_status(node.name, {"status": node.status(now)})

    def _renew_lease(self, name: str, now: dt.datetime) -> None:
        body = {
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self._coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._coordination.create_namespaced_lease(LEASE_NAMESPACE, body)  # type: ignore[arg-type]
