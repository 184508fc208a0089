"""Choosing a ModelVariant: the most accurate build that runs on the hardware and meets the SLO."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kubevision.api.modelvariant import HardwareClass, Task
from kubevision.api.pipeline import ModelRef, Slo
from kubevision.operator.hardware import NodeInfo
from kubevision.operator.selection import Variant, choose_variant
from tests.envtest.nodes import CPU_NODE, GPU_SERVER
from tests.unit.factories import catalog, node, simulated_nodes, variant

H100 = "NVIDIA-H100-80GB-HBM3"
PRODUCT = "nvidia.com/gpu.product"


def family(name: str) -> ModelRef:
    return ModelRef(family=name)


def named(name: str) -> ModelRef:
    return ModelRef(variant=name)


def slo(p99: float = 100, min_fps: float = 1) -> Slo:
    return Slo.model_validate({"p99LatencyMs": p99, "minFps": min_fps})


def gpu_node(name: str, product: str) -> NodeInfo:
    """A GPU node of another product at the GPU server's site."""
    base = node(GPU_SERVER)
    return NodeInfo(
        name=name,
        hardware_class="nvidia-gpu",
        site=base.site,
        schedulable=True,
        gpus=1,
        labels={**base.labels, PRODUCT: product},
    )


@pytest.mark.parametrize(
    ("ref", "task", "hardware", "objective", "expected"),
    [
        pytest.param(
            family("yolox-nano"),
            "detect",
            "nvidia-gpu",
            None,
            "yolox-nano-416-trt-fp16",
            id="gpu-accuracy-tie-broken-by-fps",
        ),
        pytest.param(
            family("yolox-nano"), "detect", "jetson", None, "yolox-nano-416-trt-fp16", id="jetson"
        ),
        pytest.param(
            family("yolox-nano"), "detect", "cpu", None, "yolox-nano-416-onnx-fp32", id="cpu-only"
        ),
        pytest.param(
            family("yolox-nano"), "detect", "cpu", slo(min_fps=46), None, id="slo-fps-too-high"
        ),
        pytest.param(
            family("yolox-nano"),
            "detect",
            "cpu",
            slo(p99=40, min_fps=45),
            "yolox-nano-416-onnx-fp32",
            id="slo-met-exactly-on-cpu",
        ),
        pytest.param(
            family("yolox-nano"),
            "detect",
            "jetson",
            slo(p99=15),
            None,
            id="slo-latency-needs-int8-but-its-accuracy-is-unmeasured",
        ),
        pytest.param(
            family("yolox-nano"),
            "detect",
            "jetson",
            slo(p99=18, min_fps=240),
            "yolox-nano-416-trt-fp16",
            id="slo-bounds-are-inclusive",
        ),
        pytest.param(
            family("yolox-nano"), "detect", "nvidia-gpu", slo(p99=10), None, id="slo-impossible"
        ),
        pytest.param(
            family("yolox-nano"), "detect", "cpu", slo(p99=39), None, id="cpu-too-slow-for-slo"
        ),
        pytest.param(
            named("yolox-nano-416-onnx-fp32"),
            "detect",
            "nvidia-gpu",
            None,
            "yolox-nano-416-onnx-fp32",
            id="by-name-even-if-a-sibling-is-better",
        ),
        pytest.param(
            named("yolox-nano-416-trt-fp16"), "detect", "cpu", None, None, id="by-name-no-target"
        ),
        pytest.param(family("yolox-tiny"), "detect", "nvidia-gpu", None, None, id="no-such-family"),
        pytest.param(named("mobilenetv2-int8-onnx"), "detect", "cpu", None, None, id="wrong-task"),
        pytest.param(
            named("mobilenetv2-int8-onnx"),
            "classify",
            "jetson",
            None,
            "mobilenetv2-int8-onnx",
            id="classifier-by-name",
        ),
        pytest.param(
            family("person-reid"), "reid", "cpu", None, "person-reid-retail-0288", id="reid-family"
        ),
    ],
)
def test_catalog_choice(
    ref: ModelRef, task: Task, hardware: HardwareClass, objective: Slo | None, expected: str | None
) -> None:
    choice = choose_variant(ref, task, hardware, simulated_nodes(), catalog(), objective)
    assert (choice.variant.name if choice else None) == expected
    if choice is not None:
        assert choice.target.accelerator == hardware
        assert choice.target == choice.variant.spec.target(hardware)


def _gpu(fps: float, selector: dict[str, str] | None = None, *, p99: float = 20) -> dict[str, Any]:
    return {
        "accelerator": "nvidia-gpu",
        "expectedFps": fps,
        "p99LatencyMs": p99,
        "nodeSelector": selector or {},
    }


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param(
            [
                variant("accurate", accuracy=0.5, targets=[_gpu(100)]),
                variant("fast", accuracy=0.4, targets=[_gpu(5000)]),
            ],
            "accurate",
            id="accuracy-beats-throughput",
        ),
        pytest.param(
            [
                variant("slow", accuracy=0.4, targets=[_gpu(100)]),
                variant("fast", accuracy=0.4, targets=[_gpu(5000)]),
            ],
            "fast",
            id="throughput-breaks-accuracy-tie",
        ),
        pytest.param(
            [
                variant("unmeasured", accuracy=None, targets=[_gpu(9000)]),
                variant("measured", accuracy=0.01, targets=[_gpu(10)]),
            ],
            "measured",
            id="unknown-accuracy-ranks-last",
        ),
        pytest.param(
            [
                variant("for-a100", accuracy=0.6, targets=[_gpu(900, {PRODUCT: "A100"})]),
                variant("for-h100", accuracy=0.5, targets=[_gpu(900, {PRODUCT: H100})]),
            ],
            "for-h100",
            id="node-selector-no-node-has-it",
        ),
        pytest.param(
            [variant("for-a100", targets=[_gpu(900, {PRODUCT: "A100"})])],
            None,
            id="only-variant-needs-missing-gpu",
        ),
        pytest.param(
            [variant("needs-mig", targets=[_gpu(900, {"nvidia.com/mig.capable": "true"})])],
            "needs-mig",
            id="node-selector-matched",
        ),
        pytest.param(
            [
                variant(
                    "cpu-build",
                    targets=[{"accelerator": "cpu", "expectedFps": 50, "p99LatencyMs": 30}],
                )
            ],
            None,
            id="no-target-for-hardware",
        ),
    ],
)
def test_ranking_and_node_selector(candidates: list[Variant], expected: str | None) -> None:
    choice = choose_variant(
        family("synthetic"), "detect", "nvidia-gpu", [node(GPU_SERVER)], candidates
    )
    assert (choice.variant.name if choice else None) == expected


def test_node_selector_matched_by_any_node_of_the_group() -> None:
    candidates = [
        variant("for-a100", accuracy=0.6, targets=[_gpu(900, {PRODUCT: "A100"})]),
        variant("for-h100", accuracy=0.5, targets=[_gpu(900, {PRODUCT: H100})]),
    ]
    nodes = [node(GPU_SERVER), gpu_node("a100-box", "A100")]
    choice = choose_variant(family("synthetic"), "detect", "nvidia-gpu", nodes, candidates)
    assert choice is not None
    assert choice.variant.name == "for-a100"


@pytest.mark.parametrize(
    "nodes",
    [pytest.param([], id="no-nodes"), pytest.param([gpu_node("a100-box", "A100")], id="wrong-gpu")],
)
def test_no_node_for_the_build_means_no_choice(nodes: list[NodeInfo]) -> None:
    candidates = [variant("for-h100", targets=[_gpu(900, {PRODUCT: H100})])]
    assert choose_variant(family("synthetic"), "detect", "nvidia-gpu", nodes, candidates) is None


def test_choice_does_not_depend_on_the_order_variants_are_listed() -> None:
    candidates = [
        variant("b-twin", accuracy=0.4, targets=[_gpu(1000)]),
        variant("a-twin", accuracy=0.4, targets=[_gpu(1000)]),
        variant("c-slower", accuracy=0.4, targets=[_gpu(999)]),
        variant("d-worse", accuracy=0.39, targets=[_gpu(9999)]),
    ]
    chosen = {
        choice.variant.name
        for order in itertools.permutations(candidates)
        if (
            choice := choose_variant(
                family("synthetic"), "detect", "nvidia-gpu", [node(GPU_SERVER)], order
            )
        )
    }
    assert len(chosen) == 1
    assert chosen <= {"a-twin", "b-twin"}


def test_slo_is_not_applied_when_not_given() -> None:
    """Helper stages (classifier, re-id, pose) are chosen without the detector's SLO."""
    slow = [variant("slow", targets=[_gpu(2, p99=5000)])]
    nodes = [node(GPU_SERVER)]
    assert choose_variant(family("synthetic"), "detect", "nvidia-gpu", nodes, slow) is not None
    assert choose_variant(family("synthetic"), "detect", "nvidia-gpu", nodes, slow, slo()) is None


def test_openvino_build_is_chosen_on_intel_cpu_nodes() -> None:
    """The OpenVINO variant needs node-feature-discovery's Intel label: chosen where a CPU
    node has it (same accuracy and planning figures as the ONNX Runtime build, which keeps
    every other CPU node)."""
    base = node(CPU_NODE)
    intel = NodeInfo(
        name="intel-cpu",
        hardware_class="cpu",
        site=base.site,
        schedulable=True,
        gpus=0,
        labels={**base.labels, "feature.node.kubernetes.io/cpu-model.vendor_id": "Intel"},
    )
    ref = family("yolox-nano")
    on_intel = choose_variant(ref, "detect", "cpu", [intel], catalog())
    elsewhere = choose_variant(ref, "detect", "cpu", [base], catalog())
    assert on_intel is not None
    assert on_intel.variant.name == "yolox-nano-416-openvino-fp32"
    assert on_intel.variant.spec.format == "openvino"
    assert elsewhere is not None
    assert elsewhere.variant.name == "yolox-nano-416-onnx-fp32"
