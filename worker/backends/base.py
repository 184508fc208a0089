"""The one interface every inference runtime implements, and the factory that picks one.

The detector and classifier only ever call :meth:`InferenceBackend.infer`, so ONNX Runtime
today and PyTorch, TensorRT or Triton later are interchangeable behind it. Runtimes are
imported only when chosen: a CPU worker image need not carry TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from kubevision.api.worker_config import ModelConfig

FloatArray = npt.NDArray[np.float32]


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


def create_backend(
    model: ModelConfig,
    model_path: Path,
    device: str = "cpu",
    *,
    intra_op_threads: int | None = None,
) -> InferenceBackend:
    """The backend that runs ``model``'s format on ``device`` (``cpu``, ``cuda`` or ``cuda:N``).

    ``intra_op_threads`` bounds the runtime's thread pool; set it to the pod's CPU limit, since
    runtimes otherwise size their pools to the node's cores.
    """
    if model.format == "onnx":
        from kubevision.worker.backends.ort import OrtBackend, default_providers

        return OrtBackend(
            model_path,
            providers=default_providers(device, fp16=model.precision == "fp16"),
            intra_op_threads=intra_op_threads,
            max_batch=model.batch_max,
        )
    raise ValueError(f"no inference backend for format {model.format!r} yet; supported: onnx")
