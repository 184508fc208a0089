"""Split square stride-1 max pools of an ONNX graph into a row pool and a column pool.

YOLOX's SPP block max-pools one feature map with 5x5, 9x9 and 13x13 windows. The maximum over
a k x k window is the maximum over k rows of the maximum over k columns, so a (1, k) pool
followed by a (k, 1) pool gives the same values (both pad with -inf) for 2k reads per output
instead of k^2: on the H100, torch's channels-last half-precision max pool was a tenth of a
density trial's kernel time (``benchmarks/results/gpu_kernels_h100.md``), the three pools
reading 275 inputs per output where 54 suffice.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _square_window(node: onnx.NodeProto) -> int | None:
    """k when ``node`` is a 2-D k x k max pool, stride 1, padded k // 2 on every side (the
    output has the input's size), one output, no dilation; else None."""
    if node.op_type != "MaxPool" or len(node.output) != 1:
        return None
    attrs = _attributes(node)
    kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] % 2 == 0 or kernel[0] < 3:
        return None
    k = int(kernel[0])
    if list(attrs.get("strides", [1, 1])) != [1, 1]:
        return None
    if list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return None
    if list(attrs.get("pads", [])) != [k // 2] * 4:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    if attrs.get("ceil_mode", 0) or attrs.get("storage_order", 0):
        return None
    return k


def separate_max_pools(model: onnx.ModelProto) -> int:
    """Rewrite every square stride-1 max pool of ``model`` in place; returns how many."""
    graph = model.graph
    rewritten: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        k = _square_window(node)
        if k is None:
            rewritten.append(node)
            continue
        pad, rows = k // 2, f"{node.output[0]}__rows"
        name = node.name or node.output[0]
        rewritten += [
            helper.make_node(
                "MaxPool", [node.input[0]], [rows], name=f"{name}__rows",
                kernel_shape=[1, k], pads=[0, pad, 0, pad], strides=[1, 1],
            ),
            helper.make_node(
                "MaxPool", [rows], [node.output[0]], name=f"{name}__columns",
                kernel_shape=[k, 1], pads=[pad, 0, pad, 0], strides=[1, 1],
            ),
        ]  # fmt: skip
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(rewritten)
    return count
