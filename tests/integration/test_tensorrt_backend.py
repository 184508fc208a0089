"""The native TensorRT backend on a real GPU, compared with ONNX Runtime on the CPU.

Runs only where the ``tensorrt`` package imports and torch sees a CUDA GPU; elsewhere (CI, the
CPU development machines, a GPU host without TensorRT) the module is skipped with the reason,
under CI too: no CI machine has a GPU. The model is YOLOX-nano from the shared assets, made
batch-dynamic the way the catalog's TensorRT variants are
(``python -m model_catalog.tools.prepare dynamic``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import version_converter
from onnxruntime.quantization import (  # type: ignore[import-untyped]
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from kubevision.api.modelvariant import Artifact, BatchProfile, InputSize, Precision
from kubevision.api.worker_config import ModelConfig
from kubevision.worker.backends.base import create_backend
from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.backends.tensorrt import (
    CACHE_DIR_ENV,
    Int8Calibration,
    TensorRTBackend,
)
from kubevision.worker.decoders import decoder_for
from kubevision.worker.detections import Detections, box_iou
from kubevision.worker.detector import Detector
from kubevision.worker.preprocess import Frame, preprocess
from model_catalog.tools.prepare import make_dynamic
from tests import hardware
from tests.assets import require

trt: Any = pytest.importorskip(
    "tensorrt",
    reason=hardware.reason(
        "tensorrt", "TensorRT is not installed (pip install 'kubevision[tensorrt]' on a GPU)"
    ),
)
if not torch.cuda.is_available():
    hardware.skip_without("gpu", "the TensorRT backend needs an NVIDIA GPU", module=True)

SIZE = 416
INPUT = InputSize(width=SIZE, height=SIZE)
PROFILE = BatchProfile(min=1, opt=4, max=8)
CONFIDENCE, NMS_IOU = 0.3, 0.45
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "yolox_nano_416_dynamic.onnx"
    onnx.save(make_dynamic(onnx.load(str(require("models/yolox_nano_416.onnx")))), str(path))
    return path


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """Ten COCO scenes (people, cars, animals), more than the profile's max batch of 8."""
    images = sorted(require("coco128/images/val2017").glob("*.jpg"))[:10]
    return [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8) for p in images]


@pytest.fixture(scope="module")
def tensor(frames: list[Frame]) -> FloatArray:
    batch, _ = preprocess(frames, SIZE, SIZE, decoder_for("yolox").input_format)
    return batch


@pytest.fixture(scope="module")
def reference(dynamic_model: Path) -> OrtBackend:
    return OrtBackend(dynamic_model, max_batch=16)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def fp16(dynamic_model: Path, cache_dir: Path) -> TensorRTBackend:
    return TensorRTBackend(
        dynamic_model, input_size=INPUT, precision="fp16", batch=PROFILE, cache_dir=cache_dir
    )


def model_config(precision: Precision, batch_max: int = PROFILE.max) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "variant": f"yolox-nano-416-trt-{precision}",
            "family": "yolox-nano",
            "task": "detect",
            "format": "tensorrt",
            "precision": precision,
            "input_size": INPUT,
            "decoder": "yolox",
            "batch_max": batch_max,
            "artifact": Artifact(uri="file:///models/yolox_nano_416_dynamic.onnx"),
        }
    )


def mostly_close(got: FloatArray, want: FloatArray, tolerance: float) -> float:
    """Share of the elements within ``tolerance`` (absolute and relative): FP16 keeps 11 bits
    of mantissa, and a few of YOLOX's 1.5M raw outputs per frame sit where that flips them."""
    return float(np.mean(np.abs(got - want) <= tolerance * (1 + np.abs(want))))


def recall(got: list[Detections], want: list[Detections], min_score: float, iou: float) -> float:
    """Share of the reference's confident detections that ``got`` has, same class, overlapping."""
    found = total = 0
    for g, w in zip(got, want, strict=True):
        confident = w[w.scores >= min_score]
        total += len(confident)
        if len(confident) and len(g):
            overlap = box_iou(confident.xyxy, g.xyxy)
            same_class = confident.class_ids[:, None] == g.class_ids[None, :]
            found += int(((overlap >= iou) & same_class).any(axis=1).sum())
    assert total >= 10, "the frames should hold real detections"
    return found / total


def test_fp16_engine_matches_onnxruntime_and_splits_large_batches(
    fp16: TensorRTBackend, reference: OrtBackend, tensor: FloatArray
) -> None:
    assert (fp16.name, fp16.max_batch) == ("tensorrt", PROFILE.max)
    assert list(fp16.input_names) == list(reference.input_names)
    assert list(fp16.output_names) == list(reference.output_names)
    got = fp16.infer(tensor)  # 10 frames: one call of 8, one of 2
    want = reference.infer(tensor)
    for g, w in zip(got, want, strict=True):
        assert (g.dtype, g.shape) == (np.dtype(np.float32), w.shape)
        assert mostly_close(g, w, tolerance=5e-2) >= 0.999


def test_fp16_detections_match_onnxruntime(
    fp16: TensorRTBackend, reference: OrtBackend, frames: list[Frame]
) -> None:
    config = model_config("fp16")
    got = Detector(config, fp16, CONFIDENCE, NMS_IOU)(frames)
    want = Detector(config, reference, CONFIDENCE, NMS_IOU)(frames)
    assert recall(got, want, min_score=0.5, iou=0.9) >= 0.95


def test_a_second_backend_loads_the_cached_engine(
    fp16: TensorRTBackend, dynamic_model: Path, cache_dir: Path, tensor: FloatArray
) -> None:
    again = TensorRTBackend(
        dynamic_model, input_size=INPUT, precision="fp16", batch=PROFILE, cache_dir=cache_dir
    )
    assert fp16.built_engine
    assert not again.built_engine
    assert again.engine_path == fp16.engine_path
    assert again.engine_path.is_file()
    for g, w in zip(again.infer(tensor[:4]), fp16.infer(tensor[:4]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_corrupt_cached_engine_is_rebuilt(
    fp16: TensorRTBackend, dynamic_model: Path, tmp_path: Path, tensor: FloatArray
) -> None:
    broken = tmp_path / fp16.engine_path.name
    broken.write_bytes(fp16.engine_path.read_bytes()[:1000])
    rebuilt = TensorRTBackend(
        dynamic_model, input_size=INPUT, precision="fp16", batch=PROFILE, cache_dir=tmp_path
    )
    assert rebuilt.built_engine
    assert rebuilt.engine_path == broken
    assert broken.stat().st_size > 1000
    np.testing.assert_allclose(rebuilt.infer(tensor[:2])[0], fp16.infer(tensor[:2])[0], atol=0.1)


def test_infer_tensor_stays_on_the_gpu_and_orders_with_the_callers_stream(
    fp16: TensorRTBackend, tensor: FloatArray
) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        batch = torch.from_numpy(tensor[:5]).to(device, non_blocking=True)
        outputs = fp16.infer_tensor(batch)
        doubled = [out * 2 for out in outputs]  # queued on `side` after the inference
    side.synchronize()
    want = fp16.infer(tensor[:5])
    for out, twice, w in zip(outputs, doubled, want, strict=True):
        assert (out.device, out.dtype) == (device, torch.float32)
        np.testing.assert_allclose(twice.cpu().numpy(), 2 * w, rtol=1e-5, atol=1e-5)


def test_a_fixed_batch_model_runs_one_frame_per_call_in_fp32(
    reference: OrtBackend, cache_dir: Path, tensor: FloatArray
) -> None:
    backend = TensorRTBackend(
        require("models/yolox_nano_416.onnx"), input_size=INPUT, batch=PROFILE, cache_dir=cache_dir
    )
    assert backend.max_batch == 1
    for g, w in zip(backend.infer(tensor[:3]), reference.infer(tensor[:3]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-2, atol=1e-2)  # TF32 convolutions


def test_create_backend_builds_tensorrt_variants(
    dynamic_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensor: FloatArray
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    backend = create_backend(model_config("fp16", batch_max=4), dynamic_model, "cuda")
    assert isinstance(backend, TensorRTBackend)
    assert backend.max_batch == 4
    assert backend.engine_path.parent == tmp_path
    assert backend.infer(tensor[:6])[0].shape[0] == 6


def calibration_batches(count: int) -> Iterator[FloatArray]:
    """COCO images the way the worker feeds YOLOX, two at a time (the calibrator re-cuts)."""
    images = sorted(require("coco128/images/val2017").glob("*.jpg"))[-count:]
    fmt = decoder_for("yolox").input_format
    for start in range(0, count, 2):
        frames = [
            np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8)
            for p in images[start : start + 2]
        ]
        yield preprocess(frames, SIZE, SIZE, fmt)[0]


def calibrated_backend(model: Path, tmp_path: Path) -> TensorRTBackend:
    """Implicit INT8: TensorRT calibrates on 64 COCO images and writes yolox.calib."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        hardware.skip_without(
            "tensorrt", f"TensorRT {trt.__version__} has no implicit INT8 calibration"
        )
    calibration = Int8Calibration(
        cache=tmp_path / "yolox.calib", batches=lambda: calibration_batches(64), batch_size=8
    )
    return TensorRTBackend(
        model,
        input_size=INPUT,
        precision="int8",
        batch=PROFILE,
        cache_dir=tmp_path / "engines",
        calibration=calibration,
    )


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, batches: Iterator[FloatArray]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, FloatArray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def quantize_for_tensorrt(model: Path, out: Path) -> Path:
    """Static QDQ quantization as TensorRT takes it: signed INT8 with zero points of 0
    (TensorRT has no asymmetric or UINT8 quantization off DLA), per-channel weights (opset
    13's DequantizeLinear axis), convolutions only."""
    upgraded = out.with_suffix(".opset13.onnx")
    onnx.save(version_converter.convert_version(onnx.load(str(model)), 13), str(upgraded))
    quantize_static(
        str(upgraded),
        str(out),
        _Reader(calibration_batches(32)),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


def test_int8_calibrated_engine_finds_what_fp32_finds(
    dynamic_model: Path, reference: OrtBackend, frames: list[Frame], tmp_path: Path
) -> None:
    """A loose bound (unmeasured: no TensorRT here yet): an engine with broken scales finds
    next to nothing."""
    backend = calibrated_backend(dynamic_model, tmp_path)
    assert backend.built_engine
    assert (tmp_path / "yolox.calib").stat().st_size > 0
    config = model_config("int8")
    got = Detector(config, backend, CONFIDENCE, NMS_IOU)(frames)
    want = Detector(config, reference, CONFIDENCE, NMS_IOU)(frames)
    assert recall(got, want, min_score=0.5, iou=0.5) >= 0.5


def test_int8_qdq_engine_runs_the_quantized_model_as_onnxruntime_does(
    dynamic_model: Path, tmp_path: Path, tensor: FloatArray
) -> None:
    """Explicit quantization: TensorRT takes the Q/DQ scales from the model, so the engine
    computes what ONNX Runtime computes from the same QDQ file. (Whether that file is any
    good is the quantizer's business: plain post-training quantization costs YOLOX-nano most
    of its confident detections.)"""
    qdq = quantize_for_tensorrt(dynamic_model, tmp_path / "yolox_nano_416_qdq.onnx")
    backend = TensorRTBackend(
        qdq, input_size=INPUT, precision="int8", batch=PROFILE, cache_dir=tmp_path / "engines"
    )
    assert backend.built_engine
    (got,) = backend.infer(tensor)
    (want,) = OrtBackend(qdq, max_batch=16).infer(tensor)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.95


def test_int8_calibration_cache_replaces_the_calibration_data(
    dynamic_model: Path, tmp_path: Path, tensor: FloatArray
) -> None:
    """A build from the cache file alone (no images) gives an engine that agrees with the one
    that calibrated."""
    calibrated = calibrated_backend(dynamic_model, tmp_path)
    cache = tmp_path / "yolox.calib"
    assert cache.stat().st_size > 0
    from_cache = TensorRTBackend(
        dynamic_model,
        input_size=INPUT,
        precision="int8",
        batch=PROFILE,
        cache_dir=tmp_path / "other-engines",
        calibration=Int8Calibration(cache=cache),
    )
    assert from_cache.built_engine
    for g, w in zip(from_cache.infer(tensor[:4]), calibrated.infer(tensor[:4]), strict=True):
        assert mostly_close(g, w, tolerance=5e-2) >= 0.999  # same scales, maybe other tactics
