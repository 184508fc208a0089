"""ONNX Runtime backend: CPU everywhere, CUDA and TensorRT execution providers where installed.

(Named ``ort`` rather than ``onnxruntime`` so no import path can ever resolve the runtime's
own package to this module.)

Many exported models have a fixed batch of 1 (most of the shared test assets do, the YOLOX
export included, whatever its documentation says); the backend reads the batch dimension
from the model and splits larger batches into calls of that size, padding the last one if the
fixed size is larger than what is left. Dynamic-batch models run up to ``max_batch`` per call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]

FloatArray = npt.NDArray[np.float32]
Provider = str | tuple[str, dict[str, Any]]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_ERRORS_ONLY = 3
"""ORT log severity: some exports (NanoDet) list weights as graph inputs and would log one
warning per tensor at every load."""
_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}

log = logging.getLogger(__name__)


def default_providers(
    device: str,
    fp16: bool = False,
    *,
    int8: bool = False,
    cache_dir: Path | None = None,
    int8_calibration_table: str | None = None,
) -> list[Provider]:
    """Execution providers for ``cpu``, ``cuda`` or ``cuda:N``, best first, CPU as fallback.

    On a GPU, TensorRT and CUDA are used when this onnxruntime build has them; a GPU device
    with neither is an error, not a silent fall back to CPU. TensorRT builds an engine for
    every new model and shape range, which takes seconds to minutes: with ``cache_dir`` its
    engines and timing cache persist there, so a restarted worker loads them instead.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        fp16: let TensorRT pick FP16 kernels.
        int8: let TensorRT pick INT8 kernels: for a QDQ (explicitly quantized) model, or with
            ``int8_calibration_table``.
        cache_dir: where TensorRT keeps engines, timing cache and calibration table; created
            when TensorRT is used.
        int8_calibration_table: file name, inside ``cache_dir``, of a TensorRT calibration
            cache (as :class:`..tensorrt.TensorRTBackend` writes it) for a model without QDQ.
    """
    if device == "cpu":
        return [CPU]
    device_id = _cuda_device_id(device)
    available = set(ort.get_available_providers())
    providers: list[Provider] = []
    if TENSORRT in available:
        options = tensorrt_options(
            device_id,
            fp16=fp16,
            int8=int8,
            cache_dir=cache_dir,
            int8_calibration_table=int8_calibration_table,
        )
        if cache_dir is not None:
            # the provider is not documented to create missing parent folders
            cache_dir.mkdir(parents=True, exist_ok=True)
        providers.append((TENSORRT, options))
    if CUDA in available:
        providers.append((CUDA, cuda_options(device_id)))
    if not providers:
        raise RuntimeError(
            f"device {device!r} needs the CUDA or TensorRT execution provider, but this "
            f"onnxruntime build has only {sorted(available)} (install onnxruntime-gpu)"
        )
    return [*providers, CPU]


def tensorrt_options(
    device_id: int,
    *,
    fp16: bool = False,
    int8: bool = False,
    cache_dir: Path | None = None,
    int8_calibration_table: str | None = None,
) -> dict[str, Any]:
    """TensorRT execution provider options (see :func:`default_providers` for the arguments)."""
    if int8_calibration_table is not None:
        if not int8:
            raise ValueError("int8_calibration_table needs int8=True")
        if cache_dir is None:
            raise ValueError(
                "int8_calibration_table needs cache_dir: TensorRT reads the table from there"
            )
        if Path(int8_calibration_table).name != int8_calibration_table:
            raise ValueError(
                f"int8_calibration_table must be a file name inside cache_dir, "
                f"got {int8_calibration_table!r}"
            )
    options: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        "trt_int8_enable": int8,
    }
    if int8_calibration_table is not None:
        options["trt_int8_calibration_table_name"] = int8_calibration_table
        options["trt_int8_use_native_calibration_table"] = True
    if cache_dir is not None:
        options |= {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
        }
    return options


def cuda_options(device_id: int) -> dict[str, Any]:
    """CUDA execution provider options.

    cuDNN's exhaustive search (the provider's default) benchmarks every convolution again for
    each new input shape, and a worker's batches change size with the number of cameras that
    have a frame ready; the heuristic choice costs nothing per shape. Copies stay on the
    compute stream, as the provider advises against separate copy streams (data races).
    """
    return {
        "device_id": device_id,
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
    }


def _cuda_device_id(device: str) -> int:
    """The N of ``cuda:N`` (0 for ``cuda``); anything else is an error naming the forms."""
    kind, separator, index = device.partition(":")
    if kind != "cuda" or (separator and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return int(index or 0)


class OrtBackend:
    """An ONNX model in an ONNX Runtime session (see :class:`..base.InferenceBackend`)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        providers: Sequence[Provider] = (CPU,),
        intra_op_threads: int | None = None,
        max_batch: int = 1,
    ) -> None:
        """Load the model.

        Args:
            model_path: the .onnx file.
            providers: execution providers in order of preference (see default_providers).
            intra_op_threads: threads per operator; None lets ONNX Runtime use every core.
            max_batch: most frames per call for a dynamic-batch model; a fixed-batch model
                always takes its own batch size.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        options = ort.SessionOptions()
        options.log_severity_level = _ERRORS_ONLY
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self._session = ort.InferenceSession(str(model_path), options, providers=list(providers))
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_path} has {len(inputs)} inputs; backends take exactly one")
        (model_input,) = inputs
        if model_input.type not in _INPUT_DTYPES:
            raise ValueError(f"{model_path} input is {model_input.type}; supported: float, float16")
        self._input_dtype = _INPUT_DTYPES[model_input.type]
        batch_dim = model_input.shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        if self._fixed_batch is not None and self._fixed_batch != max_batch:
            log.info(
                "%s has a fixed batch of %d; running it %d at a time (max_batch %d ignored)",
                model_path.name,
                self._fixed_batch,
                self._fixed_batch,
                max_batch,
            )
        self._max_batch = self._fixed_batch or max_batch
        self._input_names = (model_input.name,)
        self._output_names = tuple(o.name for o in self._session.get_outputs())

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def input_names(self) -> Sequence[str]:
        return self._input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self._output_names

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return list(self._session.get_providers())

    def infer(self, batch: FloatArray) -> list[FloatArray]:
        """Run ``batch`` (N, ...) in calls of ``max_batch``; every output comes back (N, ...)."""
        batch = np.asarray(batch, self._input_dtype)
        count = len(batch)
        if count == 0:
            raise ValueError("infer needs at least one item in the batch")
        parts: list[list[FloatArray]] = []
        for start in range(0, count, self._max_batch):
            chunk = batch[start : start + self._max_batch]
            size = len(chunk)
            if self._fixed_batch is not None and size < self._fixed_batch:
                padding = np.zeros((self._fixed_batch - size, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            outputs = self._session.run(list(self._output_names), {self._input_names[0]: chunk})
            parts.append([np.asarray(out[:size], np.float32) for out in outputs])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(per_output) for per_output in zip(*parts, strict=True)]
