"""The INT8 accuracy gate on real weights: a build calibrated on real frames is accepted, one
calibrated on blank frames is rejected, and the operator never selects a rejected one.

YOLOv8n (AGPL test data) is calibrated by ``model_catalog.tools.int8`` on coco128 images
0-63 and measured with its FP32 parent on the held-out images 64-127 through the worker's
detector path (COCO mAP50-95). ``benchmarks/results/int8_detectors.md`` has the full table,
YOLOX-nano included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kubevision.api.modelvariant import ModelVariantSpec
from kubevision.api.pipeline import ModelRef
from kubevision.operator.selection import Variant, choose_variant
from model_catalog.tools.int8 import GateResult, gate, image_frames, manifest_block, quantize
from tests.assets import require
from tests.envtest.nodes import CPU_NODE
from tests.unit.factories import node

PARENT = "models/yolov8n_agpl/yolov8n_416_fp32.onnx"
IMAGES = "coco128/images/val2017"
LABELS = "coco128/object_detection/labels/val2017"
CALIBRATION = 64


@pytest.fixture(scope="module")
def held_out() -> list[Path]:
    return sorted(require(IMAGES).glob("*.jpg"))[CALIBRATION:]


def build_and_gate(
    tmp: Path, frames: list[np.ndarray], held_out: list[Path], budget: float = 1.0
) -> GateResult:
    parent = require(PARENT)
    out = tmp / "yolov8n_416_int8.onnx"
    quantize(parent, out, frames, "yolov8", 416)
    return gate(parent, out, "yolov8", 416, held_out, require(LABELS), "coco128 64-127", budget)


def gated_variant(name: str, result: GateResult) -> Variant:
    """The INT8 ModelVariant with the block the tool prints, as a user would apply it."""
    block = manifest_block(result, "yolov8n-416-onnx-fp32").splitlines()
    gate_fields = dict(line.strip().split(": ", 1) for line in block[1:])
    spec = {
        "family": "yolov8n",
        "task": "detect",
        "format": "onnx",
        "precision": "int8",
        "decoder": "yolov8",
        "inputSize": {"width": 416, "height": 416},
        "artifact": {"uri": "file:///models/yolov8n_416_int8.onnx", "sha256": "a" * 64},
        "hardware": [{"accelerator": "cpu", "expectedFps": 100, "p99LatencyMs": 20}],
        "accuracy": {"metric": "mAP50-95", "value": result.value, "dataset": "coco128"},
        "accuracyGate": {k: v.strip('"') for k, v in gate_fields.items()},
    }
    return Variant(name, ModelVariantSpec.model_validate(spec))


def test_real_calibration_is_accepted_and_blank_frames_are_rejected(
    tmp_path: Path, held_out: list[Path]
) -> None:
    good = build_and_gate(tmp_path, image_frames(require(IMAGES), CALIBRATION), held_out)
    assert good.accepted, f"coco128-calibrated INT8 lost {good.loss_points} points: {good}"
    assert good.parent_value > 0.3  # real weights, real accuracy

    blank_frames = [np.full((480, 640, 3), 114, np.uint8)] * 8
    blank = build_and_gate(tmp_path, blank_frames, held_out)
    assert not blank.accepted, f"blank-calibrated INT8 passed the gate: {blank}"
    assert blank.loss_points > 1.0

    # what the operator does with them: the rejected build is never selected, even when it
    # is the only detector of the family or promises more throughput
    variants = [gated_variant("int8-good", good), gated_variant("int8-blank", blank)]
    assert [v.spec.accepted() for v in variants] == [True, False]
    ref = ModelRef(family="yolov8n")
    nodes = [node(CPU_NODE)]
    chosen = choose_variant(ref, "detect", "cpu", nodes, variants)
    assert chosen is not None
    assert chosen.variant.name == "int8-good"
    assert choose_variant(ref, "detect", "cpu", nodes, variants[1:]) is None


def test_a_tighter_budget_rejects_the_same_build(tmp_path: Path, held_out: list[Path]) -> None:
    """The budget is the user's: a loss within 1 point can still exceed a budget of 0."""
    frames = image_frames(require(IMAGES), 16)  # fewer frames: a measurable loss
    result = build_and_gate(tmp_path, frames, held_out, budget=0.0)
    assert result.loss_points > 0
    assert not result.accepted
