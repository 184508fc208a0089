"""ONNX Runtime's CUDA and TensorRT execution providers in a real session on a GPU.

Runs only with an onnxruntime build that has those providers (onnxruntime-gpu) and a GPU;
the CPU build used in CI and on the benchmark GPU host has neither, and the tests skip saying
which providers the build has. Reference: the same model on the CPU provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest

from kubevision.worker.backends.ort import CPU, CUDA, TENSORRT, OrtBackend, default_providers
from kubevision.worker.decoders import decoder_for
from kubevision.worker.preprocess import preprocess
from tests import hardware
from tests.assets import require

SIZE = 416
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


def needs(provider: str) -> None:
    available = ort.get_available_providers()
    if provider not in available:
        hardware.skip_without(
            "ort-gpu", f"this onnxruntime build has no {provider} (it has {available})"
        )


@pytest.fixture(scope="module")
def model() -> Path:
    return require("models/yolox_nano_416.onnx")


@pytest.fixture(scope="module")
def tensor() -> FloatArray:
    images = sorted(require("coco128/images/val2017").glob("*.jpg"))[:3]
    frames = [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8) for p in images]
    batch, _ = preprocess(frames, SIZE, SIZE, decoder_for("yolox").input_format)
    return batch


@pytest.fixture(scope="module")
def reference(model: Path, tensor: FloatArray) -> list[FloatArray]:
    return OrtBackend(model, providers=[CPU]).infer(tensor)


def test_cuda_provider_runs_the_model_like_the_cpu(
    model: Path, tensor: FloatArray, reference: list[FloatArray]
) -> None:
    needs(CUDA)
    providers = [p for p in default_providers("cuda") if p == CPU or p[0] == CUDA]
    backend = OrtBackend(model, providers=providers)
    assert backend.providers[0] == CUDA
    for got, want in zip(backend.infer(tensor), reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)  # TF32 convolutions


@pytest.mark.parametrize(("fp16", "tolerance"), [(False, 1e-2), (True, 5e-2)])
def test_tensorrt_provider_caches_its_engine(
    model: Path,
    tensor: FloatArray,
    reference: list[FloatArray],
    tmp_path: Path,
    fp16: bool,
    tolerance: float,
) -> None:
    needs(TENSORRT)
    cache = tmp_path / "trt"
    first = OrtBackend(model, providers=default_providers("cuda", fp16=fp16, cache_dir=cache))
    assert first.providers[0] == TENSORRT
    for got, want in zip(first.infer(tensor), reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    engines = {p: p.stat().st_mtime_ns for p in cache.iterdir() if p.suffix == ".engine"}
    assert engines, f"no engine cached in {sorted(p.name for p in cache.iterdir())}"
    second = OrtBackend(model, providers=default_providers("cuda", fp16=fp16, cache_dir=cache))
    second.infer(tensor)
    after = {p: p.stat().st_mtime_ns for p in cache.iterdir() if p.suffix == ".engine"}
    assert after == engines, "the second session loads the cached engine instead of rebuilding"
