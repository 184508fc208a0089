"""INT8 builds of catalog detectors, calibrated on real frames and accepted only when their
accuracy holds against the FP32 parent.

    # calibrate on coco128 (first N images) or on frames sampled from a camera's recording/URL
    python -m model_catalog.tools.int8 calibrate yolox_nano_416.onnx yolox_nano_416_int8.onnx \
        --decoder yolox --size 416 --images ../shared/assets/coco128/images/val2017 --samples 64
    python -m model_catalog.tools.int8 calibrate ... --video rtsp://cam/stream --samples 64
    # the gate: mAP50-95 of both on a held-out set (images the calibration did not see)
    python -m model_catalog.tools.int8 gate yolox_nano_416.onnx yolox_nano_416_int8.onnx \
        --decoder yolox --size 416 --images .../val2017 --labels .../labels/val2017 \
        --skip 64 --budget 1.0

``calibrate`` writes a static QDQ model with ONNX Runtime (per-channel INT8 weights, UINT8
activations, the calibration method's ranges) from frames preprocessed exactly as the worker
does. Weights use 7 of their 8 bits (ONNX Runtime's ``reduce_range``): on x86 CPUs without
VNNI (AVX2-only, e.g. many AMD EPYC and older Xeon hosts) ONNX Runtime's U8S8 kernels add
products in saturating 16-bit sums (VPMADDUBSW), and full-range weights overflow them: the
same YOLOv8n build lost 0.08 mAP50-95 points on an Intel Xeon whose INT8 kernels are exact
and 1.55 on an AVX2-only AMD EPYC (0.22 with 7-bit weights).
7-bit weights cannot overflow, so one artifact keeps its gated accuracy on every CPU.
The detection head (the prediction convolutions and everything after them: sigmoids,
box/score concatenation, reshapes) stays in FP32: YOLO exports put box offsets and
probabilities in one output tensor, and one UINT8 scale for both rounds scores to ~0.05
steps, which costs most of the mAP. Where ``tensorrt`` imports and a GPU is present,
``--tensorrt`` also runs TensorRT's entropy calibration and keeps its calibration cache beside
the model (``.calib``, what the worker's TensorRT backend reads).

``gate`` runs parent and INT8 build through the worker's detector path
(:mod:`.coco_eval`) and prints the ModelVariant's ``spec.accuracyGate`` block. A build that
loses more than its budget (mAP50-95 points, default 1.0) is not accepted: the operator never
selects it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import onnx
from onnx import version_converter
from onnxruntime.quantization import (  # type: ignore[import-untyped]
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from kubevision.worker.decoders import decoder_for
from kubevision.worker.preprocess import preprocess
from model_catalog.tools.coco_eval import evaluate_onnx, load_labelled, read_frame

Frame = npt.NDArray[np.uint8]
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_BUDGET_POINTS = 1.0
_QDQ_OPSET = 13


# -- calibration frames ------------------------------------------------------------------------


def image_frames(folder: Path, samples: int, skip: int = 0) -> list[Frame]:
    """The first ``samples`` .jpg images of ``folder`` (sorted) after ``skip``."""
    paths = sorted(folder.glob("*.jpg"))[skip : skip + samples]
    if not paths:
        raise ValueError(f"no .jpg images in {folder} (after skipping {skip})")
    return [read_frame(p) for p in paths]


def video_frames(source: str, samples: int, every: int = 15) -> list[Frame]:
    """``samples`` frames of a camera's recording or live URL, one every ``every`` decoded
    frames (every half second at 30 FPS), so the set spans the scene's changes."""
    frames: list[Frame] = []
    with av.open(source, timeout=10) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:
                frames.append(np.asarray(frame.to_ndarray(format="bgr24"), np.uint8))
            if len(frames) == samples:
                break
    if not frames:
        raise ValueError(f"{source}: no video frames decoded")
    return frames


class _FrameReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds frames through the worker's own preprocessing, one per batch."""

    def __init__(self, input_name: str, frames: Sequence[Frame], decoder: str, size: int):
        fmt = decoder_for(decoder).input_format
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: preprocess([f], size, size, fmt)[0]} for f in frames
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# -- quantization ------------------------------------------------------------------------------


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The detection head's output side: every node between the graph outputs and the last
    convolutions (included), found by walking back from the outputs."""
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    seen: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen[node.name] = node
        if node.op_type != "Conv":
            stack.extend(i for i in node.input if i and i not in initializers)
    return sorted(seen)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node gets a name (quantize_static excludes nodes by name)."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def quantize(
    source: Path,
    out: Path,
    frames: Sequence[Frame],
    decoder: str,
    size: int,
    method: str = "minmax",
    keep_head_fp32: bool = True,
) -> None:
    """Static QDQ INT8 of ``source`` calibrated on ``frames`` (see the module docstring)."""
    model = onnx.load(str(source))
    reader = _FrameReader(model.graph.input[0].name, frames, decoder, size)
    quantize_model(model, out, reader, method, head_nodes if keep_head_fp32 else None)


def quantize_model(
    model: onnx.ModelProto,
    out: Path,
    reader: CalibrationDataReader,
    method: str = "minmax",
    keep_fp32: Callable[[onnx.ModelProto], Sequence[str]] | None = None,
) -> None:
    """Static QDQ INT8 of any model calibrated on ``reader``'s inputs, with the settings the
    module docstring explains (per-channel INT8 weights in 7 bits, UINT8 activations).
    ``keep_fp32`` names the nodes that stay FP32, found on the model as quantized (every node
    named, opset 13 or later)."""
    model = _named(model)
    if _opset(model) < _QDQ_OPSET:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
        model = version_converter.convert_version(model, _QDQ_OPSET)
    upgraded = out.with_suffix(".fp32-prepared.onnx")
    onnx.save(model, str(upgraded))
    try:
        quantize_static(
            str(upgraded),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # no 16-bit overflow on CPUs without VNNI (module docstring)
            calibrate_method=METHODS[method],
            nodes_to_exclude=list(keep_fp32(model)) if keep_fp32 else [],
        )
    finally:
        upgraded.unlink(missing_ok=True)


def tensorrt_calibration(
    source: Path, frames: Sequence[Frame], decoder: str, size: int
) -> Path | None:
    """TensorRT entropy calibration of ``source``; its cache lands beside it (``.calib``).
    None (and a note) where TensorRT or a GPU is missing."""
    try:
        import tensorrt  # type: ignore[import-not-found, import-untyped, unused-ignore] # noqa: F401
        import torch
    except ImportError:
        print("tensorrt is not installed here: no TensorRT calibration cache", file=sys.stderr)
        return None
    if not torch.cuda.is_available():
        print("no CUDA GPU here: no TensorRT calibration cache", file=sys.stderr)
        return None
    from kubevision.api.modelvariant import InputSize
    from kubevision.worker.backends.tensorrt import (
        CALIBRATION_SUFFIX,
        Int8Calibration,
        TensorRTBackend,
    )

    fmt = decoder_for(decoder).input_format
    cache = source.with_suffix(CALIBRATION_SUFFIX)
    batches = [preprocess([f], size, size, fmt)[0] for f in frames]
    TensorRTBackend(
        source,
        input_size=InputSize(width=size, height=size),
        precision="int8",
        calibration=Int8Calibration(cache=cache, batches=lambda: iter(batches), batch_size=1),
    )
    return cache


# -- the gate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """What ``spec.accuracyGate`` of the INT8 ModelVariant records."""

    metric: str
    parent_value: float
    value: float
    budget_points: float
    dataset: str
    accepted: bool

    @property
    def loss_points(self) -> float:
        return round((self.parent_value - self.value) * 100, 2)


def accepted(parent_value: float, value: float, budget_points: float) -> bool:
    """Within budget: the INT8 build loses at most ``budget_points`` mAP points."""
    return (parent_value - value) * 100 <= budget_points + 1e-9


def gate(
    parent: Path,
    candidate: Path,
    decoder: str,
    size: int,
    images: Sequence[Path],
    labels: Path,
    dataset: str,
    budget_points: float = DEFAULT_BUDGET_POINTS,
    threads: int | None = None,
) -> GateResult:
    """mAP50-95 of parent and candidate on the same held-out images, and the verdict."""
    data = load_labelled(images, labels)
    parent_map, _ = evaluate_onnx(parent, decoder, size, data, threads)
    candidate_map, _ = evaluate_onnx(candidate, decoder, size, data, threads)
    return GateResult(
        metric="mAP50-95",
        parent_value=round(parent_map, 4),
        value=round(candidate_map, 4),
        budget_points=budget_points,
        dataset=dataset,
        accepted=accepted(parent_map, candidate_map, budget_points),
    )


def manifest_block(result: GateResult, parent_variant: str) -> str:
    """The ``accuracyGate:`` block for the INT8 ModelVariant."""
    return (
        "accuracyGate:\n"
        f"  parent: {parent_variant}\n"
        f"  metric: {result.metric}\n"
        f"  parentValue: {result.parent_value}\n"
        f"  value: {result.value}\n"
        f"  budgetPoints: {result.budget_points}\n"
        f'  dataset: "{result.dataset}"'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_catalog.tools.int8", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="static INT8 (QDQ) calibrated on real frames")
    cal.add_argument("model", type=Path)
    cal.add_argument("out", type=Path)
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of .jpg images (e.g. coco128)")
    source.add_argument("--video", help="a camera's recording or stream URL to sample")
    cal.add_argument("--samples", type=int, default=64)
    cal.add_argument("--method", choices=sorted(METHODS), default="minmax")
    cal.add_argument("--tensorrt", action="store_true", help="also a TensorRT calibration cache")
    g = sub.add_parser("gate", help="mAP of parent and INT8 build on held-out images")
    g.add_argument("parent", type=Path)
    g.add_argument("candidate", type=Path)
    g.add_argument("--images", type=Path, required=True)
    g.add_argument("--labels", type=Path, required=True)
    g.add_argument("--skip", type=int, default=0, help="images the calibration used (first N)")
    g.add_argument("--budget", type=float, default=DEFAULT_BUDGET_POINTS, help="mAP points")
    g.add_argument("--parent-variant", default="PARENT", help="the FP32 ModelVariant's name")
    for p in (cal, g):
        p.add_argument("--decoder", required=True, choices=["yolox", "yolov8", "nanodet"])
        p.add_argument("--size", type=int, required=True, help="square input size, e.g. 416")
    args = parser.parse_args(argv)
    if args.command == "calibrate":
        frames = (
            image_frames(args.images, args.samples)
            if args.images
            else video_frames(args.video, args.samples)
        )
        start = time.perf_counter()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        quantize(args.model, args.out, frames, args.decoder, args.size, args.method)
        where = args.images.resolve().as_uri() if args.images else args.video
        print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
        print(f"calibration: datasetUri={where} method={args.method} samples={len(frames)}")
        if args.tensorrt and (cache := tensorrt_calibration(args.model, frames, args.decoder,
                                                             args.size)):  # fmt: skip
            print(f"TensorRT calibration cache: {cache}")
        return 0
    images = sorted(args.images.glob("*.jpg"))[args.skip :]
    result = gate(
        args.parent,
        args.candidate,
        args.decoder,
        args.size,
        images,
        args.labels,
        f"{args.images.name} images {args.skip}-{args.skip + len(images) - 1} (held out)",
        args.budget,
    )
    print(json.dumps({**asdict(result), "lossPoints": result.loss_points}))
    print(manifest_block(result, args.parent_variant))
    return 0 if result.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
