"""A dynamic-batch export of a batch-1 re-id model, so DeepSORT embeds a frame's crops at once.

    python -m model_catalog.tools.reid_dynamic person_reid_retail_0288.onnx OUT.onnx

``prepare dynamic`` alone is not enough for OpenVINO's TensorFlow-exported
person-reid-retail-0288: its normalisation layers average over axes (0, 1, 2) and
(0, 1, 2, 3), the batch axis included, which is the same thing at batch 1 but mixes the crops'
statistics at batch N (embeddings then depend on the other people in the frame: cosine 0.57 to
the batch-1 result). Here the batch axis is taken out of every ReduceMean, Reshapes keep the
input's batch (``prepare.make_dynamic``), and only the batch dimension becomes symbolic: the
input is NHWC, so the height/width names ``make_dynamic`` gives dims 2 and 3 of NCHW inputs
would be wrong here. The result equals the batch-1 model crop by crop
(``tests/quality/test_tracking_mot.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnx import helper

from model_catalog.tools.prepare import make_dynamic


def batch_safe(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic batch only; ReduceMean never averages over the batch axis."""
    fixed = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in (*model.graph.input, *model.graph.output)
    }
    model = make_dynamic(model)
    for value in (*model.graph.input, *model.graph.output):
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i > 0 and fixed[value.name][i]:
                dim.dim_value = fixed[value.name][i]
    for node in model.graph.node:
        if node.op_type != "ReduceMean":
            continue
        for attr in node.attribute:
            if attr.name == "axes" and 0 in attr.ints:
                axes = [a for a in attr.ints if a != 0]
                attr.CopyFrom(helper.make_attribute("axes", axes))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    onnx.save(batch_safe(onnx.load(str(args.source))), str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
