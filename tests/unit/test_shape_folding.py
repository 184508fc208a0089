"""Flatten-by-batch reshapes folded to constant targets: the model answers exactly as before,
the shape chain is gone (so torch never reads a shape back from the GPU and the model can be
captured as a CUDA graph), and a reshape whose copied dimension cannot be proven is left as is."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper, numpy_helper

from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.backends.shape_folding import fold_batch_reshapes
from model_catalog.tools.dequantize import dequantize
from tests.assets import require


@pytest.fixture(scope="module")
def float_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog's MobileNetV2 as float operators (it flattens with Shape -> ... -> Reshape)."""
    out = tmp_path_factory.mktemp("models") / "mobilenetv2_float.onnx"
    onnx.save(dequantize(onnx.load(str(require("models/mobilenetv2_12_int8.onnx")))), str(out))
    return out


def _run(model: onnx.ModelProto, **inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, inputs)[0])


def _flatten_model(
    *, index: int = 0, shape_of: str = "x", opset: int = 13, second: list[int] | None = None
) -> onnx.ModelProto:
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(shape_of), index)), [-1])), as exporters write
    ``x.view(x.size(0), -1)``; ``y`` is a second input with its own batch size."""
    axes_input = ["axes"] if opset >= 13 else []
    nodes = [
        helper.make_node("Shape", [shape_of], ["shape"]),
        helper.make_node("Gather", ["shape", "index"], ["dim"], axis=0),
        helper.make_node("Unsqueeze", ["dim", *axes_input], ["dim1"]),
        helper.make_node("Concat", ["dim1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("ReduceSum", ["y"], ["y_sum"], keepdims=0),
        helper.make_node("Add", ["flat", "y_sum"], ["out"]),
    ]
    if opset < 13:  # axes an attribute before opset 13, an input since
        nodes[2].attribute.append(helper.make_attribute("axes", [0]))
    initializers = [
        numpy_helper.from_array(np.array(index, np.int64), "index"),
        numpy_helper.from_array(np.array(second or [-1], np.int64), "rest"),
    ]
    if opset >= 13:
        initializers.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    graph = helper.make_graph(
        nodes,
        "flatten",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 24])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what every ONNX Runtime we run reads
    return model


def _inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "x": rng.standard_normal((batch, 2, 3, 4)).astype(np.float32),
        "y": rng.standard_normal((7, 4)).astype(np.float32),
    }


@pytest.mark.parametrize("opset", [12, 13])
def test_a_flatten_by_batch_becomes_a_constant_target_with_the_same_answers(opset: int) -> None:
    model = _flatten_model(opset=opset)
    before = {batch: _run(model, **_inputs(batch)) for batch in (1, 5)}
    assert fold_batch_reshapes(model) == 1
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} == {"Reshape", "ReduceSum", "Add"}
    for batch, expected in before.items():
        np.testing.assert_array_equal(_run(model, **_inputs(batch)), expected)


@pytest.mark.parametrize(
    "unprovable",
    [
        {"index": 1},  # the size of dim 1 placed at position 0: not "keep this dim"
        {"shape_of": "y"},  # another tensor's batch size, unrelated to x's
    ],
)
def test_a_reshape_whose_copied_dimension_is_not_provable_is_left_alone(
    unprovable: dict[str, object],
) -> None:
    model = _flatten_model(**unprovable)  # type: ignore[arg-type]
    before = model.SerializeToString()
    assert fold_batch_reshapes(model) == 0
    assert model.SerializeToString() == before


def test_the_float_classifier_folds_and_converts_without_shape_ops(float_classifier: Path) -> None:
    model = onnx.load(str(float_classifier))
    batch = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    name = model.graph.input[0].name
    expected = _run(model, **{name: batch})
    assert fold_batch_reshapes(model) == 1
    assert not {"Shape", "Gather", "Concat"} & {n.op_type for n in model.graph.node}
    np.testing.assert_array_equal(_run(model, **{name: batch}), expected)
    backend = TorchBackend.from_onnx(
        float_classifier, input_shape=(3, 224, 224), device="cpu", precision="fp32", max_batch=4
    )
    modules = Counter(type(m).__name__ for m in backend._module.modules())
    assert modules["OnnxShape"] == 0
    (ours,) = backend.infer(batch)
    assert np.abs(ours - expected).max() <= 1e-3 * np.abs(expected).max()
