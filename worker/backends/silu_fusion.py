"""Fuse ``x * sigmoid(x)`` in a converted ONNX model into one SiLU.

ONNX before opset 22 has no SiLU, so exporters write YOLOX's and YOLOv8's activation as a
Sigmoid and a Mul, which onnx2torch converts to two modules: two kernels, each reading and
writing the whole feature map. ``torch.nn.functional.silu`` computes the same function in one
(on the H100 the pair was an eighth of a density trial's kernel time,
``benchmarks/results/gpu_kernels_h100.md``). Works on the ``torch.fx.GraphModule`` onnx2torch
returns; any other module is left as it is.
"""

from __future__ import annotations

import torch
from torch import fx, nn


def _is_module(graph_module: fx.GraphModule, node: fx.Node, kind: type[nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(
        graph_module.get_submodule(str(node.target)), kind
    )


def _is_mul(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """A plain elementwise product (onnx2torch's Mul without old-style broadcasting)."""
    if node.op != "call_module":
        return False
    module = graph_module.get_submodule(str(node.target))
    return (
        getattr(module, "math_op_function", None) is torch.mul
        and getattr(module, "broadcast", None) != 1
    )


def fuse_silu(module: nn.Module) -> int:
    """Replace each ``mul(x, sigmoid(x))`` (either order) whose sigmoid has no other user;
    returns how many."""
    if not isinstance(module, fx.GraphModule):
        return 0
    fused = 0
    for sigmoid in list(module.graph.nodes):
        if not _is_module(module, sigmoid, nn.Sigmoid) or len(sigmoid.users) != 1:
            continue
        (mul,) = sigmoid.users
        x = sigmoid.args[0]
        if not _is_mul(module, mul) or set(mul.args) != {x, sigmoid} or len(mul.args) != 2:
            continue
        with module.graph.inserting_before(mul):
            silu = module.graph.call_function(nn.functional.silu, (x,))
        mul.replace_all_uses_with(silu)
        module.graph.erase_node(mul)
        module.graph.erase_node(sigmoid)
        fused += 1
    if fused:
        module.graph.lint()
        module.delete_all_unused_submodules()
        module.recompile()
    return fused
