"""OpenVINO backend: Intel's runtime for CPUs (the ``openvino`` wheel), behind the same
:class:`..base.InferenceBackend` interface as ONNX Runtime.

It loads an ONNX file or an OpenVINO IR (``model.xml`` with its ``model.bin`` beside it; a
catalog artifact ships the pair as one ``.tar`` that :mod:`kubevision.worker.models` verifies
and unpacks). FP32 variants run at FP32 (``INFERENCE_PRECISION_HINT``): on CPUs with AMX or
AVX-512 BF16, OpenVINO would otherwise pick BF16 by itself, and a variant's accuracy figure
must hold for what the worker runs. Batching follows the ONNX Runtime backend: a fixed-batch
model runs its batch size at a time (the last call padded), a dynamic one up to ``max_batch``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_DEVICES = {"cpu": "CPU"}
"""Worker devices OpenVINO runs on here (its GPU plugin is for Intel GPUs, not CUDA)."""


def openvino_device(device: str) -> str:
    """The OpenVINO device name for a worker device; only ``cpu`` is supported."""
    if device not in _DEVICES:
        raise ValueError(
            f"the openvino backend runs on device 'cpu', got {device!r} (use an onnx or "
            f"tensorrt variant on NVIDIA GPUs)"
        )
    return _DEVICES[device]


class OpenVinoBackend:
    """A model compiled by OpenVINO for one device (see :class:`..base.InferenceBackend`)."""

    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        max_batch: int = 1,
        precision: str = "fp32",
    ) -> None:
        """Read and compile the model.

        Args:
            model_path: a .onnx file, or an IR .xml with its .bin beside it.
            device: the worker device (``cpu``).
            intra_op_threads: inference threads; None lets OpenVINO use every core.
            max_batch: most frames per call for a dynamic-batch model.
            precision: the variant's precision; fp32 pins FP32 kernels (see module docstring).
        """
        import openvino as ov  # type: ignore[import-untyped]

        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        target = openvino_device(device)
        core = ov.Core()
        model = core.read_model(str(model_path))
        if len(model.inputs) != 1:
            raise ValueError(f"{model_path} has {len(model.inputs)} inputs; backends take one")
        batch_dim = model.inputs[0].get_partial_shape()[0]
        self._fixed_batch = batch_dim.get_length() if batch_dim.is_static else None
        self._max_batch = self._fixed_batch or max_batch
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if intra_op_threads is not None:
            config["INFERENCE_NUM_THREADS"] = intra_op_threads
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self._compiled = core.compile_model(model, target, config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._input_names = (_name(model.inputs[0], "input"),)
        self._output_names = tuple(
            _name(output, f"output{i}") for i, output in enumerate(model.outputs)
        )

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return self._input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self._output_names

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        """Run ``batch`` (N, ...) in calls of ``max_batch``; every output comes back (N, ...)."""
        batch = np.ascontiguousarray(batch, np.float32)
        if len(batch) == 0:
            raise ValueError("infer needs at least one item in the batch")
        parts: list[list[FloatArray]] = []
        for start in range(0, len(batch), self._max_batch):
            chunk = batch[start : start + self._max_batch]
            size = len(chunk)
            if self._fixed_batch is not None and size < self._fixed_batch:
                padding = np.zeros((self._fixed_batch - size, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            with self._lock:  # one infer request; its output tensors are reused per call
                results = self._request.infer({0: chunk})
                outputs = [np.array(results[o][:size], np.float32) for o in self._compiled.outputs]
            parts.append(outputs)
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(per_output) for per_output in zip(*parts, strict=True)]


def _name(port: Any, default: str) -> str:
    """A port's tensor name; IR exports may leave outputs unnamed."""
    names = port.get_names()
    return str(port.get_any_name()) if names else default
