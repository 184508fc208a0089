"""Export a YOLOv8-class detector with RANDOM weights to ONNX, for the density benchmark's
"where the GPU becomes the bound" row: the worker loads it like any variant's artifact.

The architecture is :mod:`benchmarks.gpu.yolov8_arch` (speed only: the weights are random,
so it never stands for accuracy). Dynamic batch, fixed square input, output ``(B, 84, A)``
as :func:`kubevision.worker.decoders.decode_yolov8` reads it.

    python -m benchmarks.gpu.export_yolov8 --scale s --size 640 OUT.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.gpu.yolov8_arch import SCALES, build


def export(scale: str, size: int, out: Path) -> Path:
    """Write the ONNX file (opset 17, batch dimension ``batch``) and return its path."""
    model = build(scale)
    example = torch.zeros(1, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (example,), str(out), input_names=["images"], output_names=["output"],
        dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    _inline_shared_initializers(out)
    return out


def _inline_shared_initializers(path: Path) -> None:
    """Give every ``Identity(initializer)`` node its own initializer. With random weights the
    folded BatchNorm biases are all equal, the exporter shares one tensor through Identity
    nodes, and onnx2torch (the worker's GPU path) wants each Conv's bias as an initializer."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in tensors]:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensors[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="s")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(export(args.scale, args.size, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
