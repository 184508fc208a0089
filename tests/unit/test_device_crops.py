"""Crops of device frames (NVDEC's) for the classifier, cut on the device: the same pixels as
the host path's crops, and the same answers, with frames of both kinds in one call. Each test
runs with torch on the CPU (the same code path) and, where there is one, on a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kubevision.worker.backends.pytorch import TorchBackend
from kubevision.worker.classifier import CropClassifier, read_labels
from kubevision.worker.gpu.preprocess import device_crops
from kubevision.worker.preprocess import InputFormat, crops
from tests import hardware
from tests.assets import require
from tests.unit.test_decoders import classifier_config
from tests.unit.test_shape_folding import float_classifier  # noqa: F401 (fixture)
from tests.unit.test_torch_backend import video_frames  # noqa: F401 (fixture)

DEVICES = pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason=hardware.reason("gpu", "needs a CUDA GPU")
            ),
        ),
    ],
)


def boxes(frame: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Boxes of all sizes, some past the frame's edges, some fractional."""
    height, width = frame.shape[:2]
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-20, [width - 10, height - 10], (count, 2))
    wh = rng.uniform(3, [width / 2, height / 2], (count, 2))
    return np.column_stack([xy, xy + wh]).astype(np.float32)


@DEVICES
def test_device_crops_cut_the_host_crops_pixels(
    video_frames: list[np.ndarray],  # noqa: F811
    device: str,
) -> None:
    frame = video_frames[0]
    xyxy = boxes(frame, 40, seed=1)
    host = crops(frame, xyxy, 224, 224).astype(np.float32)
    cut = device_crops([(torch.from_numpy(frame).to(device), xyxy)], 224, 224, InputFormat())
    diff = np.abs(cut.permute(0, 2, 3, 1).cpu().numpy() - host)
    assert diff.mean() < 0.1, diff.mean()  # bilinear in fixed point (OpenCV) vs float
    assert (diff <= 1).mean() > 0.999


@DEVICES
def test_crops_of_several_frames_and_sizes_come_in_request_order(
    video_frames: list[np.ndarray],  # noqa: F811
    device: str,
) -> None:
    small = np.ascontiguousarray(video_frames[1][::2, ::3])
    frames = [video_frames[0], small, video_frames[2], small[:50]]
    requests = [(frame, boxes(frame, 3 + i, seed=10 + i)) for i, frame in enumerate(frames)]
    host = np.concatenate([crops(f, b, 96, 64) for f, b in requests]).astype(np.float32)
    cut = device_crops(
        [(torch.from_numpy(f).to(device), b) for f, b in requests], 96, 64, InputFormat()
    )
    diff = np.abs(cut.permute(0, 2, 3, 1).cpu().numpy() - host)
    assert cut.shape == (len(host), 3, 64, 96)
    assert diff.mean() < 0.1, diff.mean()
    assert (diff <= 1).mean() > 0.999


def classifier(model: Path, device: str) -> CropClassifier:
    labels = read_labels(require("models/imagenet_classes.txt"))
    backend = TorchBackend.from_onnx(
        model, input_shape=(3, 224, 224), device=device, precision="fp32"
    )
    return CropClassifier(classifier_config(labels), backend, top_k=len(labels))


def probabilities(result: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(N, classes) probabilities from a top-k-of-all result."""
    class_ids, scores = result
    out = np.zeros(class_ids.shape)
    np.put_along_axis(out, class_ids, scores, axis=1)
    return out


@DEVICES
def test_device_and_host_frames_in_one_call_get_the_host_answers(
    float_classifier: Path,  # noqa: F811
    video_frames: list[np.ndarray],  # noqa: F811
    device: str,
) -> None:
    run = classifier(float_classifier, device)
    frames = video_frames[:3]
    requests = [(frame, boxes(frame, 4 + i, seed=i)) for i, frame in enumerate(frames)]
    on_host = run.classify_many(requests)
    mixed = run.classify_many(
        [(torch.from_numpy(f).to(device) if i != 1 else f, b) for i, (f, b) in enumerate(requests)]
    )
    for host, both in zip(on_host, mixed, strict=True):
        assert len(host[0]) == len(both[0])
        np.testing.assert_allclose(probabilities(both), probabilities(host), atol=0.02)
