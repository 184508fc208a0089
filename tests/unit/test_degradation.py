"""The degradation ladder's effects on what the operator renders."""

from __future__ import annotations

import dataclasses

from kubevision.api.modelvariant import ModelVariantSpec
from kubevision.api.pipeline import DegradationStep
from kubevision.api.worker_config import WorkerConfig
from kubevision.operator.builders import build_worker_config
from kubevision.operator.planner import GroupScaling, plan_pipeline
from kubevision.operator.selection import Variant
from tests.envtest.nodes import CPU_NODE
from tests.unit.factories import camera, catalog, group, node, pipeline_spec


def dynamic(name: str, gflops: float, dynamic_size: bool = True) -> Variant:
    spec = {
        "family": "yolox-nano",
        "task": "detect",
        "format": "onnx",
        "precision": "fp32",
        "decoder": "yolox",
        "inputSize": {"width": 416, "height": 416},
        "gflops": gflops,
        "dynamicInputSize": dynamic_size,
        "artifact": {"uri": f"file:///models/{name}.onnx", "sha256": "0" * 64},
        "hardware": [{"accelerator": "cpu", "expectedFps": 100, "p99LatencyMs": 20}],
        "accuracy": {"metric": "mAP50-95", "value": 0.3 + gflops / 100, "dataset": "coco128"},
    }
    return Variant(name, ModelVariantSpec.model_validate(spec))


def config_for(steps: tuple[DegradationStep, ...], detector: Variant) -> WorkerConfig:
    plan = dataclasses.replace(group("cpu", detector=detector), degradation=steps)
    return build_worker_config("p", "ns", pipeline_spec(), plan)


def test_frame_skip_halves_counted_sampling_only() -> None:
    config = config_for(("frameSkip",), dynamic("m", 2.0))
    (cam,) = config.shards[0]
    assert (cam.sampling.mode, cam.sampling.every_n) == ("everyN", 2)


def test_resolution_shrinks_the_input_of_dynamic_variants_only() -> None:
    assert config_for(("resolution",), dynamic("m", 2.0)).detector.model.input_size.width == 288
    fixed = config_for(("resolution",), dynamic("f", 2.0, dynamic_size=False))
    assert fixed.detector.model.input_size.width == 416


def test_smaller_variant_picks_the_largest_smaller_one_of_the_family() -> None:
    variants = [dynamic("big", 8.0), dynamic("mid", 4.0), dynamic("small", 1.0)]
    spec = pipeline_spec(
        stages={"detector": {"family": "yolox-nano"}}, placement={"hardwareClasses": ["cpu"]}
    )
    cams = [camera("c1", site="site-a")]
    nodes = [node(CPU_NODE)]
    normal = plan_pipeline("p", spec, cams, variants, nodes, previous={})
    assert normal.groups[0].main_model.variant.name == "big"
    name = normal.groups[0].name
    degraded = plan_pipeline(
        "p",
        spec,
        cams,
        variants,
        nodes,
        previous={},
        scaling={name: GroupScaling(1, ("smallerVariant",))},
    )
    assert degraded.groups[0].main_model.variant.name == "mid"
    assert degraded.groups[0].degradation == ("smallerVariant",)


def test_metrics_can_raise_replicas_above_the_estimate_but_not_below() -> None:
    spec = pipeline_spec(
        stages={"detector": {"family": "yolox-nano"}}, placement={"hardwareClasses": ["cpu"]}
    )
    cams = [camera(f"c{i}", site="site-a") for i in range(2)]
    variants = [v for v in catalog() if v.name == "yolox-nano-416-onnx-fp32"]
    base = plan_pipeline("p", spec, cams, variants, [node(CPU_NODE)], previous={})
    name, estimate = base.groups[0].name, base.groups[0].shards.replicas
    up = plan_pipeline(
        "p",
        spec,
        cams,
        variants,
        [node(CPU_NODE)],
        previous={},
        scaling={name: GroupScaling(estimate + 2)},
    )
    assert up.groups[0].shards.replicas == estimate + 2
    assert up.groups[0].scaled_by_metrics
    down = plan_pipeline(
        "p", spec, cams, variants, [node(CPU_NODE)], previous={}, scaling={name: GroupScaling(0)}
    )
    assert down.groups[0].shards.replicas == estimate
    assert not down.groups[0].scaled_by_metrics
