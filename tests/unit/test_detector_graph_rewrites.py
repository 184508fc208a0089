"""The detector graph rewrites TorchBackend makes: square stride-1 max pools split into row
and column pools (the same values on a pool alone, with negative inputs at the border where
padding shows, and on the catalog's YOLOX-nano; pools of other shapes left alone), and
sigmoid-multiply pairs fused into SiLU (the same outputs as ONNX Runtime)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper
from onnx2torch import convert
from torch import nn

from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.backends.separable_pooling import separate_max_pools
from kubevision.worker.backends.silu_fusion import fuse_silu
from tests.assets import require


def _run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, inputs)]


def _pool_model(**attrs: Any) -> onnx.ModelProto:
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 17, 23])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("k", [3, 5, 9, 13])
def test_split_pool_gives_the_same_values(k: int) -> None:
    model = _pool_model(kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1])
    x = {"x": -np.random.default_rng(k).random((1, 4, 17, 23), dtype=np.float32)}
    expected = _run(model, x)[0]
    assert separate_max_pools(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MaxPool", "MaxPool"]
    np.testing.assert_array_equal(_run(model, x)[0], expected)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},  # a downsampling pool
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
        {"kernel_shape": [3, 5], "pads": [1, 2, 1, 2]},  # not square
        {"kernel_shape": [5, 5], "pads": [0, 0, 0, 0]},  # shrinks the map
        {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "ceil_mode": 1},
    ],
)
def test_other_pools_are_left_alone(attrs: dict[str, Any]) -> None:
    model = _pool_model(**attrs)
    before = model.SerializeToString()
    assert separate_max_pools(model) == 0
    assert model.SerializeToString() == before


def test_yolox_answers_as_before() -> None:
    model = onnx.load(str(require("models/yolox_nano_416.onnx")))
    x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32) * 255
    name = model.graph.input[0].name
    expected = _run(model, {name: x})
    assert separate_max_pools(model) == 3  # the SPP block's 5x5, 9x9 and 13x13
    for got, want in zip(_run(model, {name: x}), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_yolox_silu_pairs_fuse_and_the_model_answers_as_onnx_runtime() -> None:
    """onnx2torch's Sigmoid + Mul pairs become one SiLU each (the head's lone sigmoids stay),
    and the converted model still gives ONNX Runtime's outputs."""
    path = require("models/yolox_nano_416.onnx")
    module = convert(onnx.load(str(path)))
    sigmoids = sum(isinstance(m, nn.Sigmoid) for m in module.modules())
    fused = fuse_silu(module)
    assert fused > 100
    assert sum(isinstance(m, nn.Sigmoid) for m in module.modules()) == sigmoids - fused
    backend = TorchBackend.from_onnx(path, device="cpu", max_batch=1, cuda_graphs=False)
    x = np.random.default_rng(1).random((1, 3, 416, 416), dtype=np.float32) * 255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(backend.infer(x)[0], want, atol=1e-4, rtol=1e-4)
