"""Prepare catalog models: make batch and input size dynamic, and turn an INT8 model back
into a float one for GPUs (INT8 builds come from :mod:`model_catalog.tools.int8`, which
calibrates them and gates their accuracy).

    python -m model_catalog.tools.prepare dynamic  MODEL.onnx OUT.onnx
    python -m model_catalog.tools.prepare float    INT8_MODEL.onnx OUT.onnx

``dynamic``: exporters often bake batch 1 into the graph (YOLOX-nano's Reshape nodes target
``[1, 85, -1]``, so a batch of 2 silently mixes the images' anchors). The input and output
get symbolic batch/height/width and every Reshape whose target starts with a literal 1 keeps
the input's batch instead (ONNX Reshape's 0 = "copy this dimension").

``float``: an ONNX Runtime QOperator INT8 model (QLinearConv, ...) as standard float operators
with its dequantized weights (:mod:`model_catalog.tools.dequantize`), so the worker's torch
backend can run it in FP16 on a GPU (e.g. the INT8-only MobileNetV2 classifier).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
from onnx import numpy_helper

from model_catalog.tools.dequantize import dequantize


def make_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic batch (and, for 4-D inputs, height/width); batch-preserving Reshapes."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        dims[0].dim_param = "batch"
        if len(dims) == 4 and value in model.graph.input:
            dims[2].dim_param, dims[3].dim_param = "height", "width"
        elif value in model.graph.output and len(dims) == 3:
            dims[1].dim_param = "anchors"
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        target = numpy_helper.to_array(initializers[node.input[1]]).copy()
        if target.size and target[0] == 1:
            target[0] = 0
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(target, node.input[1]))
    del model.graph.value_info[:]  # stale fixed shapes; ONNX Runtime re-infers them
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_catalog.tools.prepare", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dyn = sub.add_parser("dynamic", help="symbolic batch/height/width")
    dyn.add_argument("model", type=Path)
    dyn.add_argument("out", type=Path)
    flt = sub.add_parser("float", help="a QOperator INT8 model as float operators")
    flt.add_argument("model", type=Path)
    flt.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "dynamic":
        onnx.save(make_dynamic(onnx.load(str(args.model))), str(args.out))
    else:
        onnx.save(dequantize(onnx.load(str(args.model))), str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
