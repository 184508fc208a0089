"""ONNX Runtime execution provider lists and options, per device and onnxruntime build.

Building the list only reads which providers this onnxruntime build has, so the tests set that
(``ort.get_available_providers``, the one input of this logic) and check the options; a real
CUDA/TensorRT session runs in tests/integration/test_ort_gpu_providers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime  # type: ignore[import-untyped]
import pytest

from kubevision.worker.backends.ort import (
    CPU,
    CUDA,
    TENSORRT,
    Provider,
    cuda_options,
    default_providers,
    tensorrt_options,
)

ALL_GPU = [TENSORRT, CUDA, CPU]
CUDA_ONLY = [CUDA, CPU]
TRT_ONLY = [TENSORRT, CPU]


@pytest.fixture
def available(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The providers this onnxruntime build reports; tests fill it in."""
    providers: list[str] = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))
    return providers


def cuda(device_id: int) -> Provider:
    return (
        CUDA,
        {
            "device_id": device_id,
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": True,
        },
    )


def trt(device_id: int, **options: Any) -> Provider:
    return (
        TENSORRT,
        {"device_id": device_id, "trt_fp16_enable": False, "trt_int8_enable": False} | options,
    )


@pytest.mark.parametrize(
    ("build", "device", "fp16", "expected"),
    [
        (ALL_GPU, "cpu", False, [CPU]),
        (ALL_GPU, "cuda", False, [trt(0), cuda(0), CPU]),
        (ALL_GPU, "cuda:1", True, [trt(1, trt_fp16_enable=True), cuda(1), CPU]),
        (CUDA_ONLY, "cuda:2", True, [cuda(2), CPU]),
        (TRT_ONLY, "cuda", False, [trt(0), CPU]),
        ([CPU], "cpu", True, [CPU]),
    ],
)
def test_providers_per_device_and_build(
    available: list[str], build: list[str], device: str, fp16: bool, expected: list[Provider]
) -> None:
    available.extend(build)
    assert default_providers(device, fp16=fp16) == expected


def test_a_gpu_device_without_gpu_providers_is_an_error_not_a_cpu_fallback(
    available: list[str],
) -> None:
    available.append(CPU)
    with pytest.raises(RuntimeError, match=r"needs the CUDA or TensorRT.*onnxruntime-gpu"):
        default_providers("cuda")


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "cuda:", "CUDA", "cuda:-1"])
def test_device_names_are_checked(available: list[str], device: str) -> None:
    available.extend(ALL_GPU)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        default_providers(device)


def test_cache_dir_gives_tensorrt_its_engine_and_timing_caches(
    available: list[str], tmp_path: Path
) -> None:
    available.extend(ALL_GPU)
    cache = tmp_path / "node" / "trt"
    providers = default_providers("cuda", fp16=True, cache_dir=cache)
    assert providers[0] == trt(
        0,
        trt_fp16_enable=True,
        trt_engine_cache_enable=True,
        trt_engine_cache_path=str(cache),
        trt_timing_cache_enable=True,
        trt_timing_cache_path=str(cache),
    )
    assert providers[1:] == [cuda(0), CPU], "CUDA takes no cache options"
    assert cache.is_dir(), "made for TensorRT, parents included"


def test_no_cache_dir_is_made_when_tensorrt_is_not_used(
    available: list[str], tmp_path: Path
) -> None:
    available.extend(CUDA_ONLY)
    default_providers("cuda", cache_dir=tmp_path / "trt")
    assert not (tmp_path / "trt").exists()


def test_int8_with_a_calibration_table_reads_it_from_the_cache_dir(
    available: list[str], tmp_path: Path
) -> None:
    available.extend(ALL_GPU)
    (first, *_) = default_providers(
        "cuda", int8=True, cache_dir=tmp_path, int8_calibration_table="yolox.calib"
    )
    assert isinstance(first, tuple)
    name, options = first
    assert name == TENSORRT
    assert options["trt_int8_enable"] is True
    assert options["trt_int8_calibration_table_name"] == "yolox.calib"
    assert options["trt_int8_use_native_calibration_table"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path)


def test_int8_of_a_qdq_model_needs_no_table() -> None:
    options = tensorrt_options(0, int8=True, fp16=True)
    assert options == {"device_id": 0, "trt_fp16_enable": True, "trt_int8_enable": True}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"int8_calibration_table": "t.calib", "cache_dir": Path("/c")}, "needs int8=True"),
        ({"int8_calibration_table": "t.calib", "int8": True}, "needs cache_dir"),
        (
            {"int8_calibration_table": "sub/t.calib", "int8": True, "cache_dir": Path("/c")},
            "must be a file name inside cache_dir",
        ),
    ],
)
def test_tensorrt_options_reject_tables_it_could_not_find(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tensorrt_options(0, **kwargs)


def test_cuda_options_pick_algorithms_by_heuristic_for_changing_batch_sizes() -> None:
    assert cuda_options(3)["device_id"] == 3
    assert cuda_options(3)["cudnn_conv_algo_search"] == "HEURISTIC"
