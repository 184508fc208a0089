"""The one interface every inference runtime implements, and the factory that picks one.

The detector and classifier only ever call :meth:`InferenceBackend.infer`, so ONNX Runtime,
OpenVINO, PyTorch, TensorRT and Triton are interchangeable behind it. Runtimes are
imported only when chosen: a CPU worker image need not carry TensorRT.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from kubevision.api.worker_config import ModelConfig

FloatArray = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

TRITON_URL_ENV = "KUBEVISION_TRITON_URL"
"""Triton gRPC address (host:port) for ``triton://<model>`` variants."""


class InferenceBackend(Protocol):
    """One loaded model with a single input tensor.

    ``infer`` takes a batch of any size along axis 0 and returns every output batched the same
    way, in ``output_names`` order. A backend whose model has a fixed batch size splits (and
    pads) internally; ``max_batch`` is the most frames one model call takes, so callers can
    size their batches to it.
    """

    @property
    def name(self) -> str:
        """The runtime, e.g. ``onnxruntime``; for logs and metrics."""
        ...

    @property
    def max_batch(self) -> int: ...

    @property
    def input_names(self) -> Sequence[str]: ...

    @property
    def output_names(self) -> Sequence[str]: ...

    def infer(self, batch: FloatArray) -> list[FloatArray]: ...


BackendChoice = Literal["auto", "onnxruntime", "torch"]
"""Which runtime runs an ONNX variant; TensorRT and Triton variants name their own."""


def create_backend(
    model: ModelConfig,
    model_path: Path | None,
    device: str = "cpu",
    *,
    intra_op_threads: int | None = None,
    choice: BackendChoice = "auto",
    triton_url: str | None = None,
) -> InferenceBackend:
    """The backend that runs ``model``'s format on ``device`` (``cpu``, ``cuda`` or ``cuda:N``).

    ONNX variants run in ONNX Runtime, or in PyTorch (``choice="torch"``, or ``auto`` on a GPU
    when torch and onnx2torch are installed: CUDA graphs, FP16 and on-device pre/post-processing
    beat ORT's CUDA provider for small detectors). ``intra_op_threads`` bounds the CPU runtime's
    thread pool; set it to the pod's CPU limit, since runtimes otherwise size their pools to the
    node's cores. ``model_path`` is None only for Triton variants (the server holds the model).
    """
    if model.format == "triton":
        from kubevision.worker.backends.triton import TritonBackend

        return TritonBackend.from_uri(
            model.artifact.uri, default_url=triton_url or os.environ.get(TRITON_URL_ENV)
        )
    if model_path is None:
        raise ValueError(f"model {model.variant!r} ({model.format}) needs its artifact file")
    if model.format == "tensorrt":
        from kubevision.worker.backends.tensorrt import TensorRTBackend

        return TensorRTBackend.from_model_config(model, model_path, device)
    if model.format == "openvino":
        from kubevision.worker.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(
            model_path,
            device,
            intra_op_threads=intra_op_threads,
            max_batch=model.batch_max,
            precision=model.precision,
        )
    if model.format != "onnx":
        raise ValueError(
            f"no inference backend for format {model.format!r}; supported: onnx, openvino, "
            "tensorrt, triton"
        )
    if _use_torch(choice, device):
        try:
            return _torch_backend(model, model_path, device)
        except NotImplementedError as error:  # onnx2torch lacks an op (e.g. QDQ INT8 models)
            device = _ort_fallback_device(device)
            log.warning(
                "%s runs in ONNX Runtime on %s: torch cannot convert it (%s)",
                model.variant,
                device,
                error,
            )
    from kubevision.worker.backends.ort import OrtBackend, default_providers

    return OrtBackend(
        model_path,
        providers=default_providers(device, fp16=model.precision == "fp16"),
        intra_op_threads=intra_op_threads,
        max_batch=model.batch_max,
    )


def _torch_backend(model: ModelConfig, model_path: Path, device: str) -> InferenceBackend:
    from kubevision.worker.backends.pytorch import TorchBackend

    size = model.input_size
    return TorchBackend.from_onnx(
        model_path,
        input_shape=(3, size.height, size.width),
        device=device,
        precision="fp16" if model.precision == "fp16" else "fp32",
        max_batch=model.batch_max,
    )


def _ort_fallback_device(device: str) -> str:
    """Where ONNX Runtime can run a model torch could not take: the GPU if this build has a
    GPU provider, else the CPU (a small INT8 classifier beside a GPU detector is fine there)."""
    import onnxruntime  # type: ignore[import-untyped]

    from kubevision.worker.backends.ort import CUDA, TENSORRT

    available = set(onnxruntime.get_available_providers())
    return device if available & {CUDA, TENSORRT} else "cpu"


def _use_torch(choice: BackendChoice, device: str) -> bool:
    if choice != "auto":
        return choice == "torch"
    if not device.startswith("cuda"):
        return False
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx2torch"))
