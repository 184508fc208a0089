"""Turn an ONNX Runtime QOperator INT8 model (QLinearConv, QLinearAdd, QLinearMatMul, ...) back
into a float graph.

Why: a GPU runtime that cannot execute integer operators (onnx2torch, hence the worker's torch
backend) can still run the model's quantized weights in FP16 on the GPU, batched with the
detector, instead of sending every crop to ONNX Runtime on the CPU. Weights come back exactly
(``(q - zero_point) * scale``, per output channel); every quantized activation's saturation
range becomes a Clip, which is where a QOperator graph keeps its fused ReLU/ReLU6. What differs
from the INT8 model is activation rounding only (each layer matches it within half a
quantization step given the same input; on COCO128 images the INT8 top-1 is in this model's
top-5 for 99 % of them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

FloatArray = npt.NDArray[np.float32]


class _Rewriter:
    """Walks the nodes in order, mapping each quantized tensor to its float replacement."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.float_of: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, FloatArray] = {}

    def tensor(self, name: str) -> str:
        return self.float_of.get(name, name)

    def constant(self, name: str, value: FloatArray | np.floating) -> str:
        self.initializers[name] = np.asarray(value, np.float32)
        return name

    def dequantized(self, q: str, scale: str, zero_point: str, axis: int = 0) -> FloatArray:
        """An initializer's float value; per-channel scales apply along ``axis``."""
        values = self.arrays[q].astype(np.float32)
        shape = [1] * values.ndim
        scales, zeros = self.arrays[scale], self.arrays[zero_point].astype(np.float32)
        if scales.ndim == 1 and values.ndim > 1:
            shape[axis] = -1
            scales, zeros = scales.reshape(shape), zeros.reshape(shape)
        return np.asarray((values - zeros) * scales, np.float32)

    def saturate(self, raw: str, out: str, scale: str, zero_point: str) -> None:
        """Clip ``raw`` to the range the quantized ``out`` could hold (its fused activation)."""
        zero = self.arrays[zero_point]
        info = np.iinfo(zero.dtype)
        step, offset = float(self.arrays[scale]), float(zero)
        low = self.constant(f"{out}_min", np.float32((info.min - offset) * step))
        high = self.constant(f"{out}_max", np.float32((info.max - offset) * step))
        name = f"{out}_float"
        self.nodes.append(helper.make_node("Clip", [raw, low, high], [name]))
        self.float_of[out] = name


def _conv(r: _Rewriter, node: onnx.NodeProto) -> None:
    x, x_scale, _, w, w_scale, w_zero, y_scale, y_zero, *bias = node.input
    (out,) = node.output
    inputs = [r.tensor(x), r.constant(f"{out}_weight", r.dequantized(w, w_scale, w_zero))]
    if bias:  # int32 in units of input scale x weight scale (per output channel)
        b = r.arrays[bias[0]] * r.arrays[x_scale] * r.arrays[w_scale]
        inputs.append(r.constant(f"{out}_bias", b))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    r.nodes.append(helper.make_node("Conv", inputs, [f"{out}_raw"], **attrs))
    r.saturate(f"{out}_raw", out, y_scale, y_zero)


def _add(r: _Rewriter, node: onnx.NodeProto) -> None:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.input
    (out,) = node.output
    inputs = [_operand(r, a, a_scale, a_zero, out, "a"), _operand(r, b, b_scale, b_zero, out, "b")]
    r.nodes.append(helper.make_node("Add", inputs, [f"{out}_raw"]))
    r.saturate(f"{out}_raw", out, y_scale, y_zero)


def _matmul(r: _Rewriter, node: onnx.NodeProto) -> None:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.input
    (out,) = node.output
    # a weight matrix (K, N) has one scale per output column
    weight = (
        r.constant(f"{out}_b", r.dequantized(b, b_scale, b_zero, axis=1))
        if b in r.arrays
        else r.tensor(b)
    )
    inputs = [_operand(r, a, a_scale, a_zero, out, "a"), weight]
    r.nodes.append(helper.make_node("MatMul", inputs, [f"{out}_raw"]))
    r.saturate(f"{out}_raw", out, y_scale, y_zero)


def _pool(r: _Rewriter, node: onnx.NodeProto) -> None:
    x, _, _, y_scale, y_zero = node.input
    (out,) = node.output
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("channels_last", 0):
        raise NotImplementedError("QLinearGlobalAveragePool with channels_last=1")
    r.nodes.append(helper.make_node("GlobalAveragePool", [r.tensor(x)], [f"{out}_raw"]))
    r.saturate(f"{out}_raw", out, y_scale, y_zero)


def _operand(r: _Rewriter, name: str, scale: str, zero: str, out: str, which: str) -> str:
    """A float input: a dequantized initializer (e.g. a bias) or an activation's float tensor."""
    if name in r.arrays:
        return r.constant(f"{out}_{which}", r.dequantized(name, scale, zero))
    return r.tensor(name)


def _quantize(r: _Rewriter, node: onnx.NodeProto) -> None:
    r.float_of[node.output[0]] = r.tensor(node.input[0])


def _dequantize(r: _Rewriter, node: onnx.NodeProto) -> None:
    r.nodes.append(helper.make_node("Identity", [r.tensor(node.input[0])], list(node.output)))


_REWRITES: dict[str, Callable[[_Rewriter, onnx.NodeProto], None]] = {
    "QLinearConv": _conv,
    "QLinearAdd": _add,
    "QLinearMatMul": _matmul,
    "QLinearGlobalAveragePool": _pool,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}


def dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float equivalent of a QOperator INT8 model (standard ONNX operators only)."""
    r = _Rewriter(model)
    for node in model.graph.node:
        rewrite = _REWRITES.get(node.op_type)
        if rewrite is not None:
            rewrite(r, node)
            continue
        if node.domain not in ("", "ai.onnx"):
            raise NotImplementedError(f"cannot dequantize {node.domain}::{node.op_type}")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.ClearField("input")
        copy.input.extend(r.tensor(i) for i in node.input)
        r.nodes.append(copy)
    used = {i for n in r.nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used and i.name not in r.initializers]
    initializers = kept + [
        numpy_helper.from_array(v, name) for name, v in r.initializers.items() if name in used
    ]
    graph = helper.make_graph(
        r.nodes,
        model.graph.name,
        list(model.graph.input),
        list(model.graph.output),
        initializers,
    )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    result = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    result.ir_version = model.ir_version
    onnx.checker.check_model(result)
    return result
