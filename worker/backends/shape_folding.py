"""Fold ``x.view(x.size(0), -1)``-style reshapes of an ONNX graph into constant targets.

Exporters write a flatten by batch as ``Shape -> Gather(0) -> Unsqueeze -> Concat(.., [-1])
-> Reshape``. Converted to torch (onnx2torch), that chain builds a tensor on the GPU from the
input's shape and reads it back on every call: a host/device round trip per call, and a model
that cannot be captured as a CUDA graph (the copy is illegal during capture). ONNX's Reshape
already says "keep this dimension" with a 0 in its target, so when every computed part of the
target is a dimension copied from the same position, the target is a constant
(``[0, -1]``) and the chain is dead code.

A part is folded only when shape inference proves that the dimension read by ``Shape`` is the
Reshape input's own dimension at that position (same symbolic name or same size); anything
else is left as it was.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class _Graph:
    """Lookups over one graph: producers, constants and inferred dimensions."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.dims: dict[str, list[str | int]] = {}
        for info in [*inferred.value_info, *inferred.input, *inferred.output]:
            if info.type.tensor_type.HasField("shape"):
                self.dims[info.name] = [
                    d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim
                ]

    def op(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def same_dim(self, a: str, b: str, index: int) -> bool:
        """Whether tensors ``a`` and ``b`` provably have the same size along ``index``."""
        dims_a, dims_b = self.dims.get(a, []), self.dims.get(b, [])
        if index >= min(len(dims_a), len(dims_b)):
            return False
        dim = dims_a[index]
        return dim not in ("", 0) and dim == dims_b[index]

    def copied_dim(self, part: str) -> tuple[str, int] | None:
        """(source tensor, dim index) when ``part`` is one dimension of ``Shape(source)``."""
        gather = self.op(part, "Gather")
        if gather is None:
            unsqueeze = self.op(part, "Unsqueeze")
            if unsqueeze is None or _unsqueeze_axes(unsqueeze, self.constants) != [0]:
                return None
            gather = self.op(unsqueeze.input[0], "Gather")
            # unsqueezed, the gathered dimension must be a scalar (a 0-d index)
            if gather is None or self.constants.get(gather.input[1], np.empty(2)).ndim != 0:
                return None
        shape = self.op(gather.input[0], "Shape")
        index = self.constants.get(gather.input[1])
        if shape is None or index is None or index.size != 1 or _attr(gather, "axis", 0) != 0:
            return None
        if _attr(shape, "start", 0) != 0:
            return None
        return shape.input[0], int(index.ravel()[0])


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _unsqueeze_axes(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[int] | None:
    """Axes from the attribute (opset < 13) or the constant second input (opset >= 13)."""
    if len(node.input) > 1:
        axes = constants.get(node.input[1])
        return None if axes is None else [int(a) for a in axes.ravel()]
    value = _attr(node, "axes", None)
    return None if value is None else [int(a) for a in value]  # type: ignore[attr-defined]


def _constant_target(graph: _Graph, reshape: onnx.NodeProto) -> np.ndarray | None:
    """The reshape's target as constants, 0 marking each dimension copied in place."""
    concat = graph.op(reshape.input[1], "Concat")
    if concat is None or _attr(concat, "axis", 0) != 0 or _attr(reshape, "allowzero", 0):
        return None
    target: list[int] = []
    for part in concat.input:
        if part in graph.constants:
            target.extend(int(v) for v in graph.constants[part].ravel())
            continue
        copied = graph.copied_dim(part)
        if copied is None:
            return None
        source, index = copied
        if index != len(target) or not graph.same_dim(source, reshape.input[0], index):
            return None
        target.append(0)
    return np.asarray(target, np.int64)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads any more (the folded shape chains)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not read & set(n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    unused = [i for i in graph.initializer if i.name not in read]
    for initializer in unused:
        graph.initializer.remove(initializer)


def fold_batch_reshapes(model: onnx.ModelProto) -> int:
    """Give every foldable Reshape a constant target, in place; returns how many were folded."""
    graph = _Graph(model)
    folded = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        target = _constant_target(graph, node)
        if target is None:
            continue
        name = f"{node.output[0]}_folded_shape"
        model.graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
        folded += 1
    if folded:
        _prune(model.graph)
    return folded
