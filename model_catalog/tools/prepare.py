"""Prepare catalog models: make batch and input size dynamic, quantize to INT8 with
calibration, and turn an INT8 model back into a float one for GPUs.

    python -m model_catalog.tools.prepare dynamic  MODEL.onnx OUT.onnx
    python -m model_catalog.tools.prepare float    INT8_MODEL.onnx OUT.onnx
    python -m model_catalog.tools.prepare int8     MODEL.onnx OUT.onnx --decoder yolox \
        --size 416 --calibration ../shared/assets/coco128/images/val2017 --samples 64

``dynamic``: exporters often bake batch 1 into the graph (YOLOX-nano's Reshape nodes target
``[1, 85, -1]``, so a batch of 2 silently mixes the images' anchors). The input and output
get symbolic batch/height/width and every Reshape whose target starts with a literal 1 keeps
the input's batch instead (ONNX Reshape's 0 = "copy this dimension").

``int8``: static QDQ quantization with ONNX Runtime, calibrated on real images preprocessed
exactly as the worker does (letterbox, colour order, normalisation of the decoder's family).
The calibration set, method and sample count are printed so the ModelVariant can record them
(INT8 variants must name their calibration).

``float``: an ONNX Runtime QOperator INT8 model (QLinearConv, ...) as standard float operators
with its dequantized weights (:mod:`model_catalog.tools.dequantize`), so the worker's torch
backend can run it in FP16 on a GPU (e.g. the INT8-only MobileNetV2 classifier).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper, version_converter
from onnxruntime.quantization import (  # type: ignore[import-untyped]
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from kubevision.worker.decoders import decoder_for
from kubevision.worker.preprocess import preprocess
from model_catalog.tools.dequantize import dequantize

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


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


def _read(path: Path) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"cannot read calibration image {path}")
    return image.astype(np.uint8, copy=False)


class _ImageReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration images through the worker's own preprocessing, one per batch."""

    def __init__(self, input_name: str, images: list[Path], decoder: str, size: int) -> None:
        fmt = decoder_for(decoder).input_format
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: preprocess([_read(p)], size, size, fmt)[0]} for p in images
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


_QDQ_OPSET = 13


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def quantize_int8(
    source: Path, out: Path, decoder: str, size: int, calibration: Path, samples: int, method: str
) -> None:
    images = sorted(calibration.glob("*.jpg"))[:samples]
    if not images:
        raise SystemExit(f"no .jpg calibration images in {calibration}")
    model = onnx.load(str(source))
    if _opset(model) < _QDQ_OPSET:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
        model = version_converter.convert_version(model, _QDQ_OPSET)
    upgraded = out.with_suffix(".fp32-opset13.onnx")
    onnx.save(model, str(upgraded))
    quantize_static(
        str(upgraded),
        str(out),
        _ImageReader(model.graph.input[0].name, images, decoder, size),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=_METHODS[method],
    )
    upgraded.unlink()
    print(
        f"calibration: datasetUri=file://{calibration.resolve()} method={method} "
        f"samples={len(images)}"
    )


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
    q = sub.add_parser("int8", help="static INT8 (QDQ) calibrated on images")
    q.add_argument("model", type=Path)
    q.add_argument("out", type=Path)
    q.add_argument("--decoder", required=True, choices=["yolox", "yolov8", "nanodet"])
    q.add_argument("--size", type=int, required=True, help="square input size, e.g. 416")
    q.add_argument("--calibration", type=Path, required=True, help="folder of .jpg images")
    q.add_argument("--samples", type=int, default=64)
    q.add_argument("--method", choices=sorted(_METHODS), default="minmax")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "dynamic":
        onnx.save(make_dynamic(onnx.load(str(args.model))), str(args.out))
    elif args.command == "float":
        onnx.save(dequantize(onnx.load(str(args.model))), str(args.out))
    else:
        quantize_int8(
            args.model,
            args.out,
            args.decoder,
            args.size,
            args.calibration,
            args.samples,
            args.method,
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
