"""The edge kit against the real control plane and operator: a Jetson joined with the labels
``install-k3s.sh`` registers it with gets the site's Jetson workers from the real scheduler,
and ``label-jetson.sh`` relabels it through the real kubectl after a JetPack upgrade.

The K3s agent itself is not run here (no Jetson, no network): the node registers through the
node simulator with exactly the labels the kit's dry run wrote into K3s's ``config.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kubevision.operator.planner import group_name
from tests.envtest.cluster import LocalCluster
from tests.envtest.edge import FakeJetson, l4t_release, labels_of, run_kit
from tests.envtest.nodes import JETSON_ORIN, NodeSimulator, SimulatedNode
from tests.envtest.poll import wait_for
from tests.integration.helpers import Namespace

pytestmark = pytest.mark.usefixtures("operator")

SITE = "depot-edge-kit"
ORIN_NX = FakeJetson(
    "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
    15_950_000,
    l4t_release(36, "4.3"),
    nvidia_runtime=True,
)
VARIANT = {
    "apiVersion": "kubevision.io/v1alpha1",
    "kind": "ModelVariant",
    "metadata": {"name": "tiny-jetson"},
    "spec": {
        "family": "tiny",
        "task": "detect",
        "format": "onnx",
        "precision": "fp16",
        "decoder": "yolox",
        "inputSize": {"width": 320, "height": 320},
        "artifact": {"uri": "file:///models/tiny.onnx", "sha256": "0" * 64},
        "hardware": [{"accelerator": "jetson", "expectedFps": 60, "p99LatencyMs": 30}],
    },
}


def _registered_labels(tmp_path: Path) -> list[str]:
    """The node labels the agent's dry run puts into /etc/rancher/k3s/config.yaml."""
    token = tmp_path / "node-token"
    token.write_text("K10deadbeef::server:join\n")
    plan = run_kit(
        "install-k3s.sh", "agent", "--site", SITE, "--server", "https://k3s.depot:6443",
        "--token-file", str(token), "--node-name", "orin-nx-7", "--dry-run",
        root=ORIN_NX.root(tmp_path / "jetson"),
    ).stdout  # fmt: skip
    body = plan.split("config.yaml (mode 0600):\n", 1)[1].split("\n+ ", 1)[0]
    config = yaml.safe_load(body)
    assert config["node-name"] == "orin-nx-7"
    return list(config["node-label"])


def _node(labels: list[str]) -> SimulatedNode:
    """An Orin NX as a K3s agent registers it: K3s's own labels plus the kit's."""
    return SimulatedNode(
        name="orin-nx-7",
        arch="arm64",
        labels={
            "node.kubernetes.io/instance-type": "k3s",
            "k3s.io/hostname": "orin-nx-7",
            **dict(label.split("=", 1) for label in labels),
        },
        capacity={"cpu": "8", "memory": "15576Mi", "pods": "110", "ephemeral-storage": "57Gi"},
        address="127.0.10.17",
        os_image=JETSON_ORIN.os_image,
        kernel=JETSON_ORIN.kernel,
        runtime=JETSON_ORIN.runtime,
    )


def test_a_jetson_joined_by_the_kit_gets_its_sites_jetson_workers(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    ns = Namespace(cluster, namespace)
    node = _node(_registered_labels(tmp_path))
    simulator = NodeSimulator(cluster.api_client(), (node,))
    simulator.start()
    try:
        ns.apply(
            docs=[
                VARIANT,
                {
                    "apiVersion": "kubevision.io/v1alpha1",
                    "kind": "Pipeline",
                    "metadata": {"name": "depot"},
                    "spec": {
                        "cameraSelector": {"matchLabels": {"site": SITE}},
                        "stages": {"detector": {"family": "tiny"}},
                        "placement": {"hardwareClasses": ["jetson"]},
                    },
                },
                {
                    "apiVersion": "kubevision.io/v1alpha1",
                    "kind": "Camera",
                    "metadata": {"name": "dock-door", "labels": {"site": SITE}},
                    "spec": {"source": {"url": "rtsp://dock.depot/live"}, "fps": 15, "site": SITE},
                },
            ]
        )
        pod = group_name("depot", SITE, "jetson") + "-0"
        bound = wait_for(
            lambda: (ns.get("pod", pod) or {}).get("spec", {}).get("nodeName"),
            timeout=90,
            what="the Jetson worker pod bound by the scheduler",
        )
        assert bound == node.name
        spec = ns.get("pod", pod)["spec"]
        assert spec["runtimeClassName"] == "nvidia"

        # JetPack 6.2 -> 6.2.1 on the Jetson; relabel through kubectl from what it printed
        upgraded = FakeJetson(ORIN_NX.model, ORIN_NX.mem_kib, l4t_release(36, "4.4"))
        printed = tmp_path / "labels.txt"
        printed.write_text(
            run_kit("jetson-labels.sh", root=upgraded.root(tmp_path / "upgraded")).stdout
        )
        kubectl = cluster.toolchain.kubectl
        env = {
            "PATH": f"{kubectl.parent}:{os.environ['PATH']}",
            "KUBECONFIG": str(cluster.kubeconfig()),
        }
        run_kit("label-jetson.sh", node.name, "--site", SITE, "--from", str(printed), env=env)
        labels = ns.get("node", node.name)["metadata"]["labels"]
        assert {k: v for k, v in labels.items() if k.startswith("kubevision.io/")} == {
            **labels_of(printed.read_text()),
            "kubevision.io/site": SITE,
        }
        assert labels["kubevision.io/jetpack"] == "6.2.1"
    finally:
        simulator.stop()
        cluster.control_plane.kubectl("delete", "node", node.name)
