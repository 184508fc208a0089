"""Hardware facts from node labels: the class, site, GPUs and whether pods can go there."""

from __future__ import annotations

from typing import Any

import pytest

from kubevision.api.modelvariant import HardwareClass
from kubevision.operator.hardware import NodeInfo, hardware_class, node_info, nodes_for
from tests.envtest.nodes import CPU_NODE, GPU_SERVER, JETSON_ORIN, SimulatedNode
from tests.unit.factories import NOW, node, simulated_nodes


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param({}, "cpu", id="no-labels"),
        pytest.param({"nvidia.com/gpu.present": "true"}, "nvidia-gpu", id="gpu-present"),
        pytest.param({"nvidia.com/gpu.present": "false"}, "cpu", id="gpu-removed"),
        pytest.param({"kubevision.io/accelerator": "jetson"}, "jetson", id="jetson"),
        pytest.param(
            {"kubevision.io/accelerator": "jetson", "nvidia.com/gpu.present": "true"},
            "jetson",
            id="jetson-wins-over-gpu-label",
        ),
        pytest.param({"kubevision.io/accelerator": "coral"}, "cpu", id="unknown-accelerator"),
        pytest.param(GPU_SERVER.manifest()["metadata"]["labels"], "nvidia-gpu", id="gpu-server"),
        pytest.param(JETSON_ORIN.manifest()["metadata"]["labels"], "jetson", id="jetson-orin"),
        pytest.param(CPU_NODE.manifest()["metadata"]["labels"], "cpu", id="cpu-node"),
    ],
)
def test_hardware_class(labels: dict[str, str], expected: HardwareClass) -> None:
    assert hardware_class(labels) == expected


@pytest.mark.parametrize(
    ("sim", "hardware", "site", "gpus"),
    [
        pytest.param(GPU_SERVER, "nvidia-gpu", "site-a", 8, id="gpu-server"),
        pytest.param(JETSON_ORIN, "jetson", "site-b", 0, id="jetson-orin"),
        pytest.param(CPU_NODE, "cpu", "site-a", 0, id="cpu-node"),
    ],
)
def test_node_info_of_the_simulated_nodes(
    sim: SimulatedNode, hardware: HardwareClass, site: str, gpus: int
) -> None:
    info = node(sim)
    assert (info.name, info.hardware_class, info.site, info.gpus) == (
        sim.name,
        hardware,
        site,
        gpus,
    )
    assert info.schedulable
    assert info.labels["kubernetes.io/arch"] == sim.arch


@pytest.mark.parametrize(
    ("spec", "status"),
    [
        pytest.param({"unschedulable": True}, None, id="cordoned"),
        pytest.param({}, {"conditions": []}, id="no-conditions"),
        pytest.param({}, {}, id="empty-status"),
        pytest.param(
            {}, {"conditions": [{"type": "Ready", "status": "Unknown"}]}, id="ready-unknown"
        ),
    ],
)
def test_node_not_ready_or_cordoned_is_not_schedulable(
    spec: dict[str, Any], status: dict[str, Any] | None
) -> None:
    labels = GPU_SERVER.manifest()["metadata"]["labels"]
    info = node_info("n", labels, spec, GPU_SERVER.status(NOW) if status is None else status)
    assert not info.schedulable


def test_node_info_copies_the_labels() -> None:
    labels = dict(CPU_NODE.labels)
    info = node_info("n", labels, {}, CPU_NODE.status(NOW))
    labels["kubevision.io/site"] = "moved"
    assert info.site == "site-a"
    assert info.labels["kubevision.io/site"] == "site-a"


@pytest.mark.parametrize(
    ("hardware", "site", "expected"),
    [
        pytest.param("nvidia-gpu", "site-a", ["gpu-server-1"], id="gpu-site-a"),
        pytest.param("nvidia-gpu", "site-b", [], id="gpu-site-b"),
        pytest.param("jetson", "site-b", ["jetson-orin-1"], id="jetson-site-b"),
        pytest.param("jetson", None, ["jetson-orin-1"], id="jetson-any-site"),
        pytest.param("cpu", None, ["cpu-node-1"], id="cpu-any-site"),
        pytest.param("cpu", "site-z", [], id="unknown-site"),
    ],
)
def test_nodes_for(hardware: HardwareClass, site: str | None, expected: list[str]) -> None:
    assert [n.name for n in nodes_for(simulated_nodes(), hardware, site)] == expected


def test_nodes_for_skips_unschedulable_nodes() -> None:
    nodes: list[NodeInfo] = [node(GPU_SERVER, unschedulable=True), node(CPU_NODE, ready=False)]
    assert nodes_for(nodes, "nvidia-gpu", "site-a") == []
    assert nodes_for(nodes, "cpu", None) == []


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        pytest.param({}, True, id="empty"),
        pytest.param({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, True, id="product"),
        pytest.param({"nvidia.com/gpu.product": "NVIDIA-A100"}, False, id="other-product"),
        pytest.param({"kubevision.io/site": "site-a", "pool": "vision"}, False, id="one-missing"),
    ],
)
def test_node_matches_selector(selector: dict[str, str], matches: bool) -> None:
    assert node(GPU_SERVER).matches(selector) is matches
