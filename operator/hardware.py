"""Hardware classes and sites from node labels: the facts placement decisions are made from.

| class        | a node is in it when                                   |
|--------------|--------------------------------------------------------|
| `jetson`     | `kubevision.io/accelerator=jetson` (set by edge_k3s)   |
| `nvidia-gpu` | `nvidia.com/gpu.present=true` (GPU feature discovery)  |
| `cpu`        | neither                                                |

The site is the node's `kubevision.io/site` label (edge location or data centre).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubevision.api.modelvariant import HardwareClass

SITE_LABEL = "kubevision.io/site"
ACCELERATOR_LABEL = "kubevision.io/accelerator"
JETSON_MODEL_LABEL = "kubevision.io/jetson-model"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_RESOURCE = "nvidia.com/gpu"
ARCH_LABEL = "kubernetes.io/arch"


@dataclass(frozen=True)
class NodeInfo:
    """The parts of a Node that matter for placement (kept in the operator's node index)."""

    name: str
    hardware_class: HardwareClass
    site: str | None
    schedulable: bool
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict, hash=False)

    def matches(self, selector: dict[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())


def hardware_class(labels: dict[str, str]) -> HardwareClass:
    if labels.get(ACCELERATOR_LABEL) == "jetson":
        return "jetson"
    if labels.get(GPU_PRESENT_LABEL) == "true":
        return "nvidia-gpu"
    return "cpu"


def node_info(name: str, labels: dict[str, str], spec: Any, status: Any) -> NodeInfo:
    """Project a Node (as kopf passes its body parts) onto what placement needs."""
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    allocatable = status.get("allocatable") or {}
    return NodeInfo(
        name=name,
        hardware_class=hardware_class(labels),
        site=labels.get(SITE_LABEL),
        schedulable=ready and not spec.get("unschedulable", False),
        gpus=int(allocatable.get(GPU_RESOURCE, 0)),
        labels=dict(labels),
    )


def nodes_for(
    nodes: Iterable[NodeInfo], hardware: HardwareClass, site: str | None
) -> list[NodeInfo]:
    """Schedulable nodes of one class, at one site (``None``: any site)."""
    return [
        n
        for n in nodes
        if n.schedulable and n.hardware_class == hardware and (site is None or n.site == site)
    ]
