"""The PyTorch backend and the on-device detector, run on the CPU against ONNX Runtime.

CI has no GPU, so these pin down what the GPU path computes (onnx2torch conversion, padding
to batch buckets, device letterbox, device decode + NMS, unmapping) on the same real models
and frames as the ONNX Runtime path; the GPU speed is measured by benchmarks/gpu.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch

from kubevision.api.worker_config import DetectorConfig
from kubevision.worker import decoders
from kubevision.worker.backends.base import create_backend
from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.backends.pytorch import TorchBackend, graph_buckets
from kubevision.worker.detector import Detector, build_detector
from kubevision.worker.gpu.detector import DeviceDetector
from kubevision.worker.gpu.postprocess import decode_yolox, select_nms
from model_catalog.tools.prepare import make_dynamic
from tests.assets import require
from tests.unit.test_decoders import model_config

# onnx2torch's converted graph vs ORT's fused kernels: float32 rounding only, relative to
# outputs of up to a few hundred (box pixels).
RAW_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def video_frames() -> list[np.ndarray]:
    frames = []
    with av.open(str(require("videos/bottle-detection.mp4"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 40 == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == 6:
                break
    return frames


@pytest.fixture(scope="module")
def yolox_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The YOLOX-nano export with a real symbolic batch (the catalog's GPU artifact)."""
    path = tmp_path_factory.mktemp("models") / "yolox_nano_dynamic.onnx"
    onnx.save(make_dynamic(onnx.load(str(require("models/yolox_nano_416.onnx")))), str(path))
    return path


@pytest.mark.parametrize(
    ("max_batch", "expected"), [(1, (1,)), (8, (1, 2, 4, 8)), (48, (1, 2, 4, 8, 16, 32, 48))]
)
def test_graph_buckets_are_powers_of_two_up_to_max_batch(
    max_batch: int, expected: tuple[int, ...]
) -> None:
    assert graph_buckets(max_batch) == expected


@pytest.mark.parametrize(
    ("asset", "size"),
    [
        ("models/yolox_nano_416.onnx", 416),  # fixed batch 1: run one by one
        ("models/yolov8n_agpl/yolov8n_416_fp32.onnx", 416),
        ("models/nanodet_m_320.onnx", 320),  # six outputs
    ],
)
def test_torch_backend_on_cpu_matches_onnx_runtime(asset: str, size: int) -> None:
    path = require(asset)
    torch_backend = TorchBackend.from_onnx(path, device="cpu", max_batch=4)
    ort_backend = OrtBackend(path, max_batch=4)
    batch = np.random.default_rng(0).uniform(0, 255, (3, 3, size, size)).astype(np.float32)
    ours, reference = torch_backend.infer(batch), ort_backend.infer(batch)
    assert torch_backend.output_names == ort_backend.output_names
    for got, want in zip(ours, reference, strict=True):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= RAW_TOLERANCE * max(1.0, float(np.abs(want).max()))


def test_a_dynamic_batch_runs_in_one_call_and_padding_changes_nothing(yolox_dynamic: Path) -> None:
    backend = TorchBackend.from_onnx(
        yolox_dynamic, input_shape=(3, 416, 416), device="cpu", max_batch=4
    )
    batch = np.random.default_rng(1).uniform(0, 255, (5, 3, 416, 416)).astype(np.float32)
    (together,) = backend.infer(batch)  # 4 + 1
    singles = np.concatenate([backend.infer(batch[i : i + 1])[0] for i in range(5)])
    assert backend.max_batch == 4
    np.testing.assert_allclose(together, singles, atol=1e-3)


def test_device_detector_on_cpu_finds_what_the_host_detector_finds(
    video_frames: list[np.ndarray], yolox_dynamic: Path
) -> None:
    """Same boxes (sub-pixel), scores and classes; odd frames handled alike."""
    config = DetectorConfig(
        model=model_config("yolox", size=416, batch_max=8), confidence=0.3, nms_iou=0.45
    )
    host = Detector.from_config(config, OrtBackend(yolox_dynamic, max_batch=8))
    stages: dict[str, float] = {}
    device = build_detector(
        config,
        create_backend(config.model, yolox_dynamic, "cpu", choice="torch"),
        on_stage=stages.__setitem__,
    )
    assert isinstance(device, DeviceDetector)
    gray = video_frames[1][:, :, 0].copy()
    bgra = np.dstack([video_frames[2], np.full(video_frames[2].shape[:2], 255, np.uint8)])
    crop = np.ascontiguousarray(video_frames[3][:200, 50:350])
    broken = np.zeros((0, 10, 3), np.uint8)
    frames = [*video_frames, gray, bgra, crop, broken]
    expected, found = host(frames), device(frames)
    assert sum(len(d) for d in expected) > 10
    for want, got in zip(expected, found, strict=True):
        assert got.class_ids.tolist() == want.class_ids.tolist()
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1.0)
        np.testing.assert_allclose(got.scores, want.scores, atol=0.01)
    assert device.rejected_frames == host.rejected_frames == 1
    assert stages["infer"] > 0


def test_auto_backend_is_onnx_runtime_on_a_cpu(yolox_dynamic: Path) -> None:
    model = model_config("yolox", size=416)
    assert create_backend(model, yolox_dynamic, "cpu").name == "onnxruntime"
    assert create_backend(model, yolox_dynamic, "cpu", choice="torch").name == "torch"


def test_a_model_torch_cannot_convert_runs_in_onnx_runtime_where_it_can() -> None:
    """The INT8 (QDQ) classifier beside a GPU detector: onnx2torch has no QuantizeLinear and
    this onnxruntime has no GPU provider, so it runs on the CPU instead of failing the worker."""
    model = model_config(None, task="classify", size=224).model_copy(update={"precision": "int8"})
    backend = create_backend(
        model, require("models/mobilenetv2_12_int8.onnx"), "cuda:0", choice="torch"
    )
    assert backend.name == "onnxruntime"
    assert isinstance(backend, OrtBackend)
    assert backend.providers == ["CPUExecutionProvider"]


def test_device_nms_groups_by_frame_and_caps_each_frame() -> None:
    """Two frames with identical boxes: NMS never merges across frames; max_det is per frame."""
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    xyxy = torch.stack([boxes, boxes])  # (2 frames, 4 anchors, 4)
    scores = torch.zeros(2, 4, 3)
    scores[:, :, 0] = torch.tensor([0.9, 0.8, 0.7, 0.1])  # the 4th is under the threshold
    scores[1, 2, 0], scores[1, 2, 2] = 0.0, 0.95  # frame 1's far box is class 2
    mask = torch.tensor([True, True, True])
    _, kept_scores, classes, frames = select_nms(
        xyxy, scores, confidence=0.5, class_mask=mask, iou=0.5, max_det=10
    )
    assert frames.tolist() == [0, 0, 1, 1]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.7, 0.95, 0.9])
    assert classes.tolist() == [0, 0, 2, 0]
    _, _, _, capped = select_nms(xyxy, scores, confidence=0.5, class_mask=mask, iou=0.5, max_det=1)
    assert capped.tolist() == [0, 1]
    _, _, only, _ = select_nms(
        xyxy,
        scores,
        confidence=0.5,
        class_mask=torch.tensor([False, False, True]),
        iou=0.5,
        max_det=10,
    )
    assert only.tolist() == [2]


@pytest.mark.parametrize("size", [(416, 416), (400, 300)])  # 300 / 8 is not whole: ceil grid
def test_device_decode_places_anchors_like_the_host_decoder(size: tuple[int, int]) -> None:
    width, height = size
    anchors = sum(-(-width // s) * -(-height // s) for s in (8, 16, 32))
    raw = np.random.default_rng(2).uniform(0.01, 1, (1, anchors, 85)).astype(np.float32)
    (host,) = decoders.decode_yolox([raw], size, confidence=0.0)
    xyxy, _ = decode_yolox([torch.from_numpy(raw)], size)
    np.testing.assert_allclose(xyxy[0].numpy(), host.xyxy, rtol=1e-5, atol=1e-3)
