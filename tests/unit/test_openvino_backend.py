"""The OpenVINO backend against ONNX Runtime on the same real frames and model.

YOLOX-nano runs through the worker's detector path in both runtimes on coco128 frames: raw
outputs agree to float tolerance and the detections are the same boxes, classes and scores.
The same model as an OpenVINO IR, shipped as one ``.tar`` artifact, is verified, unpacked and
gives the same detections.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kubevision.api.modelvariant import Artifact
from kubevision.worker.backends import create_backend
from kubevision.worker.backends.openvino import OpenVinoBackend, openvino_device
from kubevision.worker.backends.ort import OrtBackend
from kubevision.worker.decoders import decoder_for
from kubevision.worker.detections import Detections
from kubevision.worker.detector import Detector
from kubevision.worker.models import ArtifactStore
from kubevision.worker.preprocess import preprocess
from model_catalog.tools.coco_eval import local_model, read_frame
from tests.assets import require

MODEL = "models/yolox_nano_416.onnx"
FRAMES = 8


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    paths = sorted(require("coco128/images/val2017").glob("*.jpg"))[:FRAMES]
    return [read_frame(p) for p in paths]


def detections(model_format: str, path: Path, frames: list[np.ndarray]) -> list[Detections]:
    config = local_model(path, "detect", 416, "yolox", batch_max=4, model_format=model_format)
    detector = Detector(config, create_backend(config, path, intra_op_threads=2), 0.3, 0.45)
    return [d for start in range(0, len(frames), 4) for d in detector(frames[start : start + 4])]


def assert_same(ours: list[Detections], reference: list[Detections]) -> None:
    assert sum(len(d) for d in reference) > 20, "the frames must hold real detections"
    for got, want in zip(ours, reference, strict=True):
        assert len(got) == len(want)
        np.testing.assert_array_equal(got.class_ids, want.class_ids)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.5)  # pixels
        np.testing.assert_allclose(got.scores, want.scores, atol=2e-3)


def test_raw_outputs_match_onnx_runtime(frames: list[np.ndarray]) -> None:
    path = require(MODEL)
    batch, _ = preprocess(frames[:3], 416, 416, decoder_for("yolox").input_format)
    openvino = OpenVinoBackend(path, intra_op_threads=2, max_batch=4)
    ort = OrtBackend(path, intra_op_threads=2, max_batch=4)
    assert openvino.max_batch == ort.max_batch == 1  # the export fixes batch 1: split
    (ours,), (reference,) = openvino.infer(batch), ort.infer(batch)
    assert ours.shape == reference.shape == (3, 3549, 85)
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_detections_match_onnx_runtime(frames: list[np.ndarray]) -> None:
    path = require(MODEL)
    assert_same(detections("openvino", path, frames), detections("onnx", path, frames))


def test_ir_tar_artifact_is_verified_unpacked_and_matches(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    import openvino as ov  # type: ignore[import-untyped]

    path = require(MODEL)
    ir = tmp_path / "ir"
    ir.mkdir()
    model = ov.Core().read_model(str(path))
    # save_model stores FP16 weights by default; an FP32 variant keeps FP32 weights
    ov.save_model(model, str(ir / "yolox_nano_416.xml"), compress_to_fp16=False)
    archive = tmp_path / "yolox_nano_416_openvino.tar"
    with tarfile.open(archive, "w") as tar:
        for member in sorted(ir.iterdir()):
            tar.add(member, arcname=member.name)
    artifact = Artifact(
        uri=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest()
    )
    model_file = ArtifactStore(cache_dir=tmp_path / "cache").fetch(artifact)
    assert model_file.name == "yolox_nano_416.xml"
    assert (model_file.parent / "yolox_nano_416.bin").is_file()
    assert_same(detections("openvino", model_file, frames), detections("onnx", path, frames))


def test_only_the_cpu_device_is_accepted() -> None:
    assert openvino_device("cpu") == "CPU"
    with pytest.raises(ValueError, match="runs on device 'cpu'"):
        openvino_device("cuda:0")
